"""The BoN-aware training loop: sample -> reward / verify -> weights -> packed log-probs -> loss -> step.

    prompts (G) --Engine.sample(n)--> responses [G, n] (shared-prefix KV, tempered log-probs)
      --task.rewards / verifier.score--> R [G, n], r [G, n]
      --objectives.weights(method, R, n_bon, scores=r)--> w [G, n]      (float64, on device)
      --packing.pack + packed_logprobs--> logp of every response token    (prompt computed once per row)
      --ops.bon_loss(logp, sample_index, w, normaliser=G * max_new_tokens)--> scalar --> backward, AdamW step

Everything a run needs to be trusted is in `out_dir`: `config.json`, `metrics.jsonl` (one JSON object per train or
eval record), `pass_at_k.png`, and `checkpoint.safetensors` (model + optimizer + step, written atomically: temp
file + rename). `--resume` continues from the checkpoint; prompts and sampling seeds are functions of
(seed, step), so a resumed run follows the same trajectory as an uninterrupted one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import asdict

import torch

from bonfast import distributed, metrics, objectives, tasks
from bonfast.config import TrainConfig
from bonfast.engine import Engine
from bonfast.ops import bon_loss
from bonfast.packing import pack, packed_logprobs
from bonfast.report import format_table, plot

CHECKPOINT = "checkpoint.safetensors"


# ------------------------------------------------------------------------------------------------------------
# setup


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _step_seed(cfg: TrainConfig, step: int, salt: str) -> int:
    """A seed that depends only on (run seed, step, purpose): resumed runs redraw the same prompts and samples."""
    digest = hashlib.sha256(f"{cfg.seed}/{step}/{salt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def tiny_model_config(cfg: TrainConfig, tokenizer):
    from bonfast.model import ModelConfig
    heads = cfg.tiny_heads
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, dim=cfg.tiny_dim, n_layers=cfg.tiny_layers, n_heads=heads,
        n_kv_heads=max(1, heads // 2), head_dim=cfg.tiny_dim // heads, intermediate_size=cfg.tiny_dim * 3,
        rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_bias=False, qk_norm=False, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build(cfg: TrainConfig, device: torch.device):
    """Model, tokenizer, task and verifier for a config (the tiny model starts from random weights)."""
    from bonfast.model import from_config, load_model
    task = tasks.get_task(cfg.task, **cfg.task_kwargs())
    if cfg.model == "tiny":
        from bonfast.tasks.tokenizer import ArithmeticTokenizer
        tokenizer = ArithmeticTokenizer()
        torch.manual_seed(cfg.seed)
        model = from_config(tiny_model_config(cfg, tokenizer)).to(device)
    else:
        model, tokenizer = load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=torch.float32, device=device)
        if tokenizer is None:
            raise ValueError(f"TrainConfig.model: no tokenizer found with the checkpoint {cfg.model!r}")
    verifier = tasks.get_verifier(cfg.verifier, task, **_verifier_kwargs(cfg))
    return model, tokenizer, task, verifier


def _verifier_kwargs(cfg: TrainConfig) -> dict:
    if cfg.verifier == "noisy":
        return {"false_positive_rate": cfg.verifier_fpr, "false_negative_rate": cfg.verifier_fnr, "seed": cfg.seed}
    return {}


def _decode(tokenizer, ids: list[int]) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=True)
    except TypeError:
        return tokenizer.decode(ids)


def _stop_ids(tokenizer) -> tuple[int, ...]:
    ids = {tokenizer.eos_token_id}
    for tok in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
        tid = getattr(tokenizer, "convert_tokens_to_ids", lambda t: None)(tok)
        if isinstance(tid, int) and tid >= 0 and tid != getattr(tokenizer, "unk_token_id", None):
            ids.add(tid)
    return tuple(i for i in ids if i is not None)


# ------------------------------------------------------------------------------------------------------------
# supervised warm start (cached) and evaluation


def sft_warm_start(cfg: TrainConfig, model, tokenizer, task, device, log) -> None:
    """Supervised steps on gold answers (loss through the same packed path), cached by config hash."""
    if cfg.sft_steps == 0:
        return
    keys = ("model", "task", "task_levels", "tiny_dim", "tiny_layers", "tiny_heads", "sft_steps", "sft_lr",
            "sft_batch", "seed", "max_new_tokens")
    key = hashlib.sha256(json.dumps({k: getattr(cfg, k) for k in keys}, default=str).encode()).hexdigest()[:16]
    cache_dir = os.environ.get("BONFAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "bonfast"))
    path = os.path.join(cache_dir, f"warmstart-{key}.safetensors")
    from safetensors.torch import load_file, save_file
    if os.path.exists(path):
        model.load_state_dict(load_file(path, device=str(device)))
        log({"kind": "sft", "cached": path})
        return
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    bar = _progress(cfg, cfg.sft_steps, "warm start (SFT)")
    t0 = time.time()
    for step in range(cfg.sft_steps):
        lr = cfg.sft_lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.sft_steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        examples = task.examples("train", n=cfg.sft_batch, seed=_step_seed(cfg, step, "sft"))
        prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
        answers = [[_encode_response(tokenizer, task.reference_response(ex), cfg.max_new_tokens)] for ex in examples]
        batch = pack(prompts, answers, pad_id=tokenizer.pad_token_id or 0)
        logp, _ = packed_logprobs(model, batch.to(device), temperature=1.0)
        loss = -logp.sum() / logp.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")  # host sync once per step for the progress bar only
    bar.close()
    os.makedirs(cache_dir, exist_ok=True)
    _atomic_save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path, save_file)
    log({"kind": "sft", "steps": cfg.sft_steps, "final_loss": loss.item(), "seconds": time.time() - t0})


@torch.no_grad()
def evaluate(cfg: TrainConfig, engine: Engine, tokenizer, task, verifier, *, step: int, tag: str,
             rank: int = 0, world: int = 1) -> dict:
    """pass@k, BoK and majority@k (mean and 95% bootstrap interval over prompts) for every k and temperature.

    With `world` > 1 each rank samples and judges the prompts [rank::world]; the judged rows are gathered
    back in prompt order, so every rank returns the single-process table.
    """
    examples = task.examples("test", n=cfg.eval_prompts, seed=cfg.seed)
    prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
    result = {"kind": "eval", "tag": tag, "step": step, "n": cfg.eval_n, "prompts": len(prompts), "metrics": {}}
    per_prompt_all = {}
    for temp in cfg.eval_temperatures:
        roll = engine.sample(prompts[rank::world], cfg.eval_n, max_new_tokens=cfg.max_new_tokens, temperature=temp,
                             top_p=cfg.top_p, top_k=cfg.top_k, stop_token_ids=_stop_ids(tokenizer),
                             seed=_step_seed(cfg, 0, f"eval/{temp}"))
        R, r, answers = distributed.gather_rows(*_judge(task, verifier, examples[rank::world], roll, tokenizer,
                                                        cfg.reward_truncated))
        table = {}
        for k in cfg.eval_ks:
            per_prompt = {
                "pass": metrics.pass_at_k(torch.full((len(prompts),), cfg.eval_n), (R > 0.5).sum(1), k)
                if _binary(R) else metrics.bo_k(R, R, k),
                "bo": metrics.bo_k(r, R, k),
                "maj": metrics.majority_at_k(answers, R.tolist(), k),
            }
            for name, values in per_prompt.items():
                values = torch.as_tensor(values, dtype=torch.float64)
                mean, lo, hi = metrics.bootstrap_ci(values, seed=cfg.seed)
                table[f"{name}@{k}"] = {"mean": float(mean), "lo": float(lo), "hi": float(hi)}
                per_prompt_all[f"T={temp:g}/{name}@{k}"] = values
        result["metrics"][f"T={temp:g}"] = table
    # per-prompt values (not logged) let the after/before table show a paired-bootstrap interval of the change
    result["per_prompt"] = per_prompt_all
    return result


def _binary(R: torch.Tensor) -> bool:
    return bool(((R == 0) | (R == 1)).all())


def _judge(task, verifier, examples, roll, tokenizer, reward_truncated: bool = False):
    """Rewards R [G, n], verifier scores r [G, n] and extracted answers for a batch of rollouts.

    A response cut at max_new_tokens gets reward 0 unless `reward_truncated`: otherwise an answer extractor's
    fallback (e.g. "the last number in the text") can score truncated rambling as correct by luck."""
    texts = [[_decode(tokenizer, toks) for toks in per_prompt] for per_prompt in roll.tokens]
    flat_ex = [ex for ex, per_prompt in zip(examples, texts) for _ in per_prompt]
    flat_txt = [t for per_prompt in texts for t in per_prompt]
    raw = torch.tensor(task.rewards(flat_ex, flat_txt), dtype=torch.float64).view(len(examples), -1)
    R = raw
    if not reward_truncated:
        stopped = torch.tensor([[reason == "stop" for reason in row] for row in roll.finish_reasons])
        R = raw * stopped
    if isinstance(verifier, tasks.OracleVerifier) and verifier.task is task:
        r = raw  # the oracle's score is the task reward: do not grade (e.g. run in the sandbox) every response twice
    else:
        scores = []
        for ex, per_prompt, lps in zip(examples, texts, roll.logprobs):
            mean_lp = [float(lp.mean()) if lp.numel() else 0.0 for lp in lps]
            scores.append(verifier.score(ex, per_prompt, logprobs=mean_lp))
        r = torch.tensor(scores, dtype=torch.float64)
    answers = [[task.extract_answer(t) for t in per_prompt] for per_prompt in texts]
    return R, r, answers


# ------------------------------------------------------------------------------------------------------------
# the RL step


def method_weights(cfg: TrainConfig, R: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-sample weights w [G, n] of the configured objective (bonfast.objectives), float64 on R's device."""
    if cfg.method == "rl_v":
        return objectives.weights("rl", R, n_bon=1, scores=r, target="scores")
    options = {}
    if cfg.method == "bon_rl_v":
        options["credit"] = cfg.bon_rl_v_credit
    if cfg.method == "bon_rlb":
        options.update(negative_sign=cfg.bonrlb_negative_sign, sample_source=cfg.bonrlb_sample_source,
                       clip=(cfg.weight_clip, cfg.weight_clip) if cfg.weight_clip > 0 else None)
    if cfg.method == "bon_rlb_p":
        options["sample_source"] = cfg.bonrlb_sample_source
    scores = r if cfg.method == "bon_rl_v" else None
    return objectives.weights(cfg.method, R, n_bon=cfg.n_bon, scores=scores, **options)


def expert_weights(cfg, task, verifier, tokenizer, examples, R, r):
    """(w [G, 1 + n], expert token ids) for sft / bon_sft: the task's reference response is the expert y*,
    scored by the same verifier as the samples; column 0 of w is its weight (bonfast.objectives.bon_sft)."""
    texts = [task.reference_response(ex) for ex in examples]
    if any(t is None for t in texts):
        raise ValueError(f"TrainConfig.method: {cfg.method} needs expert responses, and task {cfg.task!r} has "
                         "no reference response for some prompts")
    expert = [_encode_response(tokenizer, t, cfg.max_new_tokens) for t in texts]
    s_star = torch.tensor([verifier.score(ex, [t])[0] for ex, t in zip(examples, texts)], dtype=torch.float64)
    w_expert, w_samples = objectives.weights(cfg.method, None if cfg.method == "sft" else R, n_bon=cfg.n_bon,
                                             scores=r, expert_scores=s_star)
    if w_samples.shape[1] == 0:
        w_samples = torch.zeros_like(R)
    return torch.cat([w_expert[:, None], w_samples], 1), expert


def _encode_response(tokenizer, text: str, max_tokens: int) -> list[int]:
    """Token ids of a response text, capped at max_tokens, ending with <eos>."""
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:  # the arithmetic tokenizer adds no special tokens anyway
        ids = tokenizer.encode(text)
    return ids[:max_tokens - 1] + [tokenizer.eos_token_id]


def rl_step(cfg, step, model, ref_model, engine, opt, tokenizer, task, verifier, device, *,
            rank: int = 0, world: int = 1) -> dict:
    """One optimizer step; returns a metrics record with the time spent in each phase.

    With `world` > 1 (data parallel), every rank draws the same global micro-batch of prompts and keeps the
    slice `[rank::world]`; the engine's samples depend only on (seed, prompt, sample index), so each rank
    samples exactly what a single process would for those prompts, and gradients averaged over ranks equal
    the single-process gradient (the normaliser is the per-rank share of G * max_new_tokens).
    """
    timings = {"sample": 0.0, "reward": 0.0, "score": 0.0, "optim": 0.0}
    micro = cfg.prompts_per_step // cfg.grad_accum
    # a constant (PAPER decision 2), never a per-sequence length average
    normaliser = cfg.prompts_per_step * cfg.max_new_tokens / world
    stats = {"reward": 0.0, "loss": 0.0, "resp_len": 0.0, "w_abs": 0.0}
    opt.zero_grad(set_to_none=True)
    for mb in range(cfg.grad_accum):
        t0 = time.time()
        examples = task.examples("train", n=micro, seed=_step_seed(cfg, step, f"prompts/{mb}"))[rank::world]
        prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
        roll = engine.sample(prompts, cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             top_p=cfg.top_p, top_k=cfg.top_k, stop_token_ids=_stop_ids(tokenizer),
                             seed=_step_seed(cfg, step, f"sample/{mb}"))
        t1 = time.time()
        R, r, _ = _judge(task, verifier, examples, roll, tokenizer, cfg.reward_truncated)
        responses = roll.tokens
        if cfg.method in ("sft", "bon_sft"):  # the expert response rides in front: [y*, y_1, ..., y_n]
            w, expert = expert_weights(cfg, task, verifier, tokenizer, examples, R, r)  # (G, 1 + n)
            responses = [[e, *toks] for e, toks in zip(expert, roll.tokens)]
        else:
            w = method_weights(cfg, R, r)                                          # (G, n) float64
        w = w.to(device)
        t2 = time.time()
        batch = pack(prompts, responses, pad_id=tokenizer.pad_token_id or 0).to(device)
        logp, sample_index = packed_logprobs(model, batch, temperature=cfg.temperature)
        ref_logp = None
        if ref_model is not None:
            with torch.no_grad():
                ref_logp, _ = packed_logprobs(ref_model, batch, temperature=cfg.temperature)
        loss = bon_loss(logp, sample_index, w.flatten().to(torch.float32), normaliser=normaliser,
                        ref_logp=ref_logp, kl_coef=cfg.kl_coef)
        loss.backward()
        t3 = time.time()
        timings["sample"] += t1 - t0
        timings["reward"] += t2 - t1
        timings["score"] += t3 - t2
        for name, value in (("reward", R.mean()), ("loss", loss.detach()), ("w_abs", w.abs().mean()),
                            ("resp_len", torch.as_tensor(roll.lengths, dtype=torch.float64).mean())):
            stats[name] = stats[name] + value.double().cpu() / cfg.grad_accum
    t0 = time.time()
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    opt.step()
    distributed.copy_weights(engine.model, model)  # world > 1: the engine samples from a gathered replica
    engine.update_policy()  # nothing sampled or cached with the old weights is reused
    timings["optim"] = time.time() - t0
    # the step's only host syncs: scalars for the log record, after the optimizer step
    stats = {name: float(value) for name, value in distributed.all_reduce_mean(stats).items()}  # mean over ranks
    return {"kind": "train", "step": step + 1, **stats, "grad_norm": float(gnorm),
            "lr": opt.param_groups[0]["lr"], "seconds": timings}


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def _atomic_save_file(tensors: dict, path: str, save_file, metadata: dict | None = None) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: a reader sees the old or the new file, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_checkpoint(out_dir: str, model, opt, step: int) -> None:
    if distributed.world_size() > 1:  # sharded: DCP directory checkpoint_dcp/ (bonfast.distributed.save_dcp)
        distributed.save_dcp(out_dir, model, opt, step)
        return
    from safetensors.torch import save_file
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    names = {p: n for n, p in model.named_parameters()}
    for p, state in opt.state.items():
        for k, v in state.items():
            tensors[f"optim.{names[p]}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    _atomic_save_file(tensors, os.path.join(out_dir, CHECKPOINT), save_file, metadata={"step": str(step)})


def load_checkpoint(out_dir: str, model, opt, device) -> int:
    """Restore model and optimizer state from the newest checkpoint (safetensors or DCP, written by any
    number of ranks, loaded into a sharded or plain model); returns the step it was written at."""
    from safetensors import safe_open
    latest = distributed.newest_checkpoint(out_dir, CHECKPOINT)
    if latest is not None and latest[0] == "dcp":  # written by a multi-process run
        return distributed.load_dcp(out_dir, model, opt)
    path = os.path.join(out_dir, CHECKPOINT)
    with safe_open(path, framework="pt", device=str(device)) as f:
        step = int(f.metadata()["step"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if distributed.is_sharded(model):  # every rank keeps its shard of the full tensors
        optim = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                name, slot = key[len("optim."):].rsplit(".", 1)
                optim.setdefault(name, {})[slot] = v
        distributed.load_full_state(model, opt, {k[len("model."):]: v for k, v in tensors.items()
                                                 if k.startswith("model.")}, optim)
        return step
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            opt.state[params[name]][slot] = v
    torch.set_rng_state(tensors["rng.torch"].cpu())
    return step


# ------------------------------------------------------------------------------------------------------------
# the run


def _progress(cfg, total, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, disable=not cfg.progress or not distributed.is_main(), dynamic_ncols=True)


class _Log:
    """Appends JSON records to out_dir/metrics.jsonl and keeps them for the caller."""

    def __init__(self, path: str | None, resume_step: int | None):
        self.path = path  # None: keep records in memory only (ranks other than 0)
        self.records = []
        if path is None:
            return
        if resume_step is not None and os.path.exists(path):
            # drop what a killed run logged after its last checkpoint: those steps are redone
            with open(path) as f:
                kept = [json.loads(line) for line in f if line.strip()]
            kept = [r for r in kept if r.get("step", 0) <= resume_step and r.get("tag") != "after"]
            with open(path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)
            self.records = kept
        elif os.path.exists(path):
            os.remove(path)

    def __call__(self, record: dict) -> None:
        self.records.append(record)
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({k: v for k, v in record.items() if k != "per_prompt"}) + "\n")
        if "per_prompt" in record:  # eval-before.json / eval-after.json: per-prompt values, for paired comparisons
            suffix = f"-{record['step']}" if record["tag"] == "periodic" else ""
            path = os.path.join(os.path.dirname(self.path), f"eval-{record['tag']}{suffix}.json")
            with open(path, "w") as f:
                json.dump({k: torch.as_tensor(v).tolist() for k, v in record["per_prompt"].items()}, f)


def train(cfg: TrainConfig) -> dict:
    """Run a BoN-aware fine-tuning run; returns {"before": eval, "after": eval, "records": [...]}."""
    cfg.validate()
    rank, world, device = distributed.init(_device(cfg))  # torchrun: one process per device (bonfast.distributed)
    distributed.check_config(cfg, world)
    main = rank == 0  # only rank 0 prints, writes metrics.jsonl and plots
    os.makedirs(cfg.out_dir, exist_ok=True)
    if main:
        with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=2, default=str)
    model, tokenizer, task, verifier = build(cfg, device)
    ckpt = os.path.join(cfg.out_dir, CHECKPOINT)
    latest = distributed.newest_checkpoint(cfg.out_dir, CHECKPOINT) if cfg.resume else None  # (format, step)
    resumed = latest is not None
    start = latest[1] if resumed else 0
    log = _Log(os.path.join(cfg.out_dir, "metrics.jsonl") if main else None, resume_step=start if resumed else None)
    if not resumed:
        log({"kind": "config", "step": 0, **asdict(cfg)})
    if main and (not resumed or cfg.kl_coef > 0):  # a resumed run's KL reference is still the warm start
        sft_warm_start(cfg, model, tokenizer, task, device, log if not resumed else lambda record: None)
    ref_model = None
    if cfg.kl_coef > 0:  # frozen copy of the policy the run started from
        ref_model = copy.deepcopy(model).requires_grad_(False)
    sampler = distributed.sampling_replica(model, cfg)  # world 1: the policy itself
    model, ref_model = distributed.shard(model, cfg), distributed.shard(ref_model, cfg)  # rank 0's weights
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    if resumed:
        start = load_checkpoint(cfg.out_dir, model, opt, device)
        if main:
            print(f"resumed from the {latest[0]} checkpoint in {cfg.out_dir} at step {start}")
    distributed.copy_weights(sampler, model)  # world > 1: the replica gets rank 0's (or the loaded) weights
    engine = Engine(sampler, device=device)
    before = distributed.broadcast_object(next((r for r in log.records if r.get("tag") == "before"), None))
    if before is None:
        before = evaluate(cfg, engine, tokenizer, task, verifier, step=start, tag="before", rank=rank, world=world)
        log(before)
    if main:
        print(format_table(before))
    bar = _progress(cfg, cfg.steps, f"{cfg.method} (N'={cfg.n_bon}, n={cfg.n})")
    bar.update(start)
    for step in range(start, cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        record = rl_step(cfg, step, model, ref_model, engine, opt, tokenizer, task, verifier, device,
                         rank=rank, world=world)
        log(record)
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{record['loss']:.4f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            log(evaluate(cfg, engine, tokenizer, task, verifier, step=step + 1, tag="periodic", rank=rank,
                         world=world))
        if cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
            save_checkpoint(cfg.out_dir, model, opt, step + 1)
    bar.close()
    save_checkpoint(cfg.out_dir, model, opt, cfg.steps)
    after = evaluate(cfg, engine, tokenizer, task, verifier, step=cfg.steps, tag="after", rank=rank, world=world)
    log(after)
    if main:
        print(format_table(before, after))
        plot_path = plot(before, after, os.path.join(cfg.out_dir, "pass_at_k.png"))
        where = ckpt if world == 1 else os.path.join(cfg.out_dir, distributed.DCP_DIR)
        print(f"metrics: {log.path}\nplot:    {plot_path}\ncheckpoint: {where}")
    return {"before": before, "after": after, "records": log.records}


def load_policy(cfg: TrainConfig, device: torch.device | None = None):
    """(model, tokenizer, task, verifier, tag) of out_dir's checkpoint, else the tiny warm start or the base
    model; tag says which was loaded."""
    device = device or _device(cfg)
    model, tokenizer, task, verifier = build(cfg, device)
    ckpt = os.path.join(cfg.out_dir, CHECKPOINT)
    latest = distributed.newest_checkpoint(cfg.out_dir, CHECKPOINT)
    if latest is not None and latest[0] == "dcp":  # written by a multi-process run
        distributed.load_dcp(cfg.out_dir, model)
        tag = f"checkpoint {os.path.join(cfg.out_dir, distributed.DCP_DIR)}"
    elif os.path.exists(ckpt):
        from safetensors.torch import load_file
        state = load_file(ckpt, device=str(device))
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        tag = f"checkpoint {ckpt}"
    elif cfg.model == "tiny":
        sft_warm_start(cfg, model, tokenizer, task, device, log=lambda record: None)
        tag = "tiny warm start"
    else:
        tag = f"base model {cfg.model}"
    return model, tokenizer, task, verifier, tag


def evaluate_checkpoint(cfg: TrainConfig) -> dict:
    """`bonfast eval`: the pass@k / BoK / majority table and plot of out_dir's checkpoint (or of the base model)."""
    cfg.validate()
    device = _device(cfg)
    model, tokenizer, task, verifier, tag = load_policy(cfg, device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    result = evaluate(cfg, Engine(model, device=device), tokenizer, task, verifier, step=0, tag="eval")
    print(f"{tag}\n{format_table(result)}")
    print(f"plot: {plot(result, None, os.path.join(cfg.out_dir, 'eval_pass_at_k.png'))}")
    return result
