"""Measured solve rates of the embedded default's warm-started model on each arithmetic level.

    python experiments/arithmetic_levels.py [--prompts 200] [--n 16] [--checkpoint runs/default/checkpoint.safetensors]

Builds the default preset's tiny model, applies its supervised warm start (cached in ~/.cache/bonfast, or
BONFAST_CACHE), optionally loads a run's checkpoint instead, and prints pass@1 and pass@16 at T = 1 with 95%
bootstrap intervals for every level of `bonfast.tasks.arithmetic.LEVELS` (test split).
"""
import argparse

import torch

from bonfast import metrics
from bonfast.build import build, warm_start
from bonfast.config import preset
from bonfast.engine import Engine
from bonfast.rollout import decode, stop_ids
from bonfast.tasks.arithmetic import LEVELS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--checkpoint", default=None)
    args = ap.parse_args()
    cfg = preset("default", progress=False)
    device = torch.device("cpu")
    model, tok, task, _ = build(cfg, device)
    if args.checkpoint:
        from safetensors.torch import load_file
        state = load_file(args.checkpoint)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    else:
        warm_start(cfg, model, tok, task, device, log=lambda record: None)
    engine = Engine(model)
    print(f"| level | problems | pass@1 | pass@{args.n} |\n|---|---|---|---|")
    for level, text in LEVELS.items():
        examples = task.examples("test", n=args.prompts, seed=0, levels=(level,))
        roll = engine.sample([task.prompt_ids(e, tok) for e in examples], args.n, max_new_tokens=cfg.max_new_tokens,
                             temperature=1.0, stop_token_ids=stop_ids(tok), seed=0)
        R = torch.tensor([[task.reward(e, decode(tok, t)) for t in toks] for e, toks in zip(examples, roll.tokens)])
        cells = []
        for k in (1, args.n):
            mean, lo, hi = metrics.bootstrap_ci(metrics.pass_at_k(args.n, R.sum(1), k))
            cells.append(f"{100 * mean:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]")
        print(f"| {level} | {text} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
