"""Every code block of README.md, executed or checked as written.

Python blocks run as written (the SmolLM2 one loads a 135M model: behind -m slow). Shell blocks are checked
command by command: `bash scripts/install.sh` must parse (`bash -n`), `.venv/bin/bonfast ...` lines are parsed by
the CLI and their config validated (a dry run: no training), `bench` lines build their pytest command without
running it, and `--help` lines run. Also: the README names every method, task, verifier and output file.
"""
import os
import re
import shlex
import subprocess

import pytest

from bonfast import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md")).read()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.S | re.M)]
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang in ("", "bash", "sh")]


def test_blocks_found_and_ci_markers_intact():
    assert len(PYTHON) >= 2 and len(SHELL) >= 3
    assert "<!-- main-command -->\n```\nbash scripts/install.sh && .venv/bin/bonfast train\n```" in README
    assert "<!-- test-command -->\n```\nbash scripts/install.sh && .venv/bin/python -m pytest -q\n```" in README


def _python_params():
    for i, code in enumerate(PYTHON):
        marks = [pytest.mark.slow] if "load_model(" in code else []  # a real 135M model: minutes on a busy CPU
        yield pytest.param(code, id=f"python{i}", marks=marks)


@pytest.mark.parametrize("code", list(_python_params()))
def test_python_block_runs_as_written(code, capsys):
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})


def _commands():
    for code in SHELL:
        for line in code.splitlines():
            line = line.split("  #")[0].strip()
            for command in filter(None, (c.strip() for c in line.split("&&"))):
                yield command


@pytest.mark.parametrize("command", sorted(set(_commands())))
def test_shell_command_works_as_written(command, tmp_path, monkeypatch, capsys):
    import torch
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))
    words = shlex.split(command)
    if words[:2] == ["bash", "scripts/install.sh"]:
        assert subprocess.run(["bash", "-n", os.path.join(ROOT, "scripts", "install.sh")]).returncode == 0
        return
    if words == [".venv/bin/python", "-m", "pytest", "-q"]:
        return  # the test command itself (this file runs under it)
    assert words[0] == ".venv/bin/bonfast", f"README command not checked by this test: {command}"
    argv = words[1:]
    if argv[0] == "bench":
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(cli.subprocess, "call", lambda cmd, cwd, env: 0)  # build the pytest command, time nothing
        assert cli.main(argv) == 0
        return
    parser = cli.build_parser()
    if "--help" in argv:
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 0
        return
    args = parser.parse_args(argv)
    cfg = cli.config_from_args(args)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        return  # parsed; validation needs a GPU
    cfg.validate()


def test_readme_lists_every_method_task_verifier_and_output_file():
    from bonfast import tasks
    from bonfast.objectives import OBJECTIVES
    for name in (*OBJECTIVES, *tasks.TASKS, *tasks.VERIFIERS):
        assert f"`{name}`" in README, name
    options = [f"{method}_{option}" for method, obj in OBJECTIVES.items() for option in obj.options]
    for flag in options:  # every objective option is a `bonfast train` flag the README names
        assert f"--{flag}" in README, flag
    for name in ("config.json", "metrics.jsonl", "eval-before.json", "eval-after.json", "pass_at_k.png",
                 "checkpoint.safetensors", "eval_pass_at_k.png", "--overwrite true", "--resume true", "gguf_file"):
        assert name in README, name
    for suite in cli.bench_suites():
        assert f"`{suite}`" in README, suite
