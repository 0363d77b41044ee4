"""The BoN-aware training loop: sample -> reward -> weights -> packed log-probs -> loss -> step.

    prompts (G) --rollout.sample (Engine, n per prompt)--> responses [G, n] (shared-prefix KV cache)
      --rollout.judge--> rewards R [G, n], verifier scores r [G, n]
      --objectives.weights(method, R, n_bon, scores=r, **cfg.objective_kwargs())--> w [G, n]  (float64)
      --packing.pack + packed_logprobs--> log-prob of every response token (each prompt computed once)
      --ops.bon_loss(logp, sample_index, w, normaliser=G * max_new_tokens)--> scalar --> backward, AdamW step

`rl_step` is one pass through that pipeline; `train` builds the run (`bonfast.build`), evaluates before and
after (`bonfast.evaluate`), and writes the run directory:

    out_dir/config.json          the config
    out_dir/metrics.jsonl        one JSON object per record: config, sft, train (one per step), eval
    out_dir/eval-<tag>.json      per-prompt evaluation values (paired comparisons)
    out_dir/pass_at_k.png        pass@k and BoK before / after
    out_dir/checkpoint.safetensors   model + optimizer + step (`bonfast.checkpoint`, written atomically)

`--resume` continues from the checkpoint; prompts and sampling seeds are functions of (seed, step), so a
resumed run follows the same trajectory as an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch

from bonfast import distributed, objectives, rollout
from bonfast.build import build, progress, resolve_device, step_seed, warm_start
from bonfast.checkpoint import CHECKPOINT, UserError, atomic_write, checkpoint_step, load_checkpoint, save_checkpoint
from bonfast.config import TrainConfig
from bonfast.engine import Engine
from bonfast.evaluate import evaluate
from bonfast.ops import bon_loss
from bonfast.packing import pack, packed_logprobs
from bonfast.report import format_table, plot

__all__ = ["Run", "rl_step", "objective_weights", "train_examples", "lr_at", "check_run_dir", "Interrupted",
           "train"]


@dataclass
class Run:
    """The state one training step reads and updates."""
    cfg: TrainConfig
    model: torch.nn.Module            # the policy being trained (sharded when world > 1)
    ref_model: torch.nn.Module | None  # frozen initial policy for the KL penalty (kl_coef > 0), else None
    engine: Engine                    # samples from the policy (or from its gathered replica when world > 1)
    opt: torch.optim.Optimizer
    tokenizer: object
    task: object
    verifier: object
    device: torch.device
    rank: int = 0
    world: int = 1


# ------------------------------------------------------------------------------------------------------------
# one step


def objective_weights(run: Run, examples, roll, R: torch.Tensor, r: torch.Tensor):
    """(w, responses): the configured method's per-sample weights and the responses they weight.

    For most methods w is [G, n] and the responses are the samples. Expert methods (sft, bon_sft) put the
    task's reference response y* in front: responses [y*, y_1, ..., y_n] and w [G, 1 + n], column 0 the
    weight of y* (scored by the same verifier as the samples).
    """
    cfg = run.cfg
    objective = objectives.OBJECTIVES[cfg.method]
    scores = r if objective.scores else None
    if not objective.expert:
        return objectives.weights(cfg.method, R, n_bon=cfg.n_bon, scores=scores, **cfg.objective_kwargs()), roll.tokens
    texts = [run.task.reference_response(ex) for ex in examples]
    if any(t is None for t in texts):
        raise ValueError(f"TrainConfig.method: {cfg.method} needs expert responses, and task {cfg.task!r} has "
                         "no reference response for some prompts")
    expert = [rollout.encode_response(run.tokenizer, t, cfg.max_new_tokens) for t in texts]
    s_star = torch.tensor([run.verifier.score(ex, [t])[0] for ex, t in zip(examples, texts)], dtype=torch.float64)
    w_expert, w_samples = objectives.weights(cfg.method, R, n_bon=cfg.n_bon, scores=scores, expert_scores=s_star,
                                             **cfg.objective_kwargs())
    if w_samples.shape[1] == 0:
        w_samples = torch.zeros_like(R)
    responses = [[e, *toks] for e, toks in zip(expert, roll.tokens)]
    return torch.cat([w_expert[:, None], w_samples], 1), responses


def train_examples(cfg: TrainConfig, task, n: int, seed: int) -> list:
    """`n` training prompts: fresh problems drawn with `seed`, or, with cfg.train_prompt_pool = K > 0, `n` draws
    with replacement from one fixed pool of K training problems per run seed (prompts repeat, so a policy can
    learn a verifier's per-prompt errors)."""
    if not cfg.train_prompt_pool:
        return task.examples("train", n=n, seed=seed)
    pool = task.examples("train", n=cfg.train_prompt_pool, seed=cfg.seed)
    rng = random.Random(seed)
    return [pool[rng.randrange(len(pool))] for _ in range(n)]


def _clock(device) -> float:
    """Wall time at a phase boundary. On CUDA it synchronises first, so the GPU work a phase queued (backward,
    optimizer step) is timed in that phase instead of landing in a later one or in none: one host sync per
    boundary, four per micro-batch, for the timings only."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.time()


def rl_step(run: Run, step: int) -> dict:
    """One optimizer step; returns a metrics record with the time spent in each phase.

    With `run.world` > 1 (data parallel), every rank draws the same global micro-batch of prompts and keeps
    the slice `[rank::world]`; the engine's samples depend only on (seed, prompt, sample index), so each rank
    samples exactly what a single process would for those prompts, and gradients averaged over ranks equal
    the single-process gradient (the normaliser is the per-rank share of G * max_new_tokens).
    """
    cfg, task, tokenizer = run.cfg, run.task, run.tokenizer
    timings = {"sample": 0.0, "reward": 0.0, "score": 0.0, "optim": 0.0}
    micro = cfg.prompts_per_step // cfg.grad_accum
    # a constant, never a per-sequence length average (docs/method.md, "Loss normalisation")
    normaliser = cfg.prompts_per_step * cfg.max_new_tokens / run.world
    stats = {"reward": 0.0, "verifier_score": 0.0, "loss": 0.0, "resp_len": 0.0, "w_abs": 0.0}
    run.opt.zero_grad(set_to_none=True)
    for mb in range(cfg.grad_accum):
        t0 = _clock(run.device)
        # sample
        examples = train_examples(cfg, task, micro, step_seed(cfg, step, f"prompts/{mb}"))[run.rank::run.world]
        prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
        roll = rollout.sample(cfg, run.engine, tokenizer, prompts, cfg.n, temperature=cfg.temperature,
                              seed=step_seed(cfg, step, f"sample/{mb}"))
        t1 = _clock(run.device)
        # reward -> weights
        R, r, _ = rollout.judge(task, run.verifier, examples, roll, tokenizer, cfg.reward_truncated)
        w, responses = objective_weights(run, examples, roll, R, r)                  # (G, n) float64
        w = w.to(run.device)
        t2 = _clock(run.device)
        # log-probs -> loss -> gradients
        batch = pack(prompts, responses, pad_id=tokenizer.pad_token_id or 0).to(run.device)
        logp, sample_index = packed_logprobs(run.model, batch, temperature=cfg.temperature, precision=cfg.precision)
        ref_logp = None
        if run.ref_model is not None:
            with torch.no_grad():
                ref_logp, _ = packed_logprobs(run.ref_model, batch, temperature=cfg.temperature,
                                              precision=cfg.precision)
        loss = bon_loss(logp, sample_index, w.flatten().to(torch.float32), normaliser=normaliser,
                        ref_logp=ref_logp, kl_coef=cfg.kl_coef)
        loss.backward()
        t3 = _clock(run.device)
        timings["sample"] += t1 - t0
        timings["reward"] += t2 - t1
        timings["score"] += t3 - t2
        for name, value in (("reward", R.mean()), ("verifier_score", r.mean()), ("loss", loss.detach()),
                            ("w_abs", w.abs().mean()),
                            ("resp_len", torch.as_tensor(roll.lengths, dtype=torch.float64).mean())):
            stats[name] = stats[name] + value.detach().double() / cfg.grad_accum  # stays on its device: no sync
    # step
    t0 = _clock(run.device)
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    gnorm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), clip)
    run.opt.step()
    distributed.copy_weights(run.engine.model, run.model)  # world > 1: the engine samples from a gathered replica
    run.engine.update_policy()  # nothing sampled or cached with the old weights is reused
    timings["optim"] = _clock(run.device) - t0
    # the step's only host syncs: scalars for the log record, after the optimizer step
    stats = {name: float(value) for name, value in distributed.all_reduce_mean(stats).items()}  # mean over ranks
    return {"kind": "train", "step": step + 1, **stats, "grad_norm": float(gnorm),
            "lr": run.opt.param_groups[0]["lr"], "seconds": timings}


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup over warmup_steps, then cosine decay to min_lr_ratio * lr at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


# ------------------------------------------------------------------------------------------------------------
# the run


def _write_json(path: str, obj, **kwargs) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, **kwargs)
    atomic_write(path, write)


class RunLog:
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

            def write(tmp):
                with open(tmp, "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in kept)
            atomic_write(path, write)
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
            _write_json(path, {k: torch.as_tensor(v).tolist() for k, v in record["per_prompt"].items()})


# ------------------------------------------------------------------------------------------------------------
# the run directory: checked before anything is written


RUN_FILES = ("config.json", "metrics.jsonl", CHECKPOINT, distributed.DCP_DIR)  # a directory with one holds a run
SHAPE_FIELDS = ("model", "gguf_file", "tiny_dim", "tiny_layers", "tiny_heads")  # a checkpoint fits only these


def check_run_dir(cfg: TrainConfig) -> dict:
    """Check out_dir before the run touches it; returns {"resume": (format, step, path) | None, "created": dir}.

    Raises UserError for a path that cannot be a writable directory, an existing run without --resume or
    --overwrite, and (with --resume) an unreadable checkpoint or one written for another model shape. Creates
    out_dir when missing (`created` is the top directory made, removed again if the run fails before it starts).
    """
    out = cfg.out_dir
    if cfg.resume and cfg.overwrite:
        raise UserError("TrainConfig.overwrite: expected at most one of --resume true (continue the run) and "
                        "--overwrite true (replace it), got both")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"TrainConfig.out_dir: expected a directory, {out} is a file")
    existing = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    latest = None
    if existing and cfg.resume:
        latest = checkpoint_step(out)
        if latest is not None:
            _check_same_model(cfg, out)
    elif existing and not cfg.overwrite:
        found = checkpoint_step(out) if (CHECKPOINT in existing or distributed.DCP_DIR in existing) else None
        what = ", ".join(existing) + (f"; checkpoint at step {found[1]}" if found else "")
        raise UserError(f"TrainConfig.out_dir: {out} already holds a run ({what}); pass --resume true to continue "
                        "it, --overwrite true to replace it, or another --out_dir")
    created = None
    if not os.path.isdir(out):
        top = os.path.abspath(out)
        while not os.path.exists(os.path.dirname(top)):
            top = os.path.dirname(top)
        try:
            os.makedirs(out)
        except OSError as e:
            raise UserError(f"TrainConfig.out_dir: expected a directory that can be created, {out} cannot "
                            f"({e.strerror}: {e.filename or out})") from None
        created = top
    if not os.access(out, os.W_OK | os.X_OK):
        raise UserError(f"TrainConfig.out_dir: expected a writable directory, {out} is not writable")
    return {"resume": latest, "created": created}


def _check_same_model(cfg: TrainConfig, out: str) -> None:
    """--resume: the run's config.json must describe the same model shape as this config."""
    path = os.path.join(out, "config.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: expected the run's JSON config, it cannot be read ({e})") from None
    for name in SHAPE_FIELDS:
        if name in saved and saved[name] != getattr(cfg, name):
            raise UserError(f"TrainConfig.{name}: the checkpoint in {out} was written with {name}="
                            f"{saved[name]!r}, got {getattr(cfg, name)!r}; resume with the run's settings "
                            f"({path}) or pass --overwrite true")


def _start_run_dir(cfg: TrainConfig, resumed: bool) -> None:
    """Every check passed: with --overwrite remove the old run's files, then write config.json."""
    if cfg.overwrite and not resumed:
        for name in os.listdir(cfg.out_dir):
            path = os.path.join(cfg.out_dir, name)
            if name in RUN_FILES or name in ("pass_at_k.png", "eval_pass_at_k.png") or (
                    name.startswith("eval-") and name.endswith(".json")):
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    _write_json(os.path.join(cfg.out_dir, "config.json"), asdict(cfg), indent=2, default=str)


def _remove_if_empty(top: str | None) -> None:
    """Remove a directory tree this run created, when nothing was written into it."""
    if top and os.path.isdir(top) and not any(files for _, _, files in os.walk(top)):
        shutil.rmtree(top, ignore_errors=True)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint of the last finished step was written."""


@contextlib.contextmanager
def _stop_at_step_boundary(enabled: bool):
    """The first Ctrl-C (SIGINT) asks the loop to stop after the current step; a second one stops at once."""
    state = {"stop": False}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        state["stop"] = True
        signal.signal(signal.SIGINT, previous)  # a second Ctrl-C raises KeyboardInterrupt where it lands
        print("\nCtrl-C: stopping after this step and writing a checkpoint (press again to stop now)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


def _load_resumed(cfg: TrainConfig, model, opt, device, where: str) -> int:
    try:
        return load_checkpoint(cfg.out_dir, model, opt, device)
    except Exception as e:  # noqa: BLE001 - a truncated file or one written for another model
        raise UserError(f"{where}: expected a checkpoint of this run's model, it cannot be loaded "
                        f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); "
                        "pass --overwrite true to start over") from e


def train(cfg: TrainConfig) -> dict:
    """Run a BoN-aware fine-tuning run; returns {"before": eval, "after": eval, "records": [...]}.

    Nothing in out_dir changes until the config, the run directory, the checkpoint (with resume) and the
    model / task pairing have been checked (UserError otherwise). Ctrl-C stops after the current step with a
    checkpoint of it (`Interrupted`).
    """
    cfg.validate()
    rank, world, device = distributed.init(resolve_device(cfg))  # torchrun: one process per device
    distributed.check_config(cfg, world)
    main = rank == 0  # only rank 0 prints, writes metrics.jsonl and plots
    plan, error = None, None
    if main:
        try:
            plan = check_run_dir(cfg)
        except UserError as e:
            error = str(e)
    plan, error = distributed.broadcast_object((plan, error))
    if error is not None:
        raise UserError(error)
    try:
        latest = plan["resume"]  # (format, step, path) or None
        resumed = latest is not None
        model, tokenizer, task, verifier = build(cfg, device)
        pending = []  # warm-start records, logged once the run directory is started
        if main and (not resumed or cfg.kl_coef > 0):  # a resumed run's KL reference is still the warm start
            warm_start(cfg, model, tokenizer, task, device, pending.append if not resumed else lambda record: None)
        ref_model = None
        if cfg.kl_coef > 0:  # frozen copy of the policy the run started from
            ref_model = copy.deepcopy(model).requires_grad_(False)
        sampler = distributed.sampling_replica(model, cfg)  # world 1: the policy itself
        model, ref_model = distributed.shard(model, cfg), distributed.shard(ref_model, cfg)  # rank 0's weights
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
        start = _load_resumed(cfg, model, opt, device, latest[2]) if resumed else 0
    except BaseException:
        if main:
            _remove_if_empty(plan["created"])
        raise
    # every check passed: from here on the run directory changes
    if main:
        _start_run_dir(cfg, resumed)
        if resumed:
            print(f"resumed from {latest[2]} at step {start}")
    log = RunLog(os.path.join(cfg.out_dir, "metrics.jsonl") if main else None, resume_step=start if resumed else None)
    if not resumed:
        log({"kind": "config", "step": 0, **asdict(cfg)})
    for record in pending:
        log(record)
    distributed.copy_weights(sampler, model)  # world > 1: the replica gets rank 0's (or the loaded) weights
    show = cfg.progress and main and sys.stderr.isatty()
    engine = Engine(sampler, device=device, precision=cfg.precision,  # samples under the trainer's policy
                    progress=show and cfg.model != "tiny")  # a decode bar for slow models only
    run = Run(cfg, model, ref_model, engine, opt, tokenizer, task, verifier, device, rank, world)

    def evaluate_now(step: int, tag: str) -> dict:
        return evaluate(cfg, engine, tokenizer, task, verifier, step=step, tag=tag, rank=rank, world=world)

    before = distributed.broadcast_object(next((r for r in log.records if r.get("tag") == "before"), None))
    if before is None:
        before = evaluate_now(start, "before")
        log(before)
    if main:
        print(format_table(before))
    bar = progress(cfg, cfg.steps, f"{cfg.method} (N'={cfg.n_bon}, n={cfg.n})")
    bar.update(start)
    with _stop_at_step_boundary(world == 1) as stop:
        for step in range(start, cfg.steps):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step)
            record = rl_step(run, step)
            log(record)
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{record['loss']:.4f}")
            if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps and not stop["stop"]:
                log(evaluate_now(step + 1, "periodic"))
            saved = cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0
            if saved or stop["stop"]:
                save_checkpoint(cfg.out_dir, model, opt, step + 1)
            if stop["stop"]:
                bar.close()
                where = os.path.join(cfg.out_dir, CHECKPOINT)
                raise Interrupted(f"stopped after step {step + 1} of {cfg.steps}; checkpoint {where} "
                                  f"(step {step + 1}) is current; continue with --resume true")
    bar.close()
    save_checkpoint(cfg.out_dir, model, opt, cfg.steps)
    after = evaluate_now(cfg.steps, "after")
    log(after)
    if main:
        print(format_table(before, after))
        plot_path = plot(before, after, os.path.join(cfg.out_dir, "pass_at_k.png"))
        where = os.path.join(cfg.out_dir, CHECKPOINT if world == 1 else distributed.DCP_DIR)
        evals = ", ".join(sorted(f for f in os.listdir(cfg.out_dir) if f.startswith("eval-")))
        print(f"metrics: {log.path}\nplot:    {plot_path}\nevals:   {evals} (per-prompt values)\n"
              f"checkpoint: {where}")
    return {"before": before, "after": after, "records": log.records}
