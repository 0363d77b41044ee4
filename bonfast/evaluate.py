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
from bonfast.build import build, resolve_device, step_seed, warm_start
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
    result = {"kind": "eval", "tag": tag, "step": step, "n": cfg.eval_n, "prompts": len(prompts), "metrics": {}}
    per_prompt_all = {}
    for temp in cfg.eval_temperatures:
        roll = rollout.sample(cfg, engine, tokenizer, prompts[rank::world], cfg.eval_n, temperature=temp,
                              seed=step_seed(cfg, 0, f"eval/{temp}"))
        R, r, answers = distributed.gather_rows(*rollout.judge(task, verifier, examples[rank::world], roll,
                                                               tokenizer, cfg.reward_truncated))
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


def evaluate_checkpoint(cfg: TrainConfig) -> dict:
    """`bonfast eval`: the pass@k / BoK / majority table and plot of out_dir's checkpoint (or of the base model)."""
    cfg.validate()
    device = resolve_device(cfg)
    model, tokenizer, task, verifier, tag = load_policy(cfg, device)
    os.makedirs(cfg.out_dir, exist_ok=True)
    engine = Engine(model, device=device, precision=cfg.precision)
    result = evaluate(cfg, engine, tokenizer, task, verifier, step=0, tag="eval")
    print(f"{tag}\n{format_table(result)}")
    print(f"plot: {plot(result, None, os.path.join(cfg.out_dir, 'eval_pass_at_k.png'))}")
    return result
