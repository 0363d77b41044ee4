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


def _fake_eval(path, p_correct, seed, prompts=24, n=32, curve=None, lbo=None):
    """A run's eval.json; with lbo = (p, generator seed), evaluated under the learned verifier too: `lbo@k` (the
    verifier's pick correct with probability p, the same draw for every k) and its learned.json."""
    gen = torch.Generator().manual_seed(seed)
    temps = {}
    calib = {"verifier": "learned-verifier-0.safetensors", "threshold": 0.5, "temps": {}}
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
        if lbo is not None:
            pick = (torch.rand(prompts, generator=torch.Generator().manual_seed(lbo[1])) < lbo[0]).double().tolist()
            per.update({f"lbo@{k}": pick for k in range(1, n + 1)})
            per["learned_accepts"] = first
            calib["temps"][f"{t:g}"] = {"n": prompts * n, "base_rate": p_correct, "accuracy": 0.8 + lbo[0] / 10,
                                        "auc": 0.9, "fpr": 0.1, "fnr": 0.05, "brier": 0.08, "threshold": 0.5,
                                        **{f"lbo@{k}": sum(pick) / prompts for k in science.KS}}
        temps[f"{t:g}"] = per
    os.makedirs(path, exist_ok=True)
    if lbo is not None:
        with open(os.path.join(path, "learned.json"), "w") as f:
            json.dump(calib, f)
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


# The learned group (LEARNED_CLAIMS): (p of a correct pick, generator seed of the picks) per arm. base, RL, BoN-RL-S and
# BoN-RL-V (learned) share their picks: claims (a) and (d) are exactly 0; (b) BoN-RLB(P) - RL is far above 0.
LEARNED_PICKS = {"base": 0.2, "rl": 0.2, "bon_rl_s": 0.2, "bon_rl_v.learned": 0.2, "bon_rlb_p": 0.7, "sft": 0.7}
LEARNED_ARMS = ["sft", "rl", "bon_rl_s", "bon_rlb_p", "bon_rl_v.learned"]


def _fake_verifier(runs, seed, auc=0.9):
    """runs/verifier-seed<seed>/calibration.json as the study's "verifier" job writes it."""
    held = {"prompts": 256, "samples": 8}
    for t in ("0.5", "1", "1.5"):
        held[t] = {"n": 2048, "positives": 400, "base_rate": 0.2, "threshold": 0.5, "accuracy": 0.85 + seed / 100,
                   "auc": auc, "fpr": 0.12, "fnr": 0.05, "brier": 0.08, "mean_score": 0.25, "bo@8": 0.22,
                   "pass@8": 0.4, "pass@1": 0.2}
    os.makedirs(runs / f"verifier-seed{seed}", exist_ok=True)
    with open(runs / f"verifier-seed{seed}" / "calibration.json", "w") as f:
        json.dump({"config": {"seed": seed}, "path": f"/root/.cache/bonfast/learned-verifier-{seed}.safetensors",
                   "train": {"sequences": 16384}, "heldout": held}, f)


def _learned_runs(runs, sft_lbo_seeds=range(4, 9)):
    """Seeds 1-8 of the learned group's arms; SFT's seeds outside `sft_lbo_seeds` evaluated before the learned
    verifier existed (no lbo@k: not in for its claim)."""
    p = {"base": 0.3, "rl": 0.25, "bon_rlb_p": 0.4, "bon_rl_s": 0.3, "bon_rl_v.learned": 0.3, "sft": 0.35}
    for arm, q in p.items():
        for s in range(1, 9):
            picks = None if arm == "sft" and s not in sft_lbo_seeds else (LEARNED_PICKS[arm], 1000 + s)
            _fake_eval(runs / f"{arm}-seed{s}", q, 10 * s + len(arm), prompts=12, lbo=picks)
    for s in (1, 2):
        _fake_verifier(runs, s)


def test_learned_verdicts_pending_until_every_seed_then_holm_among_four(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(science_report, "N_BOOT", 200)
    runs, data_dir = tmp_path / "runs", str(tmp_path / "science-runs")
    _learned_runs(runs)
    seeds = list(range(1, 9))
    st = science_report.Study(str(runs), ["base", *LEARNED_ARMS], seeds, _meta(LEARNED_ARMS), data_dir)
    LV = science_report.learned_verdicts(st)
    assert list(LV) == [c[0] for c in science_report.LEARNED_CLAIMS]
    # (c): SFT has lbo@8 on seeds 4-8 only: pending with those seeds, and no number that could be read as a verdict
    c = LV["learned_sft_bok"]
    assert c["pending"] and c["verdict"] == "pending" and c["seeds_in"] == [4, 5, 6, 7, 8]
    assert "mean" not in c and "p" not in c and c["level"] is None
    assert science_report.pending_text(c) == "pending: 5 of 8 seeds in (4, 5, 6, 7, 8)"
    # the complete claims: Holm over the four with the pending one at p = 1 (its levels can only rise later)
    done = [k for k in LV if k != "learned_sft_bok"]
    assert all(len(LV[k]["per_seed"]) == 8 for k in done)
    ps = [1.0 if LV[k]["pending"] else LV[k]["p"] for k in LV]
    holm = metrics.holm(ps, 0.05)
    assert [LV[k]["level"] for k in done] == [lv for k, lv in zip(LV, holm["levels"]) if k in done]
    assert LV["learned_headline_bok"]["verdict"] == "supported" and LV["learned_headline_bok"]["level"] == 0.05 / 4
    for k in ("learned_bon_rl_v", "learned_bon_rl_v_vs_s"):  # equal picks: exactly 0
        assert LV[k]["mean"] == 0 and LV[k]["verdict"] == "inconclusive"
    # RESULTS.md says so: the finding pending with the seeds in, the Holm note, the reading of the SFT pair
    data = science_report.report(str(runs), ["base", *LEARNED_ARMS], seeds, str(tmp_path / "science"),
                                 _meta(LEARNED_ARMS))
    assert data["learned_verdicts"] == LV
    doc = results_doc.write(data, str(tmp_path / "RESULTS.md"), "Not run.", 1.0)
    assert "| **pending: 5 of 8 seeds in (4, 5, 6, 7, 8)** |" in doc and "at p = 1" in doc
    sft = data["reversal"]["pairs"]["sft_minus_base"]
    assert sft["reading"] in ("pending", "no_reversal") and "pending: 5 of 8 seeds in" in sft["text"]
    assert sft["kinds"]["learned"]["pending"] and sft["text"] in doc
    # a report called on fewer seeds than pre-registered gives no verdict at all
    few = science_report.Study(str(runs), ["base", *LEARNED_ARMS], [1, 2, 3], _meta(LEARNED_ARMS), data_dir)
    assert all(v["pending"] for v in science_report.learned_verdicts(few).values())
    # SFT's seeds 1-3 re-evaluated under the learned verifier: (c) complete, read on seeds 1-8, against the paper
    for s in (1, 2, 3):
        _fake_eval(runs / f"sft-seed{s}", 0.35, 10 * s + 3, prompts=12, lbo=(LEARNED_PICKS["sft"], 1000 + s))
        later = os.path.getmtime(science_data.path_of(data_dir, "sft", s)) + 1
        os.utime(runs / f"sft-seed{s}" / "eval.json", (later, later))
    st = science_report.Study(str(runs), ["base", *LEARNED_ARMS], seeds, _meta(LEARNED_ARMS), data_dir)
    assert "warning" not in capsys.readouterr().err  # the re-evaluation kept every earlier per-prompt number
    LV = science_report.learned_verdicts(st)
    assert not any(v["pending"] for v in LV.values())
    assert LV["learned_sft_bok"]["verdict"] == "opposite" and LV["learned_sft_bok"]["seeds"] == 8
    holm = metrics.holm([v["p"] for v in LV.values()], 0.05)
    assert [v["level"] for v in LV.values()] == holm["levels"]
    assert [v["p_holm"] for v in LV.values()] == holm["adjusted"]


def _claim(verdict, mean=0.02, level=0.0125, pending=False, seeds_in=8):
    v = {"verdict": verdict, "mean": mean, "lo": mean - 0.01, "hi": mean + 0.01, "per_seed": [mean] * 8,
         "level": level, "pending": pending, "seeds_in": list(range(1, seeds_in + 1)), "seeds_planned": list(
             range(1, 9)), "metric": "lbo@8"}
    return v


@pytest.mark.parametrize("noisy, learned, code, words", [
    ("opposite", "supported", "noise_property", "the reversal is a property of the hash-noise verifier"),
    ("opposite", "opposite", "persists", "it persists under a learned verifier"),
    ("opposite", "inconclusive", "undecided", "the data support neither reading"),
    ("opposite", "pending", "pending", "pending: 5 of 8 seeds in (1, 2, 3, 4, 5)"),
    ("supported", "opposite", "no_reversal", "no reversal under the noisy verifier to explain"),
    ("inconclusive", "pending", "no_reversal", "under the learned verifier: pending: 5 of 8 seeds in"),
])
def test_reversal_reading_for_every_outcome(noisy, learned, code, words):
    lv = _claim(learned, pending=learned == "pending", seeds_in=5 if learned == "pending" else 8)
    got, text = science_report.reversal_reading(_claim(noisy, level=0.01), lv, {**_claim("x"), "direction":
                                                                                  "supported"})
    assert got == code and words in text, text
    assert "hash noise +2.0 [+1.0, +3.0] (99.00% Holm level" in text
    assert "length bias +2.0 [+1.0, +3.0] (95%, descriptive: the paper's direction)" in text
    if learned != "pending":
        assert f"+2.0 [+1.0, +3.0] at its 98.75% Holm level, {learned}" in text
    assert science_report.reversal_reading(None, lv) == ("missing", "runs missing: no reading")


def test_learned_report_section_calibration_and_clean_clone(tmp_path, monkeypatch):
    """The report on the learned group: the verdicts table, the reversal section with its reading, the verifiers'
    calibration per seed and the selection accuracy per policy; the compact data alone (learned.json in each .npz,
    verifier-seed<s>.json) regenerates all of it."""
    monkeypatch.setattr(science_report, "N_BOOT", 100)
    runs = tmp_path / "runs"
    _learned_runs(runs, sft_lbo_seeds=range(1, 9))
    seeds = list(range(1, 9))
    data = science_report.report(str(runs), ["base", *LEARNED_ARMS], seeds, str(tmp_path / "a" / "science"),
                                 _meta(LEARNED_ARMS))
    LV, rev = data["learned_verdicts"], data["reversal"]
    assert not any(v["pending"] for v in LV.values())
    # the verifier reports are copied into the data dir, the machine's cache path reduced to the file name
    data_dir = tmp_path / "a" / "science-runs"
    with open(data_dir / "verifier-seed2.json") as f:
        copied = json.load(f)
    assert copied["path"] == "learned-verifier-2.safetensors" and copied["heldout"]["1"]["accuracy"] == 0.87
    assert list(rev["calibration"]) == ["1", "2"]
    assert os.path.getsize(tmp_path / "a" / "science-reversal.png") > 0
    md = open(tmp_path / "a" / "science.md").read()
    assert "| 1 | 2048 | 20.0 | 86.0 | 0.900 | 12.0 | 5.0 | 0.080 | 22.0 | 40.0 | 20.0 |" in md
    assert "| 2 | 2048 | 20.0 | 87.0 | 0.900 |" in md
    # selection accuracy: means over the seeds of each policy's learned.json and of its own lbo@8 / pass@1 / pass@8
    sel = rev["selection"]
    assert list(sel) == ["base", *LEARNED_ARMS] and all(v["seeds"] == seeds for v in sel.values())
    ev = {s: science_data.load(str(data_dir / f"bon_rlb_p-seed{s}.npz"))[0] for s in seeds}
    pick = sum(sum(ev[s]["temps"]["1"]["lbo@8"]) / 12 for s in seeds) / 8
    assert sel["bon_rlb_p"]["mean"]["pick_correct"] == pytest.approx(pick)
    assert sel["bon_rlb_p"]["mean"]["accuracy"] == pytest.approx(0.87)
    assert sel["base"]["mean"]["fpr"] == pytest.approx(0.1)
    assert ev[1]["learned"]["temps"]["1"]["auc"] == 0.9  # learned.json travels in the .npz
    # the reversal: one reading per pair, from the verdicts
    pairs = rev["pairs"]
    for pair, noisy_key, learned_key, *_ in science_report.REVERSAL_PAIRS:
        code, text = science_report.reversal_reading(data["verdicts"].get(noisy_key), LV[learned_key],
                                                     pairs[pair]["kinds"].get("biased"))
        assert (pairs[pair]["reading"], pairs[pair]["text"]) == (code, text)
        assert pairs[pair]["kinds"]["learned"] == LV[learned_key]
    assert pairs["sft_minus_base"]["kinds"]["noisy"] == data["verdicts"]["sft_bok"]
    # RESULTS.md: the learned claims in the verdicts table, the section with the reading and both tables
    doc = results_doc.write(data, str(tmp_path / "RESULTS.md"), "Not run.", 1.0)
    head, section = doc.split("## The Bo8 reversal against the verifier's kind")
    assert "## Verdicts on the paper's findings" in head and "under a learned verifier" in head
    for v in LV.values():
        assert science_report.fmt(v, signed=True, seeds=True) + ", 8 seeds" in head
        assert f"-> **{v['verdict']}** (family \"learned\")" in head
    assert "**Reading.**" in section and all(p["text"] in section for p in pairs.values())
    assert "| 1 | 2048 | 20.0 | 86.0 |" in section and "pick correct (Bo8) %" in section
    assert "| BoN-RLB(P) (N'=8) | 8 |" in section
    # a clean clone: no runs/, only the compact data
    again = science_report.report(str(tmp_path / "no-runs"), ["base", *LEARNED_ARMS], seeds,
                                  str(tmp_path / "b" / "science"), _meta(LEARNED_ARMS), data_dir=str(data_dir))
    assert again["learned_verdicts"] == LV and again["reversal"] == rev


def test_results_doc_reads_the_learned_findings():
    """Pending while any of a finding's claims is (the fewest seeds in); the joint reading when both pairs agree."""
    done, pending = _claim("supported"), _claim("pending", pending=True, seeds_in=3)
    assert results_doc._learned_overall([done, pending]) == "pending: 3 of 8 seeds in (1, 2, 3)"
    assert results_doc._learned_overall([done, done]) == "supported"
    rev = {"pairs": {"a": {"reading": "persists"}, "b": {"reading": "persists"}}}
    assert results_doc._joint_reading(rev, 8) == " In short: both Bo8 reversals persist under a learned verifier."
    rev["pairs"]["b"]["reading"] = "pending"
    assert results_doc._joint_reading(rev, 8) == ""


def test_committed_compact_data_alone_regenerates_the_report(tmp_path, monkeypatch, capsys):
    """The per-run .npz files (science_data) are what gets committed: a clean clone without runs/ gets the same
    report, and pass@k read back from them is bitwise the evaluation's."""
    monkeypatch.setattr(science_report, "N_BOOT", 100)
    runs = tmp_path / "runs"
    for arm, p in (("base", 0.3), ("rl", 0.2), ("bon_rlb_p", 0.4), ("bon_rl_s", 0.3)):
        for s in (1, 2):
            _fake_eval(runs / f"{arm}-seed{s}", p, 10 * s + len(arm))
            if arm == "bon_rl_s":  # an arm that trains the same policy as another: its evaluation is equal
                shutil.copytree(runs / f"{arm}-seed{s}", runs / f"pass_at_k-seed{s}")
                # ... even when only one of them was evaluated under the learned verifier too
                _fake_eval(runs / f"{arm}-seed{s}", p, 10 * s + len(arm), lbo=(0.5, s))
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
    # a rerun whose numbers differ from the reported copy is left out: flagged, naming the arrays, the copy kept
    reported = science_data.load(str(data_dir / "rl-seed1.npz"))
    _fake_eval(runs / "rl-seed1", 0.9, 7)
    later = os.path.getmtime(data_dir / "rl-seed1.npz") + 1
    os.utime(runs / "rl-seed1" / "eval.json", (later, later))
    capsys.readouterr()
    assert science_report.load(str(runs), str(data_dir), "rl", 1, science.KS) == reported
    err = capsys.readouterr().err
    assert "warning: " in err and "rl-seed1.npz" in err and "0.5/correct" in err and "left out" in err


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


def test_a_rerun_on_another_machine_is_another_realization_kept_apart(tmp_path, monkeypatch, capsys):
    """The learned group re-evaluates the study's runs under the learned verifier. On the machine that made them
    that adds lbo@k to the same per-prompt numbers; on another machine the same configs give another realization
    (another warm start, so every run of the seed differs). Such runs must never replace the reported ones, nor be
    compared with them within a seed: they go whole to the learned group's data set (science-runs/learned/), which
    is what the learned claims read; the study's verdicts keep their runs."""
    monkeypatch.setattr(science_report, "N_BOOT", 100)
    first, second = tmp_path / "runs-a", tmp_path / "runs-b"
    data_dir = str(tmp_path / "science-runs")
    arms = ["base", "rl", "bon_rlb_p"]
    for arm, p in (("base", 0.3), ("rl", 0.25), ("bon_rlb_p", 0.4)):
        for s in (1, 2):
            _fake_eval(first / f"{arm}-seed{s}", p, 10 * s + len(arm))
    st = science_report.Study(str(first), arms, [1, 2], _meta(arms[1:]), data_dir)
    reported = {key: science_data.load(path)[0] for key, path in st.paths.items()}
    # the other machine: seed 1 reproduced bitwise (re-evaluated: lbo@k added), seed 2 another realization, and SFT
    # (never in the study at seed 2) trained from that other warm start
    for arm, p in (("base", 0.3), ("rl", 0.25), ("bon_rlb_p", 0.4), ("sft", 0.35)):
        for s in (1, 2):
            if arm == "sft" and s == 1:
                continue
            gen_seed = 10 * s + len(arm) + (500 if s == 2 else 0)
            _fake_eval(second / f"{arm}-seed{s}", p, gen_seed, lbo=(0.5, 100 * s + len(arm)))
    capsys.readouterr()
    arms = ["base", "rl", "bon_rlb_p", "sft"]
    st = science_report.Study(str(second), arms, [1, 2], _meta(arms[1:]), data_dir)
    err = capsys.readouterr().err
    assert "warning" not in err and err.count("another realization of seed 2") == 4, err
    # the study's data set: seed 2 as reported, seed 1 the same numbers with lbo@k added, no SFT at seed 2
    for (arm, s), ev in reported.items():
        now = st.evals[(arm, s)]["temps"]["1"]
        assert all(now[k] == v for k, v in ev["temps"]["1"].items()), (arm, s)
        assert ("lbo@8" in now) == (s == 1)
    assert st.evals[("sft", 2)] is None and st.have["sft"] == []
    other = tmp_path / "science-runs" / science_report.LEARNED_DIR
    assert sorted(os.listdir(other)) == sorted(f"{a}-seed2.npz" for a in arms)
    # the learned group's data set: seed 1 from the study's copies, seed 2 whole from learned/
    lst = science_report.Study(str(second), arms, [1, 2], _meta(arms[1:]), data_dir, learned=True)
    assert lst.have == {a: [1, 2] if a != "sft" else [2] for a in arms}
    assert all(os.path.dirname(lst.paths[(a, 2)]) == str(other) for a in arms)
    assert all(os.path.dirname(lst.paths[(a, 1)]) == data_dir for a in arms if a != "sft")
    with open(second / "rl-seed2" / "eval.json") as f:
        rerun = json.load(f)
    assert lst.evals[("rl", 2)]["temps"]["1"]["pass@8"] == rerun["temps"]["1"]["pass@8"]
    assert st.evals[("rl", 2)]["temps"]["1"]["pass@8"] != rerun["temps"]["1"]["pass@8"]
    assert science_report.learned_data(lst, data_dir) == {"1": "study", "2": "rerun"}
    # a clean clone reads both data sets back the same; reading again changes nothing and says nothing
    for learned, study in ((False, st), (True, lst)):
        again = science_report.Study(str(tmp_path / "no-runs"), arms, [1, 2], _meta(arms[1:]), data_dir, learned)
        assert again.evals == study.evals
    science_report.Study(str(second), arms, [1, 2], _meta(arms[1:]), data_dir, learned=True)
    assert capsys.readouterr().err == ""
    # a third realization of a learned run is not taken either: its copy stays, a warning names it
    _fake_eval(second / "rl-seed2", 0.25, 999, lbo=(0.5, 7))
    later = os.path.getmtime(other / "rl-seed2.npz") + 1
    os.utime(second / "rl-seed2" / "eval.json", (later, later))
    science_report.load(str(second), data_dir, "rl", 2, science.KS, learned=True)
    err = capsys.readouterr().err
    assert "warning: " in err and "is another run than its copy" in err and "rl-seed2.npz" in err
    assert science_report.load(str(second), data_dir, "rl", 2, science.KS, learned=True)[0] == lst.evals[("rl", 2)]


def test_selection_reading_says_when_the_learned_verifier_is_worse_than_a_random_pick(tmp_path):
    """The reading of the selection table: worse than a random pick on which policies, and, with
    experiments/learned_selection.py's file beside the report, the within-prompt AUC against the pooled one."""
    def sel(pick, random):
        return {"seeds": [1], "mean": {"pick_correct": pick, "random_pick": random, "oracle_pick": 0.5,
                                       "accuracy": 0.8, "auc": 0.9, "fpr": 0.1, "fnr": 0.1}}
    labels = science.LABELS
    good = {"base": sel(0.3, 0.2), "rl": sel(0.4, 0.3)}
    assert science_report.worse_than_random(good) == []
    assert "beats a random pick on every policy" in science_report.selection_reading(good, labels, 8)
    bad = {"base": sel(0.14, 0.2), "rl": sel(0.4, 0.3)}
    assert science_report.worse_than_random(bad) == ["base"]
    text = science_report.selection_reading(bad, labels, 8)
    assert "worse than a random pick on 1 of 2 policies" in text and "base (warm start) 14.0 vs 20.0" in text
    rows = [{"seed": 2, "auc": 0.8, "auc_within": 0.5}, {"seed": 3, "auc": 0.9, "auc_within": 0.6},
            {"seed": 1, "left_out": "not cached"}]
    path = tmp_path / science_report.WITHIN_FILE
    path.write_text(json.dumps(rows))
    within = science_report.read_within(str(path))
    assert [r["seed"] for r in within] == [2, 3] and science_report.read_within(str(tmp_path / "none")) == []
    text = science_report.selection_reading(bad, labels, 8, within)
    assert "seeds 2, 3): pooled AUC 0.850, but within one prompt 0.550 (0.50, 0.60 per seed" in text
    assert science_report.selection_reading({}, labels, 8) == ""
    rev = {"pairs": {}, "selection": bad, "selection_reading": text, "calibration": {}}
    assert "picks worse than a random sample on 1 of 2 policies" in "\n".join(
        results_doc.reversal_section({"reversal": rev, "meta": {}}, labels, 8))
