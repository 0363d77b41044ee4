"""What a user meets at the command line: one-line errors (exit 2), run-directory safety, Ctrl-C, `bonfast eval`,
`bonfast bench`, --help, and the report. In-process through `bonfast.cli.main` (a subprocess costs seconds here)."""
import json
import os
import shutil
import signal

import pytest

from bonfast import cli
from bonfast.config import TrainConfig

TINY = dict(tiny_dim=16, tiny_layers=1, tiny_heads=2, sft_steps=4, sft_batch=8, steps=2, prompts_per_step=2, n=2,
            n_bon=2, max_new_tokens=4, eval_prompts=6, eval_n=2, eval_ks=(1, 2), task_levels=(1,), ckpt_every=1,
            progress=False)


def args(out_dir, **kw) -> list[str]:
    return [f"--{k}={cli.format_value(v)}" for k, v in {**TINY, "out_dir": str(out_dir), **kw}.items()]


def one_line_error(capsys, command="train") -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"bonfast {command}: error: ") and "Traceback" not in err and "usage:" not in err
    return err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished 2-step run written by `bonfast train` (in-process)."""
    root = tmp_path_factory.mktemp("cli")
    old = os.environ.get("BONFAST_CACHE")
    os.environ["BONFAST_CACHE"] = str(root / "cache")
    try:
        assert cli.main(["train", *args(root / "run")]) == 0
    finally:
        if old is None:
            os.environ.pop("BONFAST_CACHE")
        else:
            os.environ["BONFAST_CACHE"] = old
    return root / "run"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def snapshot(path) -> dict:
    return {name: (path / name).read_bytes() for name in sorted(os.listdir(path)) if (path / name).is_file()}


# ------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2


@pytest.mark.parametrize("argv,needle", [
    (["train", "--preset", "nonexistent"], "--preset"),
    (["train", "--n", "abc"], "expected an integer"),
    (["train", "--resume", "maybe"], "expected true or false"),
    (["train", "--eval_ks", "1,x"], "comma-separated list"),
    (["eval", "--method", "bon_magic"], "TrainConfig.method"),
])
def test_bad_values_one_line_without_usage(capsys, argv, needle):
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert needle in one_line_error(capsys, argv[0])


@pytest.mark.parametrize("where", ["proc", "file_in_path", "file"])
def test_invalid_out_dir(tmp_path, capsys, where):
    if where == "proc":
        out = "/proc/x"
        if not os.path.isdir("/proc") or os.access("/proc/x", os.F_OK):
            pytest.skip("no /proc here")
    else:
        (tmp_path / "f").write_text("")
        out = tmp_path / "f" / "run" if where == "file_in_path" else tmp_path / "f"
    assert cli.main(["train", *args(out)]) == 2
    assert "TrainConfig.out_dir" in one_line_error(capsys)


def test_task_the_tokenizer_cannot_encode_fails_before_work(tmp_path, capsys):
    import time
    t0 = time.time()
    assert cli.main(["train", *args(tmp_path / "run", task="svamp")]) == 2
    err = one_line_error(capsys)
    assert "TrainConfig.task" in err and "tokenizer" in err
    assert time.time() - t0 < 10  # no warm start (the check itself takes milliseconds)
    assert not (tmp_path / "run").exists()


def test_model_files(tmp_path, capsys):
    assert cli.main(["train", *args(tmp_path / "run", model=str(tmp_path / "missing"))]) == 2
    assert "TrainConfig.model" in one_line_error(capsys)
    gguf = tmp_path / "gguf_model"
    gguf.mkdir()
    (gguf / "model.Q4.gguf").write_bytes(b"")
    assert cli.main(["train", *args(tmp_path / "run", model=str(gguf))]) == 2
    err = one_line_error(capsys)
    assert "gguf_file" in err and "model.Q4.gguf" in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------------------
# the run directory


def test_existing_run_is_not_overwritten(run_dir, capsys):
    before = snapshot(run_dir)
    assert cli.main(["train", *args(run_dir)]) == 2
    err = one_line_error(capsys)
    assert "--resume true" in err and "--overwrite true" in err
    assert snapshot(run_dir) == before


def test_resume_and_overwrite_together_is_an_error(run_dir, capsys):
    assert cli.main(["train", *args(run_dir, resume=True, overwrite=True)]) == 2
    assert "TrainConfig.overwrite" in one_line_error(capsys)


def test_corrupt_or_incompatible_checkpoint_with_resume(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    ckpt = broken / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:50])  # truncated
    before = snapshot(broken)
    assert cli.main(["train", *args(broken, resume=True, steps=3)]) == 2
    assert "checkpoint.safetensors" in one_line_error(capsys)
    assert snapshot(broken) == before  # config.json not rewritten
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    before = snapshot(other)
    assert cli.main(["train", *args(other, resume=True, tiny_dim=32)]) == 2
    assert "TrainConfig.tiny_dim" in one_line_error(capsys)
    assert snapshot(other) == before


def test_overwrite_then_ctrl_c_then_resume(run_dir, tmp_path, capsys, monkeypatch):
    from bonfast import train as train_module
    out = tmp_path / "again"
    shutil.copytree(run_dir, out)
    real_step = train_module.rl_step

    def step_then_ctrl_c(run, step):
        record = real_step(run, step)
        if step == 0:
            os.kill(os.getpid(), signal.SIGINT)  # lands in the trainer's handler: finish the step, then stop
        return record

    monkeypatch.setattr(train_module, "rl_step", step_then_ctrl_c)
    assert cli.main(["train", *args(out, overwrite=True, steps=3)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "interrupted; stopped after step 1 of 3" in err[-1] and "--resume true" in err[-1]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1]  # the old run's records are gone
    assert json.load(open(out / "config.json"))["steps"] == 3
    from bonfast.checkpoint import checkpoint_step
    assert checkpoint_step(str(out))[1] == 1
    monkeypatch.setattr(train_module, "rl_step", real_step)
    assert cli.main(["train", *args(out, resume=True, steps=3)]) == 0
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert {"eval-before.json", "eval-after.json", "pass_at_k.png"} <= set(os.listdir(out))


# ------------------------------------------------------------------------------------------------------------
# bonfast eval


def test_eval_labels_the_checkpoint(run_dir, capsys):
    assert cli.main(["eval", "--out_dir", str(run_dir)]) == 0  # the run's config.json supplies its settings
    out = capsys.readouterr().out
    assert "checkpoint.safetensors (step 2)" in out and "step 2" in out and "before" not in out


def test_eval_refuses_a_directory_without_checkpoint(tmp_path, capsys):
    for out in (tmp_path / "typo", tmp_path):
        assert cli.main(["eval", *args(out)]) == 2
        assert "--base true" in one_line_error(capsys, "eval")
    assert not (tmp_path / "typo").exists() and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------------------
# --help, bench, report


def test_help_every_field_one_line_with_choices_and_input_format(capsys):
    from bonfast import tasks
    from bonfast.objectives import METHODS
    comments = cli._field_comments()
    missing = [f for f in TrainConfig.__dataclass_fields__ if not comments.get(f)]
    assert not missing, f"fields without a help comment in config.py: {missing}"
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in (*METHODS, *tasks.TASKS, "oracle", "noisy", "majority", "logprob"):
        assert name in text
    assert "(default: 1,2,4,8)" in text and "(1, 2" not in text and "(default: false)" in text


def test_bench_help_lists_suites_and_presets(capsys):
    assert cli.main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    for suite in cli.bench_suites():
        assert suite in out
    assert "tiny" in out and "cpu-small" in out and "examples:" in out


def test_bench_forwards_options(monkeypatch, capsys, tmp_path):
    calls = []

    def call(cmd, cwd, env):
        calls.append(cmd)
        for c in cmd:  # as pytest-benchmark would
            if c.startswith("--benchmark-json="):
                open(c.split("=", 1)[1], "w").write("{}")
        return 0
    monkeypatch.setattr(cli.subprocess, "call", call)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BONFAST_BENCH_SHAPES", raising=False)
    assert cli.main(["bench", "--co", "-q"]) == 0
    cmd = calls[-1]
    assert "python_files=bench_*.py" in cmd and cmd[-2:] == ["--co", "-q"] and "--shapes" in cmd
    argv = ["bench", "bon_loss", "benches/bench_packing.py", "--shapes", "cpu-small", "--", "-k", "x"]
    assert cli.main(argv) == 0
    cmd = calls[-1]
    assert cmd.count("--shapes") == 1 and cmd[-4:] == ["--shapes", "cpu-small", "-k", "x"]
    assert any(c.endswith("bench_bon_loss.py") for c in cmd) and any(c.endswith("bench_packing.py") for c in cmd)
    assert any(c.startswith("--benchmark-json=") for c in cmd) and "results in" in capsys.readouterr().out
    assert cli.main(["bench", "no_such_suite"]) == 2
    assert "unknown suite" in capsys.readouterr().err


def test_report_drops_bok_rows_equal_to_pass_and_plots_three_panels(run_dir, tmp_path):
    from bonfast.report import bok_is_pass, format_table, plot
    result = {"kind": "eval", "tag": "step 2", "n": 2, "prompts": 3, "method": "bon_rlb_p", "model": "tiny",
              "task": "arithmetic", "verifier": "oracle",
              "metrics": {"T=1": {f"{m}@{k}": {"mean": 0.5, "lo": 0.4, "hi": 0.6} for k in (1, 2)
                                  for m in ("pass", "bo", "maj")}}}
    assert bok_is_pass(result)
    table = format_table(result)
    assert not any(line.lstrip().startswith("bo@") and "%" in line for line in table.splitlines())  # no bo@k rows
    assert "pass@1 = bo@1" in table and "oracle" in table
    noisy = json.loads(json.dumps(result))
    noisy["verifier"] = "noisy"
    noisy["metrics"]["T=1"]["bo@2"]["mean"] = 0.45
    assert "bo@2" in format_table(noisy)
    for r in (result, noisy):
        assert os.path.getsize(plot(r, r, str(tmp_path / "p.png"))) > 0
