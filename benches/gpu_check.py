"""One offline check for a CUDA machine: the test suite with CUDA tests, then the GPU benches, then a report.

    pip install --no-deps --no-build-isolation -e .       # torch / triton / pytest / pytest-benchmark preinstalled
    python benches/gpu_check.py                           # full GPU shape set (see benches/conftest.py)
    python benches/gpu_check.py --quick                   # one mid-size shape, for a short device slot
    python benches/gpu_check.py --dry-run                 # print what would run (works on CPU)

Writes benches/results/gpu-<card>-<date>.json and .md: card, versions, date, the test summary, every benchmark
number (median ms, TFLOP/s, fraction of the card's bf16 dense peak, peak extra memory), and the comparisons with
the kernel goals of ANCHORS.md section G.1. Nothing is downloaded; nothing outside the repository is written.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = ["benches/bench_linear_logprobs.py", "benches/bench_bon_loss.py"]
QUICK_SHAPES = "4096,2048,32000,bfloat16"
# bf16 dense peak TFLOP/s by card (NVIDIA datasheets, as used in ANCHORS.md)
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "B200": 2250.0, "L40S": 362.0}
# ANCHORS.md G.1 (Triton, H100): forward >= 550 TF (2TDV), full >= 500 TF (8TDV), backward >= 510 TF (6TDV)
TARGET_TFLOPS = {"fwd": 550.0, "full": 500.0, "bwd": 510.0}
TARGET_SPEEDUP_FULL = 1.2  # full step vs torch eager (naive) at T >= 8192
TARGET_MEMORY_FACTOR = 1.2  # peak op memory <= 1.2 x (dW + dX + 64 MB)


def plan(quick, json_path, junit_path, rounds):
    """The commands to run, in order."""
    py = sys.executable
    tests = [py, "-m", "pytest", "-q", "-m", "cuda or not slow", "tests", "-p", "no:cacheprovider",
             f"--junitxml={junit_path}"]
    benches = [py, "-m", "pytest", "-q", *BENCHES, "-p", "no:cacheprovider", "--shapes",
               QUICK_SHAPES if quick else "gpu", f"--bench-rounds={rounds}", f"--benchmark-json={json_path}"]
    return [("tests", tests), ("benches", benches)]


def card_slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def peak_for(card):
    return next((v for k, v in PEAK_TFLOPS.items() if k in card.upper()), None)


def summarise_tests(junit_path):
    if not os.path.exists(junit_path):
        return {"error": "no junit report"}
    root = ET.parse(junit_path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {"failed": failed}


def summarise_benches(json_path, peak_tflops):
    """Rows of every benchmark: name, group, provider, mode, shape, median ms, TFLOP/s, % of peak, memory."""
    with open(json_path) as f:
        data = json.load(f)
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        row = {"name": b["name"], "group": b.get("group"), "median_ms": b["stats"]["median"] * 1e3, **info}
        if "tflops" in info and peak_tflops:
            row["peak_fraction"] = info["tflops"] / peak_tflops
        rows.append(row)
    return rows, data.get("machine_info", {})


def compare_targets(rows):
    """Goal checks of ANCHORS.md G.1 for the Triton linear_logprobs rows."""
    checks = []
    head = [r for r in rows if r["name"].startswith("test_linear_logprobs[")]
    by_key = {(r.get("T"), r.get("D"), r.get("V"), r.get("mode"), r.get("provider")): r for r in head}
    for (T, D, V, mode, provider), r in sorted(by_key.items(), key=str):
        if provider != "triton":
            continue
        shape = f"T={T} D={D} V={V} {mode}"
        if "tflops" in r:
            checks.append({"check": f"{shape}: TFLOP/s >= {TARGET_TFLOPS[mode]}", "value": r["tflops"],
                           "pass": r["tflops"] >= TARGET_TFLOPS[mode]})
        naive = by_key.get((T, D, V, mode, "naive"))
        if mode == "full" and T >= 8192 and naive is not None:
            speedup = naive["median_ms"] / r["median_ms"]
            checks.append({"check": f"{shape}: speedup vs torch eager >= {TARGET_SPEEDUP_FULL}", "value": speedup,
                           "pass": speedup >= TARGET_SPEEDUP_FULL})
        if mode == "full" and "peak_extra_mb" in r:
            elem = 2 if r.get("dtype") in ("bfloat16", "float16") else 4
            floor_mb = ((V + T) * D * elem) / 2 ** 20 + 64
            checks.append({"check": f"{shape}: peak extra MB <= {TARGET_MEMORY_FACTOR} x floor ({floor_mb:.0f} MB)",
                           "value": r["peak_extra_mb"], "pass": r["peak_extra_mb"] <= TARGET_MEMORY_FACTOR * floor_mb})
    return checks


def versions():
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton
        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def write_markdown(path, report):
    lines = [f"# bonfast GPU check: {report['card']} ({report['date']})", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), "",
             f"## Tests (`pytest -m \"cuda or not slow\" tests`)", "", "```", json.dumps(report["tests"], indent=1),
             "```", "", "## Benchmarks", "",
             "| name | median ms | TFLOP/s | % peak | peak extra MB |", "|---|---:|---:|---:|---:|"]
    for r in report["benchmarks"]:
        frac = f"{100 * r['peak_fraction']:.1f}" if "peak_fraction" in r else ""
        lines.append(f"| {r['name']} | {r['median_ms']:.3f} | {r.get('tflops', '')} | {frac} | "
                     f"{r.get('peak_extra_mb', '')} |")
    lines += ["", "## Goals (ANCHORS.md G.1)", "", "| check | value | pass |", "|---|---:|---|"]
    lines += [f"| {c['check']} | {c['value']:.4g} | {'yes' if c['pass'] else 'NO'} |" for c in report["targets"]]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the plan and exit (no GPU needed)")
    ap.add_argument("--quick", action="store_true", help=f"bench one shape ({QUICK_SHAPES}) instead of the GPU set")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per benchmark case")
    ap.add_argument("--out", default=os.path.join(ROOT, "benches", "results"), help="output directory")
    ap.add_argument("--skip-tests", action="store_true", help="only run the benches")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="bonfast-gpu-")
    json_path, junit_path = os.path.join(tmp, "bench.json"), os.path.join(tmp, "junit.xml")
    steps = plan(args.quick, json_path, junit_path, args.rounds)
    if args.skip_tests:
        steps = steps[1:]
    if args.dry_run:
        for name, cmd in steps:
            print(f"[{name}] (cwd {ROOT})\n  " + " ".join(cmd))
        print(f"[report] {args.out}/gpu-<card>-<date>.json and .md")
        return 0

    import torch
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; use --dry-run to see the plan", file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name()
    date = datetime.datetime.now().strftime("%Y-%m-%d")
    codes = {}
    for name, cmd in steps:
        print(f"[{name}] " + " ".join(cmd), flush=True)
        codes[name] = subprocess.run(cmd, cwd=ROOT).returncode
    rows, machine = summarise_benches(json_path, peak_for(card)) if os.path.exists(json_path) else ([], {})
    report = {"card": card, "date": date, "versions": versions(), "machine": machine, "exit_codes": codes,
              "tests": summarise_tests(junit_path) if not args.skip_tests else None,
              "peak_bf16_tflops": peak_for(card), "benchmarks": rows, "targets": compare_targets(rows)}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"gpu-{card_slug(card)}-{date}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1, default=str)
    write_markdown(stem + ".md", report)
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
