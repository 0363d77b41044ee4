"""experiments/science_report.py on synthetic evaluations: the pooled statistics and the written files."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import science  # noqa: E402
import science_report  # noqa: E402


def test_pooled_mean_and_interval():
    a = torch.tensor([0.0, 1.0] * 50, dtype=torch.float64)
    b = torch.full((100,), 0.25, dtype=torch.float64)
    out = science_report.pooled([a, b])
    assert out["mean"] == pytest.approx(0.375) and out["per_seed"] == [0.5, 0.25]
    assert out["lo"] < 0.375 < out["hi"] and out["hi"] - out["lo"] < 0.2
    const = science_report.pooled([b, b])
    assert const["lo"] == const["hi"] == pytest.approx(0.25)  # no prompt noise, no interval


def _fake_eval(path, p_correct, seed, prompts=30, n=32):
    gen = torch.Generator().manual_seed(seed)
    temps = {}
    for t in science.TEMPS:
        correct = (torch.rand(prompts, n, generator=gen) < p_correct).double()
        per = {f"pass@{k}": [float((correct[g, :k].sum() > 0)) for g in range(prompts)] for k in science.KS}
        per.update({f"bo@{k}": correct[:, 0].tolist() for k in science.KS})
        per.update({f"maj@{k}": correct[:, 0].tolist() for k in science.MAJ_KS})
        for name in ("distinct", "entropy", "modal_share", "modal_correct", "verifier_accepts", "length"):
            per[name] = torch.rand(prompts, generator=gen).tolist()
        temps[f"{t:g}"] = per
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "eval.json"), "w") as f:
        json.dump({"seed": seed, "n": n, "levels": [1] * prompts, "temps": temps}, f)


def test_report_writes_tables_and_plots(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        _fake_eval(runs / f"base-seed{seed}", 0.2, seed)
        _fake_eval(runs / f"rl-seed{seed}", 0.3, 10 + seed)
    _fake_eval(runs / "bon_rlb_p-seed1", 0.4, 21)  # a method with fewer seeds: paired on the seeds it has
    out = str(tmp_path / "docs" / "science")
    meta = {"date": "today", "command": "test", "minutes": 0.0, "machine": "cpu", "torch": torch.__version__,
            "noisy_verifier": science.NOISY, "labels": science.LABELS, "temps": science.TEMPS, "ks": science.KS,
            "n_bon": 8}
    data = science_report.report(str(runs), ["base", "rl", "bon_rlb_p", "sft"], [0, 1], out, meta)
    assert data["meta"]["missing"] == ["sft"] and data["meta"]["methods"] == ["base", "rl", "bon_rlb_p"]
    assert data["meta"]["seeds_per_method"]["bon_rlb_p"] == [1]
    entry = data["results"]["bon_rlb_p|T=1|pass@1"]
    base_seed1 = data["results"]["base|T=1|pass@1"]["value"]["per_seed"][1]
    assert entry["change_vs_base"]["mean"] == pytest.approx(entry["value"]["mean"] - base_seed1)
    assert entry["minus_rl"]["per_seed"] == [pytest.approx(
        entry["value"]["mean"] - data["results"]["rl|T=1|pass@1"]["value"]["per_seed"][1])]
    assert "minus_rl" in entry and "minus_rl" not in data["results"]["rl|T=1|pass@1"]
    text = open(out + ".md").read()
    assert "Headline at T = 1" in text and "Co-scaling" in text and "Not evaluated yet" in text
    assert os.path.getsize(out + "-pass_at_k.png") > 0 and os.path.getsize(out + "-meta_coscaling.png") > 0
