"""The paper's comparison at small scale: every method on the embedded arithmetic task, several seeds.

    python experiments/science.py                                   # every method on seeds 0, 1, 2
    python experiments/science.py --methods rl,bon_rlb_p --seeds 0 --jobs 1   # a subset

Each (method, seed) is one `bonfast train` run with the default preset (the seed's shared supervised warm start,
then 400 steps of 64 prompts x 16 samples: equal sample budgets), varying only the method, N' and the verifier
(METHODS below). "base" is the seed's warm start itself. Every policy is then evaluated the same way
(`eval_policy`): the same 800 held-out prompts x 32 samples at T = 0.5, 1.0 and 1.5, judged by the task (pass@k,
majority@k) and by the seed's noisy verifier (BoK: the verifier picks, the task scores). `report` turns the
per-prompt numbers into docs/results/science.{md,json} and the PNG plots beside them: every interval is a 95%
bootstrap over prompts, paired where a change is shown, pooled over seeds by resampling prompts within each seed.

Runs execute as separate processes (`--jobs` at a time, one torch thread each, so results are bitwise
reproducible on one machine); finished runs and evaluations are reused, and an interrupted run resumes from
its last checkpoint (every 20 steps), so an interrupted call picks up where it stopped.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import torch

from bonfast.objectives import OBJECTIVES

NOISY = {"fpr": 0.25, "fnr": 0.1}  # the noisy verifier: accepts 25% of wrong responses, rejects 10% of right ones
NOISY_ARGS = ["--verifier", "noisy", "--verifier_fpr", str(NOISY["fpr"]), "--verifier_fnr", str(NOISY["fnr"])]
TRAIN_N_BON = 8


def _plan() -> dict:
    """method -> (extra `bonfast train` arguments, label), for every method of the objective registry:
    N' = 8 (N' = 1 for the inference-unaware ones); the noisy verifier for the methods trained on verifier
    scores (RL-V, BoN-RL-V), the oracle otherwise."""
    plan = {}
    for name, objective in OBJECTIVES.items():
        noisy = objective.scores and not objective.expert
        args = ([] if objective.bon_aware else ["--n_bon", "1"]) + (NOISY_ARGS if noisy else [])
        n_bon = TRAIN_N_BON if objective.bon_aware else 1
        plan[name] = (args, f"{objective.label} (N'={n_bon}{', noisy verifier' if noisy else ''})")
    return plan


METHODS = _plan()
LABELS = {"base": "base (warm start)", **{m: label for m, (_, label) in METHODS.items()}}
TEMPS = (0.5, 1.0, 1.5)
KS = (1, 2, 4, 8, 16, 32)
MAJ_KS = (8, 32)
EVAL_SEED = 1234  # the held-out prompts are the same for every method and seed (paired comparisons)
HEADLINE = ("rl", "bon_rlb_p")  # the comparison the issue asks for with its interval: inference-unaware vs BoN-aware


# ------------------------------------------------------------------------------------------------------------
# running


def _run(args: list[str], log_path: str, append: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {proc.returncode}; see {log_path}")


def run_job(method: str, seed: int, root: str, steps: int, eval_prompts: int) -> str:
    """Train (unless base) and evaluate one (method, seed); finished steps are skipped. Returns the run dir."""
    out = os.path.join(root, f"{method}-seed{seed}")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    if method != "base" and not os.path.exists(os.path.join(out, "done.json")):
        extra, _ = METHODS[method]
        _run([sys.executable, "-m", "bonfast.cli", "train", "--method", method, "--seed", str(seed),
              "--out_dir", out, "--steps", str(steps), "--progress", "false", "--resume", "true",
              # the in-run evaluation is a small sanity check only; eval_policy below is the measurement
              "--eval_prompts", "64", "--eval_n", "8", "--eval_ks", "1,8", *extra],
             os.path.join(out, "stdout.log"), append=True)
        with open(os.path.join(out, "done.json"), "w") as f:
            json.dump({"method": method, "seed": seed, "train_seconds": time.time() - t0}, f)
    if not os.path.exists(os.path.join(out, "eval.json")):
        _run([sys.executable, __file__, "--eval-one", out, "--seeds", str(seed), "--eval_prompts", str(eval_prompts)],
             os.path.join(out, "eval.log"))
    print(f"  {method} seed {seed}: done ({time.time() - t0:.0f} s)", flush=True)
    return out


def eval_policy(run_dir: str, seed: int, eval_prompts: int) -> None:
    """Per-prompt pass@k, BoK (noisy verifier), majority@k and answer diversity of one policy -> eval.json."""
    from bonfast import evaluate, metrics, rollout, tasks
    from bonfast.checkpoint import atomic_write
    from bonfast.config import preset
    from bonfast.engine import Engine

    torch.set_num_threads(1)
    t0 = time.time()
    cfg = preset("default", seed=seed, out_dir=run_dir)
    model, tokenizer, task, _, tag = evaluate.load_policy(cfg, torch.device("cpu"))
    model.eval()
    verifier = tasks.get_verifier("noisy", task, false_positive_rate=NOISY["fpr"], false_negative_rate=NOISY["fnr"],
                                  seed=seed)  # the verifier the seed's noisy runs trained against
    examples = task.examples("test", n=eval_prompts, seed=EVAL_SEED)
    prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
    n = max(KS)
    result = {"tag": tag, "seed": seed, "n": n, "levels": [ex.meta["level"] for ex in examples], "temps": {}}
    for temp in TEMPS:
        roll = Engine(model).sample(prompts, n, max_new_tokens=cfg.max_new_tokens, temperature=temp,
                                    stop_token_ids=rollout.stop_ids(tokenizer), seed=EVAL_SEED + int(100 * temp))
        R, r, answers = rollout.judge(task, verifier, examples, roll, tokenizer)
        correct = R > 0.5
        per = {f"pass@{k}": metrics.pass_at_k(torch.full((len(prompts),), n), correct.sum(1), k) for k in KS}
        per.update({f"bo@{k}": metrics.bo_k(r, R, k) for k in KS})
        per.update({f"maj@{k}": metrics.majority_at_k(answers, R, k) for k in MAJ_KS})
        distinct, entropy, modal_share, modal_correct = [], [], [], []
        for row, ok in zip(answers, correct.tolist()):
            counts = Counter(row)
            top, top_count = counts.most_common(1)[0]
            distinct.append(len(counts))
            entropy.append(-sum(c / n * math.log(c / n) for c in counts.values()))
            modal_share.append(top_count / n)
            modal_correct.append(float(ok[row.index(top)]))
        per.update(distinct=distinct, entropy=entropy, modal_share=modal_share, modal_correct=modal_correct,
                   verifier_accepts=(r > 0.5).double().mean(1), length=[
                       sum(len(t) for t in toks) / n for toks in roll.tokens])
        result["temps"][f"{temp:g}"] = {k: torch.as_tensor(v, dtype=torch.float64).tolist() for k, v in per.items()}
    result["seconds"] = time.time() - t0
    os.makedirs(run_dir, exist_ok=True)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f)
    atomic_write(os.path.join(run_dir, "eval.json"), write)


# ------------------------------------------------------------------------------------------------------------
# report


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; base is always included")
    ap.add_argument("--seeds", default="0,1,2", help="seeds on which every method runs")
    ap.add_argument("--headline_seeds", default="",
                    help=f"extra seeds for base and the headline pair {', '.join(HEADLINE)} only")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval_prompts", type=int, default=800)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", default="runs/science", help="directory of the individual runs")
    ap.add_argument("--out", default="docs/results/science", help="output prefix (.md, .json, -*.png)")
    ap.add_argument("--eval-one", metavar="RUN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--report-only", action="store_true", help="tabulate the runs that exist; train nothing")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s]
    extra_seeds = [int(s) for s in args.headline_seeds.split(",") if s and int(s) not in seeds]
    if args.eval_one:
        eval_policy(args.eval_one, seeds[0], args.eval_prompts)
        return
    methods = [m for m in args.methods.split(",") if m and m != "base"]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected a subset of {', '.join(METHODS)}")
    start = datetime.datetime.now(datetime.timezone.utc)
    if not args.report_only:
        jobs = [(m, s) for s in seeds for m in ["base", *methods]]
        jobs += [(m, s) for s in extra_seeds for m in ["base", *HEADLINE] if m == "base" or m in methods]
        print(f"{len(jobs)} jobs, {args.jobs} at a time, runs in {args.runs}", flush=True)
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(lambda job: run_job(*job, args.runs, args.steps, args.eval_prompts), jobs))
    from science_report import report
    report(args.runs, ["base", *methods], seeds + extra_seeds, args.out, meta={
        "date": start.isoformat(timespec="seconds"), "command": "python " + " ".join(sys.argv),
        "minutes": (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds() / 60,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "torch": torch.__version__,
        "steps": args.steps, "eval_prompts": args.eval_prompts, "noisy_verifier": NOISY, "labels": LABELS,
        "temps": TEMPS, "ks": KS, "n_bon": TRAIN_N_BON})


if __name__ == "__main__":
    main()
