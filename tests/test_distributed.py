"""Data parallel training over 2 CPU processes (gloo, loopback): FSDP2 steps equal single-process steps, DCP
checkpoints move between world sizes, the sharded loss head has the right gradients (tied and untied head),
and bf16 parameters with fp32 reduction train. Workers run under torch.multiprocessing.spawn, 1 thread each;
the jobs of a fixture share one spawned process group. The default suite runs the loss-head jobs; the trainer
jobs (a full 2-rank run) are marked slow."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from bonfast import distributed
from bonfast.config import TrainConfig

# rl_v on a noisy verifier (false-positive rate 0.5) gives non-zero weights to an untrained model, so one step
# changes the weights without a warm start; kl_coef > 0 brings in the sharded reference model.
SMALL = dict(tiny_dim=32, tiny_layers=2, tiny_heads=2, sft_steps=0, steps=2, prompts_per_step=4, n=4, n_bon=1,
             method="rl_v", verifier="noisy", verifier_fpr=0.5, kl_coef=0.1, lr=3e-3, warmup_steps=1,
             max_new_tokens=6, eval_prompts=6, eval_n=4, eval_ks=(1, 2, 4), task_levels=(2, 3), ckpt_every=1,
             progress=False)


def small(out_dir, **kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, "out_dir": str(out_dir), **kw})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, jobs, result_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)  # 2 cores, 2 processes
    assert distributed.init("cpu")[:2] == (rank, world)
    try:
        for name, fn, args in jobs:  # one after the other on the same process group
            torch.manual_seed(0)
            try:
                fn(*args)
            except BaseException:
                import traceback
                with open(os.path.join(result_dir, f"{name}.rank{rank}.err"), "w") as f:
                    f.write(traceback.format_exc())
                raise  # the other rank may be waiting in a collective: mp.spawn ends it
            distributed.barrier()
            open(os.path.join(result_dir, f"{name}.rank{rank}.ok"), "w").close()
    finally:
        distributed.shutdown()


def spawn(jobs, result_dir, world=2):
    """Run each (name, fn, args) of `jobs` in turn on `world` gloo ranks: one process group for all of them
    (starting one costs two interpreters). A job's outcome is read back with `job_result`."""
    try:
        mp.spawn(_entry, args=(world, _free_port(), jobs, str(result_dir)), nprocs=world, join=True)
    except Exception:  # reported per job by job_result
        pass


def job_result(result_dir, name, world=2) -> None:
    """Fail with the job's traceback unless every rank finished it."""
    for rank in range(world):
        err = os.path.join(result_dir, f"{name}.rank{rank}.err")
        if os.path.exists(err):
            pytest.fail(f"{name} failed on rank {rank}:\n{open(err).read()}")
    missing = [k for k in range(world) if not os.path.exists(os.path.join(result_dir, f"{name}.rank{k}.ok"))]
    if missing:
        pytest.fail(f"{name} did not finish on ranks {missing} (an earlier job of the shared process group failed)")


def _close(a, b, tol=1e-6):
    return (a.double() - b.double()).abs().max().item() <= tol


# ------------------------------------------------------------------------------------------------------------
# the trainer on 2 ranks == the trainer in one process


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One single-process run of SMALL (safetensors checkpoint) and its result."""
    from bonfast.train import train
    out = tmp_path_factory.mktemp("single")
    return out, train(small(out))


@pytest.fixture(scope="module")
def training_ranks(single_run, tmp_path_factory):
    """The 2-rank trainer jobs (slow), run once on one spawned process group; returns their directory."""
    single_dir, _ = single_run
    root = tmp_path_factory.mktemp("training_ranks")
    spawn([("train", _train_worker, (str(root / "dist"), str(root))),
           ("load_single", _load_single_worker, (str(single_dir),))], root)
    return root


@pytest.fixture(scope="module")
def head_ranks(tmp_path_factory):
    """The 2-rank loss-head jobs (the fast representative), run once on one spawned process group."""
    root = tmp_path_factory.mktemp("head_ranks")
    spawn([("head", _head_worker, (False,)), ("head_mixed", _head_worker, (True,))], root)
    return root


def _train_worker(out_dir, result_dir):
    from bonfast.train import train
    res = train(small(out_dir))
    summary = {"train": [{k: r[k] for k in ("step", "loss", "reward", "grad_norm", "w_abs", "resp_len")}
                         for r in res["records"] if r["kind"] == "train"],
               "before": res["before"]["metrics"], "after": res["after"]["metrics"]}
    with open(os.path.join(result_dir, f"rank{distributed.rank()}.json"), "w") as f:
        json.dump(summary, f)


def _distinct_prompts(cfg):
    """The engine keys sample streams by (prompt, occurrence in the call): a duplicated prompt dealt to two
    ranks would draw the same samples twice. The test batches are duplicate-free, checked here."""
    from bonfast import tasks
    from bonfast.build import step_seed
    task = tasks.get_task(cfg.task, **cfg.task_kwargs())
    batches = [task.examples("train", n=cfg.prompts_per_step, seed=step_seed(cfg, s, "prompts/0"))
               for s in range(cfg.steps)] + [task.examples("test", n=cfg.eval_prompts, seed=cfg.seed)]
    return all(len({ex.prompt for ex in b}) == len(b) for b in batches)


@pytest.mark.slow
def test_two_ranks_match_single_process_steps(single_run, training_ranks, tmp_path):
    from bonfast.build import tiny_model_config
    from bonfast.checkpoint import CHECKPOINT, load_checkpoint
    from bonfast.model import from_config
    from bonfast.tasks.tokenizer import ArithmeticTokenizer
    single_dir, single = single_run
    assert _distinct_prompts(small(tmp_path)), "test batches must be duplicate-free (see _distinct_prompts)"
    job_result(training_ranks, "train")
    ranks = [json.load(open(training_ranks / f"rank{k}.json")) for k in range(2)]
    assert ranks[0] == ranks[1]  # every rank logs the reduced scalars and the gathered eval table
    got = ranks[0]
    want = [r for r in single["records"] if r["kind"] == "train"]
    assert [r["step"] for r in got["train"]] == [1, 2]
    for g, w in zip(got["train"], want):
        for key in ("loss", "grad_norm", "w_abs", "reward", "resp_len"):
            assert abs(g[key] - w[key]) <= 1e-6 * max(1.0, abs(w[key])), (g["step"], key, g[key], w[key])
    assert got["before"] == json.loads(json.dumps(single["before"]["metrics"]))
    assert got["after"] == json.loads(json.dumps(single["after"]["metrics"]))
    # only rank 0 writes files; the DCP checkpoint is a symlink to a complete step directory, nothing temporary
    run = training_ranks / "dist"
    assert os.path.islink(run / distributed.DCP_DIR) and not (run / CHECKPOINT).exists()
    assert not [p for p in os.listdir(run) if ".tmp" in p or ".link" in p]
    kept = sorted(p for p in os.listdir(run) if p.startswith(distributed.DCP_DIR))  # 2 saves of step 2, 1 kept
    assert kept[0] == distributed.DCP_DIR and len(kept) == 2
    assert os.readlink(run / distributed.DCP_DIR) == kept[1]
    assert kept[1].startswith(f"{distributed.DCP_DIR}.step-00000002-")
    assert sum(json.loads(line)["kind"] == "train" for line in open(run / "metrics.jsonl")) == 2

    # the 2-rank DCP checkpoint resumes on 1 rank: same parameters and optimizer state as the 1-rank run
    def fresh():
        torch.manual_seed(123)
        model = from_config(tiny_model_config(small(run), ArithmeticTokenizer()))
        return model, torch.optim.AdamW(model.parameters(), lr=1.0)
    dist_model, dist_opt = fresh()
    assert load_checkpoint(str(run), dist_model, dist_opt, "cpu") == 2
    ref_model, ref_opt = fresh()
    assert load_checkpoint(str(single_dir), ref_model, ref_opt, "cpu") == 2
    ref_params = dict(ref_model.named_parameters())
    moved = 0.0
    for name, p in dist_model.named_parameters():
        assert _close(p, ref_params[name]), name
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert _close(dist_opt.state[p][slot], ref_opt.state[ref_params[name]][slot]), (name, slot)
        moved = max(moved, dist_opt.state[p]["exp_avg"].abs().max().item())
    assert moved > 1e-4  # the steps were not trivial (non-zero gradients)


def _load_single_worker(single_dir):
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from bonfast.build import build
    from bonfast.checkpoint import CHECKPOINT, load_checkpoint
    cfg = small(single_dir)
    model = build(cfg, torch.device("cpu"))[0]
    model = distributed.shard(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    assert load_checkpoint(single_dir, model, opt, "cpu") == 2
    full = StateDictOptions(full_state_dict=True)
    msd, osd = get_model_state_dict(model, options=full), get_optimizer_state_dict(model, opt, options=full)
    want = load_file(os.path.join(single_dir, CHECKPOINT))
    local = next(iter(model.parameters()))
    assert local.to_local().shape[0] < local.shape[0]  # really sharded: each rank holds a part
    for name, value in msd.items():
        assert torch.equal(value, want[f"model.{name}"]), name
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(osd["state"][name][slot]), want[f"optim.{name}.{slot}"]), (name, slot)


@pytest.mark.slow
def test_single_rank_checkpoint_loads_on_two_ranks(training_ranks):
    job_result(training_ranks, "load_single")


# ------------------------------------------------------------------------------------------------------------
# the sharded loss head and mixed precision


def _batch(G=4, n=3, V=37, seed=1):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(1, V, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
               for _ in range(G)]
    resps = [[torch.randint(1, V, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
              for _ in range(n)] for _ in range(G)]
    return prompts, resps, torch.randn(G, n, generator=g, dtype=torch.float64)


def _loss(model, prompts, resps, w, normaliser):
    from bonfast.ops import bon_loss
    from bonfast.packing import pack, packed_logprobs
    logp, sample_index = packed_logprobs(model, pack(prompts, resps))
    return bon_loss(logp, sample_index, w.flatten().float(), normaliser=normaliser)


def _head_worker(mixed):
    import copy

    from torch.distributed.tensor import DTensor

    from bonfast.model import ModelConfig, from_config
    rank, world = distributed.rank(), distributed.world_size()
    prompts, resps, w = _batch()
    G, N = len(prompts), len(prompts) * 5
    mine = list(range(rank, G, world))
    for tied in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=37, dim=16, n_layers=2, n_heads=2, n_kv_heads=1, intermediate_size=24,
                          tie_word_embeddings=tied)
        model = from_config(cfg)
        single = copy.deepcopy(model)
        loss_single = _loss(single, prompts, resps, w, N)  # the whole batch in this process
        loss_single.backward()
        model = distributed.shard(model, mixed_precision=mixed)
        loss = _loss(model, [prompts[i] for i in mine], [resps[i] for i in mine], w[mine], N / world)
        loss.backward()
        loss = distributed.all_reduce_mean(loss.detach())
        assert model.lm_head_weight.dtype == torch.float32  # sharded master weights stay fp32
        want = dict(single.named_parameters())
        assert set(dict(model.named_parameters())) == set(want)
        for name, p in model.named_parameters():
            assert isinstance(p, DTensor) and p.grad.dtype == torch.float32, name
            grad = p.grad.full_tensor()
            if not mixed:
                assert _close(grad, want[name].grad), (tied, name)
            else:  # bf16 compute: close to the fp32 gradient, not equal
                err = (grad - want[name].grad).norm() / want[name].grad.norm()
                assert err < 0.05, (tied, name, float(err))
        tol = 1e-6 if not mixed else 2e-2 * abs(float(loss_single))
        assert abs(float(loss) - float(loss_single)) <= tol, (tied, float(loss), float(loss_single))
        # the sampling replica equals the gathered weights (bf16 under mixed precision)
        replica = distributed.sampling_replica(copy.deepcopy(single), mixed_precision=mixed)
        distributed.copy_weights(replica, model)
        for name, p in replica.named_parameters():
            assert torch.equal(p, want[name].detach().to(p.dtype)), name


def test_sharded_loss_head_gradients_match_single_process(head_ranks):
    """FSDP2 with the fused loss head: gradients of a tied and an untied LM head (and of every other
    parameter) averaged over 2 ranks equal the single-process gradients of the same global batch."""
    job_result(head_ranks, "head")


def test_mixed_precision_bf16_params_fp32_reduce(head_ranks):
    job_result(head_ranks, "head_mixed")


# ------------------------------------------------------------------------------------------------------------
# single process: the helpers are no-ops, checkpoints, config errors


def test_single_process_is_a_no_op():
    from bonfast.model import ModelConfig, from_config
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    assert distributed.init("cpu") == (0, 1, torch.device("cpu"))
    assert distributed.is_main() and distributed.world_size() == 1
    model = from_config(ModelConfig(vocab_size=11, dim=8, n_layers=1, n_heads=2, intermediate_size=8))
    assert distributed.shard(model) is model and distributed.sampling_replica(model) is model
    distributed.copy_weights(model, model)
    x = torch.tensor([1.5, 2.5])
    assert distributed.all_reduce_mean(x) is x
    assert {k: float(v) for k, v in distributed.all_reduce_mean({"a": 2, "b": torch.tensor(0.5)}).items()} == \
        {"a": 2.0, "b": 0.5}
    assert distributed.gather_objects("x") == ["x"] and distributed.broadcast_object(7) == 7
    R = torch.rand(3, 2)
    assert distributed.gather_rows(R, ["a", "b", "c"]) == (R, ["a", "b", "c"])


@pytest.mark.parametrize("world,total", [(1, 5), (2, 6), (3, 7), (4, 2)])
def test_interleave_undoes_dealing(world, total):
    items = list(range(total))
    assert distributed.interleave([items[k::world] for k in range(world)]) == items


@pytest.mark.parametrize("kw,world,field", [({"prompts_per_step": 6, "grad_accum": 2}, 2, "prompts_per_step"),
                                            ({"prompts_per_step": 4}, 3, "prompts_per_step"),
                                            ({"eval_prompts": 2}, 4, "eval_prompts")])
def test_check_config_names_the_field(kw, world, field):
    cfg = small("unused", **{"prompts_per_step": 8, "eval_prompts": 8, **kw})
    with pytest.raises(ValueError, match=f"TrainConfig.{field}"):
        distributed.check_config(cfg, world)
    distributed.check_config(cfg, 1)


def test_dcp_checkpoint_atomic_newest_wins_and_round_trips(tmp_path):
    """DCP also works in one process: save twice (the link moves, the old step directory goes), the newest
    of safetensors / DCP is picked, and a fresh model + optimizer load the exact state."""
    from bonfast.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
    from bonfast.model import ModelConfig, from_config
    cfg = ModelConfig(vocab_size=13, dim=8, n_layers=2, n_heads=2, intermediate_size=8)
    model = from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    save_checkpoint(str(tmp_path), model, opt, 3)  # world 1: safetensors
    assert distributed.newest_checkpoint(str(tmp_path), CHECKPOINT) == ("safetensors", 3)
    distributed.save_dcp(str(tmp_path), model, opt, 3)
    assert distributed.newest_checkpoint(str(tmp_path), CHECKPOINT) == ("safetensors", 3)  # tie: safetensors
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    distributed.save_dcp(str(tmp_path), model, opt, 5)
    assert distributed.newest_checkpoint(str(tmp_path), CHECKPOINT) == ("dcp", 5)
    distributed.save_dcp(str(tmp_path), model, opt, 5)  # the same step again: a new directory, then the swap
    target = os.readlink(tmp_path / distributed.DCP_DIR)
    assert target.startswith(f"{distributed.DCP_DIR}.step-00000005-")
    assert sorted(os.listdir(tmp_path)) == sorted([CHECKPOINT, distributed.DCP_DIR, target])
    fresh = from_config(cfg)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    assert load_checkpoint(str(tmp_path), fresh, fresh_opt, "cpu") == 5
    params = dict(model.named_parameters())
    for name, p in fresh.named_parameters():
        assert torch.equal(p, params[name]), name
        for slot, v in opt.state[params[name]].items():
            assert torch.equal(fresh_opt.state[p][slot], v), (name, slot)
    with pytest.raises(ValueError, match="out_dir"):
        distributed.load_dcp(str(tmp_path / "nothing"), fresh)


@pytest.mark.slow
def test_torchrun_cli_two_processes(tmp_path):
    """The documented launch line, end to end (two processes on this machine)."""
    import subprocess
    import sys
    cfg = small(tmp_path / "run", steps=1)
    args = [f"--{'n_samples' if k == 'n' else k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
            for k, v in cfg.to_dict().items() if k != "extra"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BONFAST_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "bonfast.cli", "train", *args]
    subprocess.run(cmd, env=env, check=True, timeout=600, capture_output=True)
    assert os.path.exists(tmp_path / "run" / distributed.DCP_DIR / "meta.json")
    assert (tmp_path / "run" / "pass_at_k.png").exists()
