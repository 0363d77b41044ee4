"""Evaluation: pass@k, BoK and majority@k of a policy on held-out prompts, and `bonfast eval` of a run directory.

    held-out prompts (cfg.eval_prompts, seed cfg.seed) --rollout.sample(eval_n, each eval temperature)-->
      --rollout.judge--> R, r, answers --metrics.pass_at_k / bo_k / majority_at_k--> per-prompt values
      --metrics.bootstrap_ci--> {"T=<t>": {"pass@k": {"mean", "lo", "hi"}, "bo@k": ..., "maj@k": ...}}

The text table and the plot are in `bonfast.report`.
"""
from __future__ import annotations

import os

import torch

from bonfast import checkpoint, distributed, metrics, rollout
from bonfast.build import build, progress, resolve_device, step_seed, warm_start
from bonfast.config import TrainConfig
from bonfast.engine import Engine
from bonfast.report import format_table, plot

__all__ = ["evaluate", "load_policy", "evaluate_checkpoint"]


@torch.no_grad()
def evaluate(cfg: TrainConfig, engine: Engine, tokenizer, task, verifier, *, step: int, tag: str,
             rank: int = 0, world: int = 1) -> dict:
    """pass@k, BoK and majority@k (mean and 95% bootstrap interval over prompts) for every k and temperature.

    With `world` > 1 each rank samples and judges the prompts [rank::world]; the judged rows are gathered
    back in prompt order, so every rank returns the single-process table.
    """
    examples = task.examples("test", n=cfg.eval_prompts, seed=cfg.seed)
    prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
    result = {"kind": "eval", "tag": tag, "step": step, "n": cfg.eval_n, "prompts": len(prompts), "metrics": {},
              "method": cfg.method, "model": cfg.model, "task": cfg.task, "verifier": cfg.verifier}
    per_prompt_all = {}
    # progress: one tick per (temperature, phase), and the engine's decode bar while sampling
    bar = progress(cfg, 2 * len(cfg.eval_temperatures), f"eval ({tag}, {len(prompts)} prompts x {cfg.eval_n})")
    engine_progress = engine.progress
    for temp in cfg.eval_temperatures:
        bar.set_postfix_str(f"T={temp:g} sampling")
        engine.progress = not bar.disable
        try:
            roll = rollout.sample(cfg, engine, tokenizer, prompts[rank::world], cfg.eval_n, temperature=temp,
                                  seed=step_seed(cfg, 0, f"eval/{temp}"))
        finally:
            engine.progress = engine_progress
        bar.update(1)
        bar.set_postfix_str(f"T={temp:g} judging")
        R, r, answers = distributed.gather_rows(*rollout.judge(task, verifier, examples[rank::world], roll,
                                                               tokenizer, cfg.reward_truncated))
        bar.update(1)
        table = {}
        for k in cfg.eval_ks:
            per_prompt = {
                "pass": metrics.pass_at_k(torch.full((len(prompts),), cfg.eval_n), (R > 0.5).sum(1), k)
                if rollout.is_binary(R) else metrics.bo_k(R, R, k),
                "bo": metrics.bo_k(r, R, k),
                "maj": metrics.majority_at_k(answers, R.tolist(), k),
            }
            for name, values in per_prompt.items():
                values = torch.as_tensor(values, dtype=torch.float64)
                mean, lo, hi = metrics.bootstrap_ci(values, seed=cfg.seed)
                table[f"{name}@{k}"] = {"mean": float(mean), "lo": float(lo), "hi": float(hi)}
                per_prompt_all[f"T={temp:g}/{name}@{k}"] = values
        result["metrics"][f"T={temp:g}"] = table
    bar.close()
    # per-prompt values (not logged) let the after/before table show a paired-bootstrap interval of the change
    result["per_prompt"] = per_prompt_all
    return result


def load_policy(cfg: TrainConfig, device: torch.device | None = None):
    """(model, tokenizer, task, verifier, tag) of out_dir's checkpoint, else the tiny warm start or the base
    model; tag says which was loaded."""
    device = device or resolve_device(cfg)
    model, tokenizer, task, verifier = build(cfg, device)
    where = checkpoint.load_model_weights(cfg.out_dir, model, device)
    if where is not None:
        tag = f"checkpoint {where}"
    elif cfg.model == "tiny":
        warm_start(cfg, model, tokenizer, task, device, log=lambda record: None)
        tag = "tiny warm start"
    else:
        tag = f"base model {cfg.model}"
    return model, tokenizer, task, verifier, tag


def evaluate_checkpoint(cfg: TrainConfig, *, base: bool = False) -> dict:
    """`bonfast eval`: the pass@k / BoK / majority@k table and plot of out_dir's checkpoint.

    UserError (nothing created) when out_dir holds no readable checkpoint. With `base`, evaluates the starting
    policy instead (the tiny model's warm start, or cfg.model as loaded) and writes the plot into out_dir.
    """
    cfg.validate()
    device = resolve_device(cfg)
    if base:
        label, tag = ("tiny warm start" if cfg.model == "tiny" else f"base model {cfg.model}"), "base"
        model, tokenizer, task, verifier = build(cfg, device)
        if cfg.model == "tiny":
            warm_start(cfg, model, tokenizer, task, device, log=lambda record: None)
    else:
        latest = checkpoint.checkpoint_step(cfg.out_dir)
        if latest is None:
            state = "has none" if os.path.isdir(cfg.out_dir) else "does not exist"
            raise checkpoint.UserError(
                f"TrainConfig.out_dir: expected a run directory with a checkpoint ({checkpoint.CHECKPOINT} or "
                f"{distributed.DCP_DIR}/), {cfg.out_dir} {state}; pass the --out_dir of a `bonfast train` run, or "
                "--base true to evaluate the starting policy")
        label, tag = f"checkpoint {latest[2]} (step {latest[1]})", f"step {latest[1]}"
        print(f"evaluating {label}: {cfg.model} on {cfg.task}, {cfg.eval_prompts} prompts x {cfg.eval_n} samples",
              flush=True)
        model, tokenizer, task, verifier = build(cfg, device)
        try:
            checkpoint.load_model_weights(cfg.out_dir, model, device)
        except Exception as e:  # noqa: BLE001 - a truncated file, or one written for another model shape
            raise checkpoint.UserError(f"{latest[2]}: expected a checkpoint of this config's model, it cannot be "
                                       f"loaded ({str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
                                       "evaluate with the run's settings (its config.json)") from e
    engine = Engine(model, device=device, precision=cfg.precision)
    result = evaluate(cfg, engine, tokenizer, task, verifier, step=latest[1] if not base else 0, tag=tag)
    print(f"{label}\n{format_table(result)}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    print(f"plot: {plot(result, None, os.path.join(cfg.out_dir, 'eval_pass_at_k.png'))}")
    return result
