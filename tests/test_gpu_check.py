"""benches/gpu_check.py, the one prepared command for a CUDA machine, checked on the CPU: the plan fits its budget,
the pre-flight's non-CUDA part, the time box and the report on a partial run (a failed and a timed-out step), and
every bench script at its toy size (`--cpu-smoke`), so API drift shows up before device time is spent."""
import json
import os
import sys

import pytest
import torch

BENCHES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benches")
sys.path.insert(0, BENCHES)

import gpu_check  # noqa: E402
import gpu_preflight  # noqa: E402
from benchkit import CaseLog, torch_lce_missing  # noqa: E402


def test_dry_run_plan_fits_the_budget(capsys):
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    plan = gpu_check.steps()
    assert sum(s.box_s for s in plan) + gpu_check.REPORT_RESERVE_S <= gpu_check.DEFAULT_BUDGET_S == 480
    for s in plan:
        assert s.name in out
    assert "fits the 480 s budget" in out


def test_plan_runs_the_gpu_only_tests_first(capsys):
    """Value per second: pre-flight, then `-m cuda`, then the device-generic kernel tests (every strategy,
    precision, the no-host-sync test), then the model tests, then the benches; no trainer runs in the tests."""
    plan = gpu_check.steps()
    kinds = [s.kind for s in plan]
    assert [s.name for s in plan[:4]] == ["preflight", "tests-cuda", "tests-kernels", "tests-model"]
    assert kinds.index("bench") > max(i for i, k in enumerate(kinds) if k == "tests")
    argv = {s.name: s.args for s in plan}
    assert argv["tests-cuda"][argv["tests-cuda"].index("-m", 2) + 1] == "cuda"
    for name in ("tests-kernels", "tests-model"):
        assert argv[name][argv[name].index("-m", 2) + 1] == "not cuda and not slow"
    tests = " ".join(" ".join(argv[n]) for n in ("tests-cuda", "tests-kernels", "tests-model"))
    for f in ("test_logprob_strategies.py", "test_precision.py", "test_objectives.py", "test_gpu_ready_kernels.py"):
        assert f in tests, f
    assert "test_train.py" not in tests  # exact-metric trainer tests stay on the CPU
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.index("tests-cuda") < out.index("tests-kernels") < out.index("bench_linear_logprobs.py")


def test_dry_run_only_and_skip(capsys):
    assert gpu_check.main(["--dry-run", "--only", "engine"]) == 0
    out = capsys.readouterr().out
    assert "bench_engine.py" in out and "gpu_preflight.py" in out and "bench_packing.py" not in out
    assert "skipped: left out by --only / --skip" in out
    assert gpu_check.main(["--dry-run", "--budget-s", "100"]) == 1  # the full plan does not fit 100 s
    assert "skipped: over the 100 s budget" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown steps"):
        gpu_check.main(["--dry-run", "--skip", "nonsense"])


def test_preflight_without_cuda(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    facts = gpu_preflight.collect()
    assert facts["cuda"] is False and facts["versions"]["torch"] == torch.__version__
    for name, info in facts["optional"].items():
        assert info["present"] or info["skips"], name  # every missing package says what it skips
    assert facts["optional"]["torch.nn.functional.linear_cross_entropy"]["present"] == (torch_lce_missing() is None)
    out = tmp_path / "pre.json"
    assert gpu_preflight.main(["--out", str(out)]) == 2  # fail fast: CUDA is required by default
    assert "CUDA is not visible" in json.loads(out.read_text())["problem"]
    assert "CUDA is not visible" in capsys.readouterr().err
    assert gpu_preflight.main(["--no-require-cuda"]) == 0


def test_case_log_statuses_and_deadline(tmp_path):
    path = tmp_path / "cases.jsonl"
    book = CaseLog(str(path), deadline_s=60)
    book.run({"case": "ok"}, lambda: {"ms": 2.0})
    book.run({"case": "skip"}, lambda: pytest.skip("liger not importable"))
    book.run({"case": "fail"}, lambda: 1 / 0)
    book.run({"case": "compile"}, lambda: {"ms": 1.0}, needs_s=120)  # would run past the deadline: not started
    statuses = [(r["case"], r["status"]) for r in _records(path)]
    assert statuses == [("ok", "ok"), ("skip", "skipped"), ("fail", "failed"), ("compile", "skipped")]
    assert book.records[1]["reason"] == "liger not importable" and "ZeroDivisionError" in book.records[2]["error"]
    assert "needs ~120 s" in book.records[3]["reason"] and book.exit_code() == 1


def test_steps_find_this_checkout(tmp_path):
    env, link = gpu_check.bonfast_env(str(tmp_path))
    assert gpu_check.ROOT in env["PYTHONPATH"].split(os.pathsep)
    assert link is None  # installed (editable) here: no temporary link is made


def _fake_step(name, box_s, code):
    return gpu_check.Step(name, box_s, f"fake {name}", "bench", ["-c", code])


def test_time_box_and_report_on_a_partial_run(tmp_path):
    """A step that fails and one that outlives its box: both reported, partial records kept, report written."""
    env = dict(os.environ)
    write = "open('{tmp}/{name}.jsonl', 'a').write('{{\"case\": 1, \"status\": \"ok\", \"ms\": 1.5}}\\n'); "
    failed = gpu_check.run_step(_fake_step("boom", 30, write + "raise SystemExit('boom: it broke')"),
                                30, str(tmp_path), env)
    assert failed["status"] == "failed" and failed["returncode"] == 1 and "boom: it broke" in failed["tail"]
    assert failed["records"] == [{"case": 1, "status": "ok", "ms": 1.5}]
    hang = write + "import time; print('waiting', flush=True); time.sleep(60)"
    slow = gpu_check.run_step(_fake_step("hang", 4, hang), 4, str(tmp_path), env)  # SIGINT at 3 s, SIGKILL at 4
    assert slow["status"] == "timed out" and 2.5 < slow["seconds"] < 7
    assert slow["records"] == [{"case": 1, "status": "ok", "ms": 1.5}] and "KeyboardInterrupt" in slow["tail"]

    junit = tmp_path / "tests-kernels.xml"
    junit.write_text('<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
                     '<testcase classname="tests.t" name="a"/>'
                     '<testcase classname="tests.t" name="b"><failure message="assert 1 == 2"/></testcase>'
                     '<testcase classname="tests.t" name="c"><skipped message="needs a CUDA GPU"/></testcase>'
                     '</testsuite></testsuites>')
    (tmp_path / "tests-kernels.log").write_text("...\n1 failed, 1 passed, 1 skipped in 2.0s\n")
    tests = gpu_check.summarise_tests(str(junit), str(tmp_path / "tests-kernels.log"))
    assert (tests["passed"], tests["failures"], tests["skipped"]) == (1, 1, 1)
    assert tests["skip_reasons"] == {"needs a CUDA GPU": 1} and "assert 1 == 2" in tests["failed"][0]

    report = {"card": "NVIDIA H200", "slug": gpu_check.card_slug("NVIDIA H200"), "date": "2026-01-02",
              "started_utc": "2026-01-02 03:04:05", "budget_s": 480, "argv": "python benches/gpu_check.py",
              "wall_s": 12.0, "peak_bf16_tflops": gpu_check.peak_for("NVIDIA H200"),
              "preflight": {"card": "NVIDIA H200", "capability": "9.0", "python": "3.12", "versions": {"torch": "2.11"},
                            "optional": {"liger_kernel": {"present": False, "skips": "the 'liger' provider"}}},
              "steps": [{"name": "tests-kernels", "status": "failed", "seconds": 3, "box_s": 95, "tests": tests,
                         "reason": "exit code 1", "tail": "1 failed"},
                        failed, slow, {"name": "engine", "status": "skipped", "reason": "budget: 3 s left"}]}
    assert report["slug"] == "nvidia-h200" and report["peak_bf16_tflops"] == 989.0
    stem = gpu_check.write_report(report, str(tmp_path / "results"))
    assert stem.endswith("gpu-nvidia-h200-2026-01-02")
    assert json.loads(open(stem + ".json").read())["steps"][2]["status"] == "timed out"
    md = open(stem + ".md").read()
    for text in ("| boom | failed |", "| hang | timed out |", "| engine | skipped |", "budget: 3 s left",
                 "boom: it broke", "killed at its", "tests.t::b", "| liger_kernel | no | the 'liger' provider |"):
        assert text in md, text
    assert gpu_check.write_report(report, str(tmp_path / "results")).endswith("-2")  # never overwrites


def _records(path):
    return [json.loads(line) for line in open(path)]


def _smoke(module, tmp_path, *args):
    out = tmp_path / f"{module.__name__}.jsonl"
    assert module.main(["--cpu-smoke", "--out", str(out), *args]) == 0
    records = _records(out)
    assert records and not [r for r in records if r["status"] == "failed"]
    return records


def test_head_benches_cpu_smoke(tmp_path):
    import bench_bon_loss
    import bench_linear_logprobs
    missing = torch_lce_missing()  # torch 2.11 has no F.linear_cross_entropy: skipped with the reason, not an error
    assert bench_linear_logprobs.provider_missing("torch_lce", "cpu") == missing
    providers = "triton,naive,bonfast_torch" + (",torch_lce" if missing else "")  # (its tiny run takes ~8 s)
    records = _smoke(bench_linear_logprobs, tmp_path, "--modes", "full", "--rounds", "1", "--providers", providers)
    by = {r["provider"]: r for r in records}
    assert by["naive"]["status"] == "ok" and by["naive"]["flop_count"] == "8TDV" and by["naive"]["tflops"] > 0
    assert by["triton"]["status"] == "skipped"  # CUDA only
    if missing:
        assert by["torch_lce"]["status"] == "skipped" and by["torch_lce"]["reason"] == missing
    records = _smoke(bench_bon_loss, tmp_path, "--modes", "full", "--rounds", "1", "--providers",
                     "triton,naive,bonfast_torch")
    ok = {(r["form"], r["provider"]) for r in records if r["status"] == "ok"}
    assert {("plain", "bonfast_torch"), ("clipped_k3", "bonfast_torch"), ("plain", "naive")} <= ok


def test_prefix_attention_and_packing_cpu_smoke(tmp_path):
    import bench_packing
    import bench_prefix_attention
    records = _smoke(bench_prefix_attention, tmp_path)
    assert {r["provider"] for r in records} == {"prefix_torch", "naive_sdpa", "summary"}
    records = _smoke(bench_packing, tmp_path)
    assert [r["speedup_packed_vs_duplicated"] > 0 for r in records if r["provider"] == "summary"] == [True, True]


def test_engine_and_train_step_cpu_smoke(tmp_path):
    import bench_engine
    import bench_train_step
    (engine,) = _smoke(bench_engine, tmp_path)
    assert engine["bonfast_tokens"] == engine["transformers_tokens"] == 2 * 4 * 4
    (step,) = _smoke(bench_train_step, tmp_path)
    assert [s["step"] for s in step["steps"]] == [1, 2] and step["finite_loss"]


def test_train_step_failure_is_recorded(tmp_path, monkeypatch):
    import bench_train_step

    import bonfast.cli

    def boom(argv):
        raise RuntimeError("boom in bonfast train")
    monkeypatch.setattr(bonfast.cli, "main", boom)
    out = tmp_path / "train.jsonl"
    assert bench_train_step.main(["--cpu-smoke", "--out", str(out)]) == 1
    (record,) = _records(out)
    assert record["status"] == "failed" and "boom in bonfast train" in record["error"] and record["steps"] == []
