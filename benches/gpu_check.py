"""One prepared command for a CUDA machine: pre-flight, the CUDA and device-generic tests, time-boxed benches, a report.

Ordered for value per second of a short GPU window: the pre-flight, then the tests only a GPU can run (`-m cuda`:
compiled kernels at real sizes, CUDA attention backends, the no-host-sync check), then the device-generic kernel
tests (every strategy, precision, the launch guard, on CUDA tensors), then the model-side tests, then the benches.
The trainer's end-to-end tests are left to the CPU suite (their resume test compares metrics exactly, which needs
deterministic kernels); `bench_train_step` runs the trainer on the GPU.

    python benches/gpu_check.py                     # everything, in <= 480 s (8 minutes) on an H100 / H200
    python benches/gpu_check.py --dry-run           # the plan, each step's time box and the total (any machine)
    python benches/gpu_check.py --only engine,train_step --budget-s 200
    python benches/gpu_check.py --cpu-smoke         # every bench at toy size on the CPU (no tests): the harness

Each step is a subprocess with its own time box (SIGINT shortly before the box ends, so pytest still writes its
report and a bench keeps the cases it finished; SIGKILL to its process group at the box), so one hang cannot eat
the window. Bench scripts write one JSON line per case as soon as it ends and start no case after their own
deadline. Whatever happens, benches/results/gpu-<card>-<date>.json and .md are written at the end (try/finally),
with every step's status: ok, failed (exit code and last lines), timed out (partial results kept), or skipped
(with the reason). Nothing is downloaded; the models are random and built in code.

bonfast should be installed (`pip install -e ".[train,dev]"` on a machine with CUDA torch); where it is not, the
steps run from this checkout (PYTHONPATH), with a temporary link bonfast/kernels -> kernels that is removed at the end.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BUDGET_S = 480
GRACE_S = 8          # SIGINT this long before a box ends (a quarter of a short box); SIGKILL at the end
DEADLINE_MARGIN_S = 15  # a bench starts no new case this close to its box (a quarter of a short box)
REPORT_RESERVE_S = 5
# bf16 dense peak TFLOP/s (NVIDIA datasheets), for the "% of peak" column
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "A100": 312.0, "B200": 2250.0,
                    "L40S": 362.0}
KERNEL_TESTS = ["tests/test_linear_logprobs.py", "tests/test_bon_loss.py", "tests/test_prefix_attention.py",
                "tests/test_logprob_strategies.py", "tests/test_gpu_ready_kernels.py"]
TEST_FILES = {  # (marker expression, files)
    "tests-cuda": ("cuda", KERNEL_TESTS + ["tests/test_attention.py", "tests/test_packing.py",
                                           "tests/test_objectives.py"]),
    "tests-kernels": ("not cuda and not slow", KERNEL_TESTS + ["tests/test_precision.py"]),
    "tests-model": ("not cuda and not slow", ["tests/test_packing.py", "tests/test_engine.py", "tests/test_model.py",
                                              "tests/test_attention.py"]),
}


@dataclass
class Step:
    name: str
    box_s: int
    what: str
    kind: str                      # "preflight" | "tests" | "bench"
    args: list[str] = field(default_factory=list)  # after the interpreter; {tmp} = the run's scratch folder


def steps(smoke: bool = False) -> list[Step]:
    """The plan, in order. Time boxes sum to <= DEFAULT_BUDGET_S."""
    smoke_flag = ["--cpu-smoke"] if smoke else []
    pre = ["benches/gpu_preflight.py", "--out", "{tmp}/preflight.json"] + (["--no-require-cuda"] if smoke else [])

    def bench(script, *args):
        return [f"benches/{script}", *args, "--out", "{tmp}/{name}.jsonl", *smoke_flag]

    def tests(name):
        marker, files = TEST_FILES[name]
        return ["-m", "pytest", "-q", "-rfE", "-m", marker, "-p", "no:cacheprovider",
                "--junitxml={tmp}/" + name + ".xml", *files]

    return [
        Step("preflight", 30, "card, driver, versions, optional packages; one bf16 matmul", "preflight", pre),
        Step("tests-cuda", 100, "pytest -m cuda: the CUDA-only tests (large-shape kernels, flex / flash / xformers "
             "attention, packing on CUDA, no host sync in the objectives, two GPUs)", "tests", tests("tests-cuda")),
        Step("tests-kernels", 70, 'pytest -m "not cuda and not slow": every kernel and strategy (gemm, fused, tiles), '
             "precision, device guard and GEMM-work tests on CUDA tensors", "tests", tests("tests-kernels")),
        Step("tests-model", 30, 'pytest -m "not cuda and not slow": packing, engine, model, attention',
             "tests", tests("tests-model")),
        Step("linear_logprobs", 50, "log_softmax(x W^T)[y] fwd / bwd / full at (T, D, V) = (8192, 4096, 128256) and "
             "(8192, 2048, 151936) bf16: triton, eager, torch LCE, Liger, CCE, TRL's chunked head, chunked torch, "
             "torch.compile", "bench",
             bench("bench_linear_logprobs.py", "--deadline-s", "{deadline}")),
        Step("bon_loss", 35, "the BoN loss head (plain and clipped + KL) fwd / bwd / full at (8192, 2048, 151936) "
             "bf16: triton, eager, torch LCE, chunked torch, torch.compile", "bench",
             bench("bench_bon_loss.py", "--shapes", "8192,2048,151936,bfloat16", "--deadline-s", "{deadline}")),
        Step("prefix_attention", 20, "shared-prefix decode attention vs per-sample SDPA over duplicated K/V, bf16",
             "bench", bench("bench_prefix_attention.py", "--deadline-s", "{deadline}")),
        Step("engine", 45, "Engine.sample vs transformers generate, random Qwen2.5-0.5B shape, bf16, "
             "4 prompts x 512, n=16, 128 new tokens", "bench", bench("bench_engine.py", "--deadline-s", "{deadline}")),
        Step("packing", 35, "packed vs duplicated prompts: decoder body and full step, Qwen2.5-0.5B shape, bf16, "
             "G=2 P=512 n=16 R=128", "bench", bench("bench_packing.py", "--deadline-s", "{deadline}")),
        Step("train_step", 60, "`bonfast train`, 2 steps, random Qwen2.5-0.5B-shaped checkpoint (bf16 precision "
             "where the config has the field)", "bench", bench("bench_train_step.py")),
    ]


def select(plan: list[Step], only: str | None, skip: str | None) -> tuple[list[Step], dict[str, str]]:
    """Steps to run and {name: reason} for the ones left out (pre-flight runs unless --skip names it)."""
    names = [s.name for s in plan]
    chosen = set(names)
    for opt, value in (("--only", only), ("--skip", skip)):
        listed = [x for x in (value or "").split(",") if x]
        unknown = set(listed) - set(names)
        if unknown:
            raise SystemExit(f"gpu_check: {opt}: unknown steps {sorted(unknown)}; expected names from {names}")
        if opt == "--only" and listed:
            chosen = set(listed) | {"preflight"}
        if opt == "--skip":
            chosen -= set(listed)
    left_out = {n: "left out by --only / --skip" for n in names if n not in chosen}
    return [s for s in plan if s.name in chosen], left_out


def grace(box_s: float) -> float:
    return min(GRACE_S, box_s / 4)


def command(step: Step, tmp: str, box_s: float) -> list[str]:
    deadline = f"{max(box_s - grace(box_s) - min(DEADLINE_MARGIN_S, box_s / 4), 1):.0f}"
    return [sys.executable] + [a.format(tmp=tmp, name=step.name, deadline=deadline) for a in step.args]


def box_for(step: Step, left_s: float) -> float | None:
    """The step's box given the seconds left, or None when too little is left to start it."""
    box = min(step.box_s, left_s)
    return box if box >= max(10, step.box_s / 3) else None


def print_plan(plan: list[Step], left_out: dict, budget_s: float, out_dir: str) -> None:
    print(f"bonfast GPU check plan: budget {budget_s:.0f} s, interpreter {sys.executable}")
    print(f"results: {os.path.relpath(out_dir, ROOT)}/gpu-<card>-<date>.json and .md (written even if a step fails)")
    print(f"  {'step':<17}{'box s':>6}  what")
    used = 0.0
    for s in plan:
        box = box_for(s, budget_s - used - REPORT_RESERVE_S)  # if every earlier step used its whole box
        if box is None:
            print(f"  {s.name:<17}{'-':>6}  skipped: over the {budget_s:.0f} s budget")
            continue
        used += box
        print(f"  {s.name:<17}{box:>6.0f}  {s.what}")
        print(f"  {'':<23}$ python " + shlex.join(command(s, "<tmp>", box)[1:]))
    for name, reason in left_out.items():
        print(f"  {name:<17}{'-':>6}  skipped: {reason}")
    total = sum(s.box_s for s in plan)
    if total + REPORT_RESERVE_S <= budget_s:
        print(f"  {'total':<17}{total:>6}  + {REPORT_RESERVE_S} s for the report: fits the {budget_s:.0f} s budget")
    else:
        print(f"  {'total':<17}{used:>6.0f}  of {total} s planned + {REPORT_RESERVE_S} s for the report: the plan "
              f"EXCEEDS the {budget_s:.0f} s budget; the steps marked skipped would not run")


# ------------------------------------------------------------------------------------------------------------
# running a step


def run_boxed(argv: list[str], box_s: float, log_path: str, env: dict) -> tuple[int | None, bool, float]:
    """Run argv in its own process group with a time box: (returncode, timed_out, seconds)."""
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(box_s - grace(box_s), 1))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc, signal.SIGINT)  # pytest writes its junit report; benches keep finished cases
            try:
                proc.wait(timeout=grace(box_s))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        except BaseException:  # Ctrl-C of gpu_check itself: take the step's process group down with it
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
            raise
    return proc.returncode, timed_out, time.monotonic() - t0


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the process group this script started for `proc` (its pid is the group id), never any other."""
    if proc.pid > 1:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass


def tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def read_records(path: str) -> list[dict]:
    """The JSON lines a bench wrote (a line cut off by a kill is dropped)."""
    out = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def summarise_tests(junit_path: str, log_path: str) -> dict:
    """Counts, failed test ids and the most common skip reasons from pytest's junit XML (and its last line)."""
    out: dict = {}
    summary = [line.strip() for line in tail(log_path, 60).splitlines()
               if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    if summary:
        out["summary_line"] = summary[-1]
    if not os.path.exists(junit_path):
        out["error"] = "no junit report (pytest was killed before writing it)"
        return out
    try:
        root = ET.parse(junit_path).getroot()
    except ET.ParseError as e:
        out["error"] = f"unreadable junit report: {e}"
        return out
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = list(suite.iter("testcase"))
    failed, reasons = [], {}
    for c in cases:
        if c.find("failure") is not None or c.find("error") is not None:
            bad = c.find("failure") if c.find("failure") is not None else c.find("error")
            failed.append(f"{c.get('classname')}::{c.get('name')}: {(bad.get('message') or '')[:200]}")
        skipped = c.find("skipped")
        if skipped is not None:
            reason = (skipped.get("message") or "").strip()[:120]
            reasons[reason] = reasons.get(reason, 0) + 1
    out.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    out["passed"] = out["tests"] - out["failures"] - out["errors"] - out["skipped"]
    out["failed"] = failed
    out["skip_reasons"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:10])
    return out


def run_step(step: Step, box_s: float, tmp: str, env: dict) -> dict:
    argv = command(step, tmp, box_s)
    log = os.path.join(tmp, f"{step.name}.log")
    print(f"[{step.name}] box {box_s:.0f} s: " + " ".join(argv[1:]), flush=True)
    rc, timed_out, seconds = run_boxed(argv, box_s, log, env)
    result = {"name": step.name, "what": step.what, "box_s": round(box_s), "seconds": round(seconds, 1),
              "returncode": rc, "command": " ".join(argv[1:])}
    if step.kind == "tests":
        result["tests"] = summarise_tests(os.path.join(tmp, f"{step.name}.xml"), log)
    if step.kind == "bench":
        result["records"] = read_records(os.path.join(tmp, f"{step.name}.jsonl"))
    if step.kind == "preflight" and os.path.exists(os.path.join(tmp, "preflight.json")):
        with open(os.path.join(tmp, "preflight.json")) as f:
            result["facts"] = json.load(f)
    if timed_out:
        result["status"] = "timed out"
        result["reason"] = f"killed at its {box_s:.0f} s box; partial results kept"
    elif rc == 0:
        result["status"] = "ok"
    else:
        result["status"] = "failed"
        result["reason"] = f"exit code {rc}"
    if result["status"] != "ok":
        result["tail"] = tail(log)
    detail = result.get("tests", {}).get("summary_line") or (f"{len(result['records'])} cases"
                                                             if "records" in result else "")
    print(f"[{step.name}] {result['status']} in {seconds:.1f} s" + (f": {detail}" if detail else ""), flush=True)
    if result["status"] != "ok":
        print("    " + result["tail"].rstrip().replace("\n", "\n    "), flush=True)
    return result


def bonfast_env(tmp: str) -> tuple[dict, str | None]:
    """The steps' environment; where bonfast.kernels is not importable, a temporary link makes the checkout usable.
    Returns (env, the link to remove afterwards or None)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    probe = subprocess.run([sys.executable, "-c", "import importlib.util as u; import bonfast; "
                            "print(u.find_spec('bonfast.kernels') is not None)"],
                           cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() == "True":
        return env, None
    link = os.path.join(ROOT, "bonfast", "kernels")
    if not os.path.lexists(link):
        os.symlink(os.path.join("..", "kernels"), link)
        print(f"gpu_check: bonfast is not installed here; running from the checkout (temporary link {link})")
        return env, link
    return env, None


# ------------------------------------------------------------------------------------------------------------
# the report


def card_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-card"


def peak_for(card: str) -> float | None:
    up = card.upper()
    return next((v for k, v in sorted(PEAK_BF16_TFLOPS.items(), key=lambda kv: -len(kv[0])) if k in up), None)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v, separators=(",", ":")).replace("|", "/")
    return str(v).replace("|", "/").replace("\n", " ")


def records_table(records: list[dict]) -> list[str]:
    drop = {"bench", "device", "torch"}
    cols = []
    for r in records:
        cols += [k for k in r if k not in drop and k not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in cols) + " |" for r in records]
    return lines


def write_report(report: dict, out_dir: str) -> str:
    """benches/results/gpu-<card>-<date>.json and .md (a -2, -3 suffix when that name exists); returns the stem."""
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"gpu-{report['slug']}-{report['date']}")
    k = 2
    while os.path.exists(stem + ".json") or os.path.exists(stem + ".md"):
        stem = os.path.join(out_dir, f"gpu-{report['slug']}-{report['date']}-{k}")
        k += 1
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    return stem


def markdown(report: dict) -> str:
    facts = report.get("preflight") or {}
    v = facts.get("versions", {})
    lines = [f"# bonfast GPU check: {report['card']} ({report['date']})", "",
             f"Started {report['started_utc']} UTC; {report['wall_s']:.0f} s of a {report['budget_s']:.0f} s budget; "
             f"`{report['argv']}`.", ""]
    if "capability" in facts:
        lines.append(f"Card: {facts.get('card')}, compute capability {facts['capability']}, {facts.get('memory_gib')} "
                     f"GiB, {facts.get('sm_count')} SMs, driver {facts.get('driver')}, "
                     f"bf16 dense peak {report.get('peak_bf16_tflops') or '?'} TFLOP/s.")
    git = facts.get("git") or {}
    commit = f"{(git.get('commit') or '?')[:12]}{' + local changes' if git.get('dirty') else ''}"
    lines.append("Versions: python " + str(facts.get("python")) + ", " +
                 ", ".join(f"{k} {val}" for k, val in v.items()) + f"; bonfast at git {commit}.")
    opt = facts.get("optional", {})
    if opt:
        lines += ["", "| optional | present | version / what runs without it |", "|---|---|---|"]
        lines += [f"| {k} | {'yes' if i['present'] else 'no'} | {i.get('version') or i.get('skips', '')} |"
                  for k, i in opt.items()]
    lines += ["", "## Steps", "", "| step | status | seconds / box | detail |", "|---|---|---|---|"]
    for s in report["steps"]:
        t = s.get("tests", {})
        detail = t.get("summary_line") or s.get("reason", "")
        if "records" in s:
            counts = {}
            for r in s["records"]:
                counts[r.get("status")] = counts.get(r.get("status"), 0) + 1
            detail = (detail + "; " if detail else "") + ", ".join(f"{n} {k}" for k, n in counts.items())
        lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', 0)} / {s.get('box_s', '-')} | "
                     f"{_cell(detail)} |")
    for s in report["steps"]:
        if s["status"] == "skipped":
            continue
        lines += ["", f"## {s['name']}: {s['status']}", "", s.get("what", "")]
        t = s.get("tests")
        if t:
            lines += ["", "```", json.dumps({k: t[k] for k in t if k not in ("failed",)}, indent=1), "```"]
            if t.get("failed"):
                lines += ["", "Failed:"] + [f"- `{x}`" for x in t["failed"][:50]]
        if s.get("records"):
            lines += [""] + records_table(s["records"])
        if s.get("tail") and s["status"] != "ok":
            lines += ["", "Last lines:", "", "```", s["tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def add_peak_fraction(result: dict, peak: float | None) -> None:
    for r in result.get("records", []):
        if peak and isinstance(r.get("tflops"), (int, float)):
            r["pct_bf16_peak"] = round(100 * r["tflops"] / peak, 1)


# ------------------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan with its time boxes and exit")
    ap.add_argument("--only", default=None, help="comma list of steps to run (pre-flight always runs)")
    ap.add_argument("--skip", default=None, help="comma list of steps to leave out")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock budget for all steps")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"), help="folder for the report")
    ap.add_argument("--cpu-smoke", action="store_true", help="every bench at toy size on the CPU, no tests")
    args = ap.parse_args(argv)
    plan, left_out = select(steps(args.cpu_smoke), args.only, args.skip)
    if args.cpu_smoke:
        left_out.update({s.name: "--cpu-smoke runs no tests" for s in plan if s.kind == "tests"})
        plan = [s for s in plan if s.kind != "tests"]
    if args.dry_run:
        print_plan(plan, left_out, args.budget_s, args.out)
        return 0 if sum(s.box_s for s in plan) + REPORT_RESERVE_S <= args.budget_s else 1

    t0 = time.monotonic()
    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="bonfast-gpu-check-")
    report = {"card": "unknown card", "slug": "unknown-card", "date": started.strftime("%Y-%m-%d"),
              "started_utc": started.strftime("%Y-%m-%d %H:%M:%S"), "budget_s": args.budget_s,
              "argv": " ".join(["python benches/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "scratch": tmp, "preflight": None, "steps": [], "wall_s": 0.0}
    link = None
    try:
        env, link = bonfast_env(tmp)
        stop = None  # reason every later step is skipped
        for step in plan:
            left = args.budget_s - (time.monotonic() - t0) - REPORT_RESERVE_S
            box = box_for(step, left)
            if stop or box is None:
                reason = stop or f"budget: {max(left, 0):.0f} s left of --budget-s {args.budget_s:.0f}"
                report["steps"].append({"name": step.name, "what": step.what, "status": "skipped", "reason": reason})
                print(f"[{step.name}] skipped: {reason}", flush=True)
                continue
            result = run_step(step, box, tmp, env)
            if step.kind == "preflight":
                facts = result.pop("facts", None) or {}
                report["preflight"] = facts
                if facts.get("card"):
                    report["card"], report["slug"] = facts["card"], card_slug(facts["card"])
                    report["peak_bf16_tflops"] = peak_for(facts["card"])
                elif args.cpu_smoke:
                    report["card"], report["slug"] = "CPU smoke run", "cpu-smoke"
                if result["status"] != "ok":
                    stop = "pre-flight failed: " + (facts.get("problem") or result.get("reason", ""))
            add_peak_fraction(result, report.get("peak_bf16_tflops"))
            report["steps"].append(result)
        for name, reason in left_out.items():
            report["steps"].append({"name": name, "status": "skipped", "reason": reason})
    finally:
        if link is not None and os.path.islink(link):
            os.remove(link)
        report["wall_s"] = round(time.monotonic() - t0, 1)
        stem = write_report(report, args.out)
        logs = [f for f in os.listdir(tmp) if f.endswith(".log")]
        if logs:  # each step's full output, next to the report
            os.makedirs(stem + "-logs", exist_ok=True)
            for f in logs:
                shutil.copy(os.path.join(tmp, f), os.path.join(stem + "-logs", f))
        print(f"gpu_check: wrote {stem}.json and {stem}.md, step logs in {stem}-logs/ ({report['wall_s']:.0f} s)",
              flush=True)
    bad = [s["name"] for s in report["steps"] if s["status"] in ("failed", "timed out")]
    if bad:
        print(f"gpu_check: not ok: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
