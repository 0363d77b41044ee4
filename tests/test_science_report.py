"""experiments/science.py and science_report.py on synthetic per-prompt data: the plan, the seed-level statistics,
the verdicts with Holm, the N' sweep and gameable sections, and the written files (fast); the whole pipeline on
tiny settings (`--smoke`, slow)."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from bonfast import metrics

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import results_doc  # noqa: E402
import science  # noqa: E402
import science_data  # noqa: E402
import science_report  # noqa: E402


def test_plan_covers_every_arm_with_the_seed_rule_and_never_a_tuning_seed(capsys, tmp_path):
    jobs = science.plan(list(science.ARMS))
    seeds = {}
    for arm, seed in jobs:
        seeds.setdefault(arm, []).append(seed)
    assert not {s for _, s in jobs} & set(science.TUNING_SEEDS)
    assert len(seeds["rl"]) >= 8 and len(seeds["bon_rlb_p"]) >= 8 and len(seeds["base"]) >= 8
    checks = science.EQUAL_ON_BINARY  # arms equal to another arm on a binary reward: one seed, as the check
    assert all(len(v) >= 3 for a, v in seeds.items()
               if science.ARMS.get(a) and science.ARMS[a].group != "sweep" and a not in checks)
    assert all(seeds[a] == list(science.SEEDS["check"]) and len(seeds[b]) >= 3 for a, b in checks.items())
    sweep = {science.ARMS[a].n_bon for a in seeds if a in science.ARMS and science.ARMS[a].group == "sweep"}
    assert sweep | {science.TRAIN_N_BON} == set(science.SWEEP)
    assert all(len(seeds[a]) >= 2 for a in seeds if a in science.ARMS and science.ARMS[a].group == "sweep")
    assert {"rl_v.biased", "bon_rl_v.biased", "bon_sft.variational", "bon_rl_v.winner", "bon_rl_s.winner",
            "bon_rlb.exact_sign", "bon_rlb.no_clip", "bon_rlb.p_group"} <= set(seeds)
    first = [(science.VERIFIER_JOB, s) for s in sorted(seeds["base"])] + [("base", s) for s in sorted(seeds["base"])]
    assert jobs[: len(first)] == first  # the seeds' learned verifiers (they make the warm starts), then base
    total = science.print_plan(jobs, science.Settings(), str(tmp_path))
    text = capsys.readouterr().out
    assert f"{len(jobs)} runs (0 done)" in text and "rl_v.biased" in text and total > 60 * 4
    with pytest.raises(SystemExit, match="tuning"):
        science.main(["--plan", "--seeds", "0"])


def test_every_arm_is_a_valid_train_command():
    from bonfast.cli import build_parser, config_from_args
    for name, arm in science.ARMS.items():
        argv = ["train", "--method", arm.method, "--n_bon", str(arm.n_bon), *science.SMOKE.train_flags(), *arm.args]
        cfg = config_from_args(build_parser().parse_args(argv)).validate()
        assert cfg.method == arm.method, name


def _fake_eval(path, p_correct, seed, prompts=24, n=32, curve=None):
    gen = torch.Generator().manual_seed(seed)
    temps = {}
    for t in science.TEMPS:
        correct = (torch.rand(prompts, n, generator=gen) < p_correct).double()
        count = correct.sum(1).long()
        first = correct[:, 0].tolist()
        per = {f"pass@{k}": metrics.pass_at_k(torch.full_like(count, n), count, k).tolist() for k in range(1, n + 1)}
        per.update({f"{p}@{k}": first for k in range(1, n + 1) for p in ("bo", "gbo")})
        per.update({f"maj@{k}": correct[:, 0].tolist() for k in science.MAJ_KS})
        for name in ("distinct", "entropy", "modal_share", "modal_correct", "verifier_accepts", "biased_score",
                     "length"):
            per[name] = torch.rand(prompts, generator=gen).tolist()
        temps[f"{t:g}"] = per
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "eval.json"), "w") as f:
        json.dump({"seed": seed, "n": n, "levels": [1 + g % 3 for g in range(prompts)], "temps": temps}, f)
    if curve:
        with open(os.path.join(path, "metrics.jsonl"), "w") as f:
            for step, (reward, score) in enumerate(curve, 1):
                f.write(json.dumps({"kind": "train", "step": step, "reward": reward, "verifier_score": score}) + "\n")


def _meta(arms):
    return {"date": "today", "command": "test", "minutes": 0.0, "machine": "cpu", "torch": torch.__version__,
            "noisy_verifier": science.NOISY, "labels": science.LABELS, "temps": science.TEMPS, "ks": science.KS,
            "train_n_bon": 8, "groups": {a: science.ARMS[a].group for a in arms},
            "references": {a: science.ARMS[a].reference for a in arms if science.ARMS[a].reference},
            "n_bon": {a: science.ARMS[a].n_bon for a in arms}, "tuning_seeds": [0], "pool": 512}


def test_report_on_synthetic_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(science_report, "N_BOOT", 200)  # fast; the statistics themselves are tested in test_metrics
    runs = tmp_path / "runs"
    p = {"base": 0.2, "rl": 0.02, "bon_rlb_p": 0.4, "bon_rlb_p.n2": 0.3, "bon_rl_v.winner": 0.3,
         "rl_v.biased": 0.1, "bon_rl_v.biased": 0.3, "bon_rl_v.biased_reward": 0.15, "bon_rl_v": 0.3, "sft": 0.3}
    seeds = {"base": (1, 2, 3), "rl": (1, 2, 3), "bon_rlb_p": (1, 2, 3), "bon_rlb_p.n2": (1, 2),
             "bon_rl_v.winner": (1, 2), "rl_v.biased": (1, 2), "bon_rl_v.biased": (1, 2), "bon_rl_v": (2,),
             "sft": (1, 3), "bon_rl_v.biased_reward": (1, 2, 3)}
    for arm, ss in seeds.items():
        for s in ss:
            curve = [(0.3, 0.4 + 0.01 * i) for i in range(5)] if ".biased" in arm else None
            _fake_eval(runs / f"{arm}-seed{s}", p[arm], 100 * s + len(arm), curve=curve)
    arms = ["rl", "bon_rlb_p", "sft", "bon_rl_v", "bon_rl_s", "bon_rlb_p.n2", "bon_rl_v.winner", "rl_v.biased",
            "bon_rl_v.biased", "bon_rl_v.biased_reward"]
    out = str(tmp_path / "docs" / "science")
    data = science_report.report(str(runs), ["base", *arms], [1, 2, 3], out, _meta(arms))
    assert data["meta"]["missing"] == ["bon_rl_s"]
    # the fixture gives these two arms the same p and generator seed: the only equal evaluations, and found
    assert data["meta"]["identical_runs"] == [{"arms": ["bon_rl_v.winner", "bon_rl_v.biased"], "seeds": [1, 2]}]
    assert data["meta"]["seeds_per_arm"]["bon_rl_v"] == [2]
    # a paired change is the per-seed difference on the seeds both arms have
    entry = data["results"]["sft|T=1|pass@1"]
    base = data["results"]["base|T=1|pass@1"]["value"]["per_seed"]
    assert entry["change_vs_base"]["per_seed"] == pytest.approx(
        [a - b for a, b in zip(entry["value"]["per_seed"], [base[0], base[2]])])
    assert "minus_reference" in data["results"]["bon_rl_v.winner|T=1|pass@8"]  # paired with bon_rl_v on seed 2
    # verdicts: the primary claim at 95%, the rest at Holm levels; the headline quotes the seed-level interval
    v = data["verdicts"]
    assert v["headline"]["level"] == 0.05 and v["headline"]["seeds"] == 3 and v["headline"]["verdict"] == "supported"
    secondary = [c for k, c in v.items() if k != "headline"]
    assert secondary and all(c["level"] <= 0.05 and c["p_holm"] >= c["p"] for c in secondary)
    assert min(c["level"] for c in secondary) == pytest.approx(0.05 / len(secondary))
    assert {"headline_bok", "rl_v_hacks", "bon_rl_v_resists"} <= set(v)
    assert data["sweep"]["n_bon"] == [2, 8] and set(data["sweep"]["curves"]["2"]) == {str(k) for k in range(1, 33)}
    # every sweep row on the seeds every N' has: the 3-seed N' = 8 arm is read on seeds 1-2 like N' = 2
    assert data["sweep"]["seeds"] == [1, 2]
    assert data["sweep"]["curves"]["8"]["8"]["per_seed"] == data["results"]["bon_rlb_p|T=1|pass@8"]["value"][
        "per_seed"][:2]
    assert data["gameable"]["curves"]["rl_v.biased"]["verifier_score"][-1] == pytest.approx(0.44)
    # the verifier-reward arm's differences are paired on the seeds both arms have (1, 2 of its 1, 2, 3)
    game = data["gameable"]
    assert game["arms"] == ["rl_v.biased", "bon_rl_v.biased", "bon_rl_v.biased_reward"]
    alone = game["verifier_reward_minus_rl_v"]["pass@8"]
    rl_v = data["results"]["rl_v.biased|T=1|pass@8"]["value"]["per_seed"]
    iso = data["results"]["bon_rl_v.biased_reward|T=1|pass@8"]["value"]["per_seed"]
    assert alone["per_seed"] == pytest.approx([a - b for a, b in zip(iso[:2], rl_v)])
    assert game["verifier_reward_minus_bon_rl_v"]["pass@8"]["mean"] < 0 < alone["mean"]
    text = open(out + ".md").read()
    for heading in ("Verdicts", "Headline at T = 1", "Published variants", "N' sweep", "Gameable verifier",
                    "Co-scaling", "Not evaluated yet"):
        assert heading in text, heading
    for png in ("-pass_at_k.png", "-meta_coscaling.png", "-nprime_sweep.png", "-gameable.png"):
        assert os.path.getsize(out + png) > 0
    # docs/RESULTS.md is generated from the same data: every verdict it states is one of the report's
    data["meta"]["planned"] = {"base": [1, 2, 3], "rl": [1, 2, 3], "bon_rl_s": [1, 2, 3], "sft": [1, 2, 3]}
    data["meta"]["cpu_minutes"] = {"runs": 20, "train": 100.0, "eval": 20.0, "total": 120.0}
    doc = results_doc.write(data, str(tmp_path / "RESULTS.md"), "Not run.", 12.0)
    assert doc == open(tmp_path / "RESULTS.md").read()
    h = v["headline"]
    assert f"**pass@8: {science_report.fmt(h, signed=True)} points, 3 seeds" in doc
    assert "Bo8 (noisy verifier)" in doc and "Incomplete" in doc and "BoN-RL-S (N'=8) 0/3" in doc
    assert "120 CPU-minutes" in doc and "Not run." in doc and "took 12 s" in doc
    for key, claim in v.items():
        text = science_report.fmt(claim, science_report.scale_of(claim["metric"]), signed=True, seeds=True)
        assert f"{text}, {results_doc.n_seeds(len(claim['per_seed']))}" in doc, key
    for heading in ("## Verdicts on the paper's findings", "## Published variants", "## N' sweep",
                    "## A verifier that can be gamed", "## Caveats"):
        assert heading in doc, heading
    assert "| BoN-RL-V (verifier rewards) minus BoN-RL-V | 2 |" in doc
    assert "that arm minus RL-V " + science_report.fmt(alone, signed=True) in doc and "2 seeds so far" in doc
    assert "Where BoN-RL-V's resistance comes from" in doc.split("## Published variants")[0]
    source = game["verifier_reward_minus_bon_rl_v"]["pass@8"]
    assert ("So BoN-RL-V's resistance comes from its task reward" in doc) == (source["hi"] < 0)
    assert results_doc.overall(["supported", "inconclusive"]) == "mixed (1 inconclusive, 1 supported)"
    assert results_doc.overall([]) .startswith("not tested")


def test_committed_compact_data_alone_regenerates_the_report(tmp_path, monkeypatch):
    """The per-run .npz files (science_data) are what gets committed: a clean clone without runs/ gets the same
    report, and pass@k read back from them is bitwise the evaluation's."""
    monkeypatch.setattr(science_report, "N_BOOT", 100)
    runs = tmp_path / "runs"
    for arm, p in (("base", 0.3), ("rl", 0.2), ("bon_rlb_p", 0.4), ("bon_rl_s", 0.3)):
        for s in (1, 2):
            _fake_eval(runs / f"{arm}-seed{s}", p, 10 * s + len(arm))
            if arm == "bon_rl_s":  # an arm that trains the same policy as another: its evaluation is equal
                shutil.copytree(runs / f"{arm}-seed{s}", runs / f"pass_at_k-seed{s}")
    arms = ["rl", "bon_rlb_p", "bon_rl_s", "pass_at_k"]
    first = science_report.report(str(runs), ["base", *arms], [1, 2], str(tmp_path / "a" / "science"), _meta(arms))
    assert first["meta"]["identical_runs"] == [{"arms": ["bon_rl_s", "pass_at_k"], "seeds": [1, 2]}]
    doc = results_doc.write(first, str(tmp_path / "RESULTS.md"), "Not run.", 1.0)
    assert "BoN-RL-S (N'=8) and PKPO pass@k (N'=8): bitwise-equal evaluations on seed(s) 1, 2" in doc
    data_dir = tmp_path / "a" / "science-runs"
    assert sorted(os.listdir(data_dir)) == sorted(f"{a}-seed{s}.npz" for a in ("base", *arms) for s in (1, 2))
    ev, _ = science_data.load(str(data_dir / "rl-seed1.npz"))
    with open(runs / "rl-seed1" / "eval.json") as f:
        original = json.load(f)
    assert all(ev["temps"][t][f"pass@{k}"] == original["temps"][t][f"pass@{k}"] for t in ev["temps"]
               for k in range(1, 33))
    again = science_report.report(str(tmp_path / "no-runs"), ["base", *arms], [1, 2], str(tmp_path / "b" / "science"),
                                  _meta(arms), data_dir=str(data_dir))
    assert again["results"] == first["results"] and again["verdicts"] == first["verdicts"]
    assert again["meta"]["identical_runs"] == first["meta"]["identical_runs"]


@pytest.mark.slow
def test_smoke_runs_the_whole_pipeline(tmp_path):
    """`science.py --smoke`: every arm on one seed, 2 steps, tiny model, into a temp dir, report included."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "science.py")
    out = subprocess.run([sys.executable, script, "--smoke", "--jobs", "2"], env=env, capture_output=True,
                         text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "smoke run finished" in out.stdout
    md = out.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    text = open(md).read()
    assert "Verdicts" in text and "N' sweep" in text and "Gameable verifier" in text and "Not evaluated" not in text
