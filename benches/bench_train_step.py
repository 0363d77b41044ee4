"""One training step of the embedded default preset, and where its time goes.

    pytest benches/bench_train_step.py -s --benchmark-columns=min,mean,rounds

The step is `bonfast.train.rl_step` on the default preset (tiny decoder, arithmetic, BoN-RLB(P), G = 32 prompts,
n = 8 samples), from a randomly initialised model (the warm start changes response lengths, not the phases).
It reports, in `extra_info` and on stdout, the share of the step spent in each phase:

    sample  Engine.sample (shared-prefix prefill + decode)
    reward  task rewards, verifier scores, BoN weights
    score   packed forward, fused log-probs, loss, backward
    optim   gradient clipping + AdamW step
"""
from __future__ import annotations

import pytest
import torch

from bonfast.config import preset
from bonfast.engine import Engine
from bonfast.train import build, rl_step

PHASES = ("sample", "reward", "score", "optim")


@pytest.mark.parametrize("preset_name", ["default"])
def test_train_step(benchmark, preset_name, tmp_path):
    cfg = preset(preset_name, out_dir=str(tmp_path), progress=False).validate()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, task, verifier = build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    engine = Engine(model, device=device)
    records = []
    step = iter(range(10**6))

    def run():
        records.append(rl_step(cfg, next(step), model, None, engine, opt, tokenizer, task, verifier, device))

    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    totals = {p: sum(r["seconds"][p] for r in records[1:]) for p in PHASES}
    whole = sum(totals.values())
    shares = {p: totals[p] / whole for p in PHASES}
    benchmark.extra_info.update({"device": str(device), "threads": torch.get_num_threads(),
                                 "seconds_per_step": whole / len(records[1:]),
                                 **{f"share_{p}": round(s, 4) for p, s in shares.items()}})
    print(f"\n[{preset_name}] step {whole / len(records[1:]):.3f} s on {device}: "
          + ", ".join(f"{p} {100 * s:.1f}%" for p, s in shares.items()))
