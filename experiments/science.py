"""The paper's comparison at small scale, with seed-level statistics: every arm on the embedded arithmetic task.

    python experiments/science.py --plan            # every run, its estimated CPU minutes, the total; runs nothing
    python experiments/science.py                   # the whole study (resumable: rerun the same command to continue)
    python experiments/science.py --groups main --arms rl,bon_rlb_p --jobs 1   # a subset
    python experiments/science.py --smoke           # every code path on tiny settings into a temp dir (~minutes)
    python experiments/science.py --report-only     # tabulate the runs that exist

Arms (ARMS below; `--plan` lists them). Each arm is one `bonfast train` configuration; an arm differs from its
reference only in the flags it names. Every run uses the default preset: the seed's supervised warm start ("base",
shared by every arm of that seed), then 400 steps of 64 prompts x 16 samples (equal sample budgets), AdamW 3e-4.

    main       every method of the objective registry, N' = 8 (N' = 1 for the inference-unaware ones); the noisy
               verifier for the methods trained on verifier scores (RL-V, BoN-RL-V), the task reward otherwise
    variant    the published forms and ablations, reachable as `bonfast train` flags: variational BoN-SFT,
               winner credit for BoN-RL-V and BoN-RL-S, BoN-RLB with the exact sign, without clipping and with the
               group p estimator, BoN-RLB(P) on policy samples
    sweep      BoN-RLB(P) at N' = 1, 2, 4, 16 (N' = 8 is the main arm), each evaluated at N = 1..32
    gameable   RL-V and BoN-RL-V trained against the biased verifier (continuous, prefers long responses over correct
               ones) on a repeating pool of 512 training prompts, so RL-V can learn to exploit it; and BoN-RL-V
               with the verifier's score as its reward too (`--bon_rl_v_reward verifier`: every signal from the
               verifier, as for RL-V), which separates BoN-awareness from the source of the reward
    learned    the pre-registered claims (a)-(d) of science_report.LEARNED_CLAIMS: BoN-RL-V trained with the seed's
               learned verifier picking (bonfast.tasks.learned), and the evaluation under that verifier (`lbo@k`) of
               every policy the claims compare (base, SFT, RL, BoN-RL-S, BoN-RLB(P)), all at seeds 1-8; the seed's
               verifier is trained once after its warm start (job "verifier", cached by its config)

Seeds. Seed 0 is the tuning seed: the learning rate and batch were tuned on BoN-RLB(P) seed 0 before this study, so
seed 0 is never reported (`--seeds` refuses it). Reported: seeds 1-8 for base and the headline pair (RL,
BoN-RLB(P)), seeds 1-3 for the N' sweep and for every other arm but two that equal another arm on this
task's binary reward (seed 1 only, as the check that the runs coincide; EQUAL_ON_BINARY): PKPO (BoN-RL-S's
weights) and variational BoN-SFT (SFT's). Every arm uses the same settings (no
per-method tuning).

Evaluation (`eval_policy`): the same 800 held-out prompts x 32 samples at T = 0.5, 1.0 and 1.5 for every policy:
pass@k and BoK for every k = 1..32 (BoK under the seed's noisy verifier and under the biased verifier), majority@k,
answer diversity, the biased verifier's mean score and the response length. `science_report.report` turns the
per-prompt numbers into docs/results/science.{md,json} and the plots: every interval is the seed-level
hierarchical bootstrap (`bonfast.metrics.hierarchical_bootstrap`), Holm-corrected across the secondary claims.

Runs execute as separate processes (`--jobs` at a time, one torch thread each, so results are bitwise reproducible
on one machine). A run is finished when its directory has done.json (training) and eval.json (evaluation); finished
runs are reused and an interrupted one resumes from its last checkpoint (every 20 steps), so the same command picks
up where the last call stopped, across sessions. Commit docs/results/ and docs/RESULTS.md as runs land
(`--report-only` rewrites them). The report keeps a compact copy of every run's per-prompt data in
docs/results/science-runs/ (science_data.py, ~80 kB a run) and reads only that, so a clean clone without runs/
regenerates every table and verdict. Runs are bitwise reproducible on one machine only: on another CPU a rerun is
another realization of its seed (its own warm start, so every run of that seed differs). The report never replaces a
reported run by such a rerun, nor compares runs of two realizations within a seed; a rerun evaluated under the
learned verifier goes whole to the learned group's data set, docs/results/science-runs/learned/
(science_report.refresh). The learned group's seeds 2-8 are such reruns; its seed 1 is the study's own runs.
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
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from bonfast.objectives import OBJECTIVES

NOISY = {"fpr": 0.25, "fnr": 0.1}  # the noisy verifier: accepts 25% of wrong responses, rejects 10% of right ones
NOISY_ARGS = ("--verifier", "noisy", "--verifier_fpr", str(NOISY["fpr"]), "--verifier_fnr", str(NOISY["fnr"]))
LEARNED_ARGS = ("--verifier", "learned")  # the seed's learned verifier, trained from its warm start (cached)
BIASED = "bonfast.tasks.verifiers:BiasedVerifier"  # default settings: correct_weight 0.25, max_len 8, jitter 0.01
POOL = 512  # training prompts of the gameable arms
BIASED_ARGS = ("--verifier", BIASED, "--train_prompt_pool", str(POOL))
TRAIN_N_BON = 8
SWEEP = (1, 2, 4, 8, 16)
TEMPS = (0.5, 1.0, 1.5)
KS = (1, 2, 4, 8, 16, 32)  # the k of the tables; eval.json holds every k in 1..N_EVAL
N_EVAL = 32
MAJ_KS = (8, 32)
EVAL_SEED = 1234  # the held-out prompts are the same for every arm and seed (paired comparisons)
HEADLINE = ("rl", "bon_rlb_p")  # inference-unaware vs BoN-aware
TUNING_SEEDS = (0,)
SEEDS = {"headline": tuple(range(1, 9)), "sweep": (1, 2, 3), "other": (1, 2, 3), "check": (1,),
         "learned": tuple(range(1, 9))}
# The arms of the learned-verifier claims (science_report.LEARNED_CLAIMS), at SEEDS["learned"]; each is evaluated
# under the seed's learned verifier too (`lbo@k`). SFT and BoN-RL-S keep their seeds 1-3 runs (the same config) and
# get seeds 4-8.
LEARNED_EVAL = ("base", "sft", "rl", "bon_rl_s", "bon_rlb_p", "bon_rl_v.learned")
# Arms equal to another arm on this study's binary reward: run on one seed, as a check that the runs coincide
# (the report lists arms whose evaluations are bitwise equal). PKPO's pass@k weights are BoN-RL-S's exact weights
# for binary rewards (bonfast.objectives.bon_rl_s); variational BoN-SFT's sample term 1{r_i <= r*} is 1 for every
# sample when the gold answer has the top reward, so its weights are 0 and it is SFT (bonfast.objectives.bon_sft).
EQUAL_ON_BINARY = {"pass_at_k": "bon_rl_s", "bon_sft.variational": "sft"}

# Estimated CPU minutes (2-core machine, two runs at a time, one thread each), measured on this study's first runs
# (2026-11-30): 400 steps x 64 prompts x 16 samples with the small in-run evaluations 9.5-10 minutes, the
# 800 x 32 x 3 evaluation 0.7 minutes, a 200-step warm start plus its evaluation about 2 minutes.
EST_TRAIN_MIN = 9.7
EST_EVAL_MIN = 0.7
EST_WARM_MIN = 1.3
# The learned verifier: training it (sampling 2048 x 8, 300 steps of 128, the held-out calibration) took 75 s of CPU
# with the warm start cached, 104 s with it (seed 1, recipe versions 2 and 1, one thread, the shared 2-core machine);
# scoring one evaluation's 800 x 32 x 3 samples with it is an estimate, not measured.
EST_VERIFIER_MIN = 1.8
EST_LEARNED_EVAL_MIN = 0.3


@dataclass(frozen=True)
class Arm:
    """One training configuration: `bonfast train --method <method> --n_bon <n_bon> <args>`."""
    method: str
    n_bon: int
    args: tuple = ()
    label: str = ""
    verifier: str = "oracle"  # what the training signal's verifier is: oracle | noisy | biased
    group: str = "main"
    reference: str | None = None  # the arm this one is a variant of (its comparison)


def _arms() -> dict[str, Arm]:
    arms = {}
    for name, objective in OBJECTIVES.items():
        noisy = objective.scores and not objective.expert
        n_bon = TRAIN_N_BON if objective.bon_aware else 1
        arms[name] = Arm(name, n_bon, NOISY_ARGS if noisy else (),
                         f"{objective.label} (N'={n_bon}{', noisy verifier' if noisy else ''})",
                         "noisy" if noisy else "oracle")
    variants = {  # name: (reference arm, extra flags, label suffix)
        "bon_sft.variational": ("bon_sft", ("--bon_sft_form", "variational", "--bon_sft_lam", "9"),
                                "variational, lambda 9"),
        "bon_rl_v.winner": ("bon_rl_v", ("--bon_rl_v_credit", "winner"), "winner credit"),
        "bon_rl_s.winner": ("bon_rl_s", ("--bon_rl_s_credit", "winner"), "winner credit"),
        "bon_rlb.exact_sign": ("bon_rlb", ("--bon_rlb_negative_sign", "1"), "exact sign, +g-"),
        "bon_rlb.no_clip": ("bon_rlb", ("--bon_rlb_clip", "0"), "no clip"),
        "bon_rlb.p_group": ("bon_rlb", ("--bon_rlb_p_estimator", "group"), "p from the group"),
        "bon_rlb_p.policy_group": ("bon_rlb_p", ("--bon_rlb_p_sample_source", "policy_group"), "policy samples"),
    }
    for name, (ref, extra, suffix) in variants.items():
        base = arms[ref]
        arms[name] = Arm(base.method, base.n_bon, base.args + extra, f"{OBJECTIVES[ref].label} ({suffix})",
                         base.verifier, "variant", ref)
    for n_bon in SWEEP:
        if n_bon != TRAIN_N_BON:
            arms[f"bon_rlb_p.n{n_bon}"] = Arm("bon_rlb_p", n_bon, (), f"BoN-RLB(P) (N'={n_bon})", "oracle", "sweep",
                                              "bon_rlb_p")
    for name in ("rl_v", "bon_rl_v"):
        n_bon = arms[name].n_bon
        arms[f"{name}.biased"] = Arm(name, n_bon, BIASED_ARGS, f"{OBJECTIVES[name].label} (N'={n_bon}, biased "
                                     f"verifier, pool {POOL})", "biased", "gameable")
    # BoN-aware training with every signal from the verifier (it picks and its score is the reward, as RL-V's is):
    # beside bon_rl_v.biased (the verifier only picks) it separates BoN-awareness from the source of the reward
    arms["bon_rl_v.biased_reward"] = Arm("bon_rl_v", TRAIN_N_BON, BIASED_ARGS + ("--bon_rl_v_reward", "verifier"),
                                         f"BoN-RL-V (N'={TRAIN_N_BON}, biased verifier picks and rewards, pool "
                                         f"{POOL})", "biased", "gameable")
    arms["bon_rl_v.learned"] = Arm("bon_rl_v", TRAIN_N_BON, LEARNED_ARGS,
                                   f"BoN-RL-V (N'={TRAIN_N_BON}, learned verifier)", "learned", "learned")
    return arms


ARMS = _arms()
GROUPS = ("main", "variant", "sweep", "gameable", "learned")
LABELS = {"base": "base (warm start)", **{name: arm.label for name, arm in ARMS.items()}}


def arm_seeds(name: str) -> tuple[int, ...]:
    """The reported seeds of an arm (module docstring)."""
    if name == "base" or name in HEADLINE:
        return SEEDS["headline"]
    if name in LEARNED_EVAL:
        return SEEDS["learned"]
    if name in EQUAL_ON_BINARY:
        return SEEDS["check"]
    return SEEDS["sweep"] if ARMS[name].group == "sweep" else SEEDS["other"]


# ------------------------------------------------------------------------------------------------------------
# the plan


@dataclass(frozen=True)
class Settings:
    """What every run of one study shares: `bonfast train` overrides, steps and the evaluation size."""
    steps: int = 400
    eval_prompts: int = 800
    overrides: tuple = ()  # (field, value) pairs for the default preset, in training and in evaluation
    in_run_eval: tuple = ("--eval_prompts", "64", "--eval_n", "8", "--eval_ks", "1,8")
    verifier_recipe: tuple = ()  # (field, value) pairs replacing the learned verifier's RECIPE (smoke runs only)

    def train_flags(self) -> list[str]:
        return [str(x) for field, value in self.overrides for x in (f"--{field}", value)]

    def minutes(self, arm: str) -> float:
        """Estimated CPU minutes of one (arm, seed): training (or the warm start for base) plus evaluation (plus
        scoring under the learned verifier for LEARNED_EVAL); for "verifier", training the seed's verifier."""
        if arm == VERIFIER_JOB:
            return EST_VERIFIER_MIN
        scale = dict(self.overrides)
        work = (scale.get("prompts_per_step", 64) / 64) * (scale.get("n", 16) / 16)
        train = EST_WARM_MIN if arm == "base" else EST_TRAIN_MIN * self.steps / 400 * work
        return train + self.eval_minutes(arm)

    def eval_minutes(self, arm: str) -> float:
        return (EST_EVAL_MIN + EST_LEARNED_EVAL_MIN * (arm in LEARNED_EVAL)) * self.eval_prompts / 800


SMOKE = Settings(steps=2, eval_prompts=4, overrides=(
    ("tiny_dim", 32), ("tiny_layers", 1), ("tiny_heads", 2), ("sft_steps", 2), ("sft_batch", 8),
    ("prompts_per_step", 2), ("max_new_tokens", 6), ("warmup_steps", 1), ("ckpt_every", 1)),
    in_run_eval=("--eval_prompts", "2", "--eval_n", "8", "--eval_ks", "1,8"),
    verifier_recipe=(("prompts", 8), ("samples", 4), ("steps", 2), ("batch", 8), ("heldout_prompts", 4)))


VERIFIER_JOB = "verifier"  # the job that trains a seed's learned verifier (runs/verifier-seed<s>/calibration.json)


def verifier_file(runs: str, seed: int) -> str:
    """The seed's learned verifier (written by its "verifier" job): every run that trains with it or is evaluated
    under it names this file (`--verifier_path`), so all of them use one verifier."""
    report = os.path.join(runs, f"{VERIFIER_JOB}-seed{seed}", "calibration.json")
    if not os.path.exists(report):
        raise RuntimeError(f"{report}: missing; the seed's learned verifier job runs first (science.py without --arms)")
    with open(report) as f:
        return json.load(f)["path"]


def plan(arms: list[str], seeds: list[int] | None = None) -> list[tuple[str, int]]:
    """(arm, seed) jobs: first the learned verifier of every seed any arm needs (its job makes the seed's warm start,
    cached), then base (evaluated under that verifier: LEARNED_EVAL), then the arms; `seeds` overrides the rule."""
    jobs = [(arm, s) for arm in arms for s in (seeds if seeds is not None else arm_seeds(arm))]
    need = sorted({s for _, s in jobs})
    return ([(VERIFIER_JOB, s) for s in need] + [("base", s) for s in need]
            + [(a, s) for s in need for a in arms if (a, s) in set(jobs)])


def job_left(arm: str, seed: int, runs: str, settings: Settings) -> tuple[str, float]:
    """(state, estimated CPU minutes left) of one job: "done"; "eval" when only the evaluation under the learned
    verifier is missing and the run's policy is still there; else "run"."""
    out = os.path.join(runs, f"{arm}-seed{seed}")
    if arm == VERIFIER_JOB:
        done = os.path.exists(os.path.join(out, "calibration.json"))
        return ("done", 0.0) if done else ("run", settings.minutes(arm))
    evaluated = os.path.exists(os.path.join(out, "eval.json"))
    if evaluated and (arm not in LEARNED_EVAL or os.path.exists(os.path.join(out, "learned.json"))):
        return "done", 0.0
    if evaluated and (arm == "base" or os.path.exists(os.path.join(out, "checkpoint.safetensors"))):
        return "eval", settings.eval_minutes(arm)
    return "run", settings.minutes(arm)


def print_plan(jobs: list[tuple[str, int]], settings: Settings, runs: str) -> float:
    rows, total, done = [], 0.0, 0
    for arm, seed in jobs:
        state, minutes = job_left(arm, seed, runs, settings)
        finished = state == "done"
        total += minutes
        done += finished
        a = ARMS.get(arm)
        rows.append(f"{arm:24s} seed {seed:2d}  N'={a.n_bon if a else '-':>2}  verifier "
                    f"{a.verifier if a else '-':7s}  {'done' if finished else f'{minutes:5.1f} min'}"
                    + ("  (+ learned-verifier evaluation)" if arm in LEARNED_EVAL else "")
                    + ("  (evaluation only: the policy is there)" if state == "eval" else ""))
    print("\n".join(rows))
    print(f"{len(jobs)} runs ({done} done); estimated CPU time left {total:.0f} min = {total / 60:.1f} h "
          f"(wall time about half of that with --jobs 2 on 2 cores). Tuning seeds {TUNING_SEEDS} are not reported.")
    return total


# ------------------------------------------------------------------------------------------------------------
# running


def _run(args: list[str], log_path: str, append: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "a" if append else "w") as log:
        proc = subprocess.run(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed with exit code {proc.returncode}; see {log_path}")


def run_job(arm: str, seed: int, root: str, settings: Settings) -> str:
    """Train (unless base) and evaluate one (arm, seed); finished steps are skipped. Returns the run dir."""
    out = os.path.join(root, f"{arm}-seed{seed}")
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    if arm == VERIFIER_JOB:  # the seed's learned verifier, from its warm start (cached by its config)
        if not os.path.exists(os.path.join(out, "calibration.json")):
            _run([sys.executable, "-m", "bonfast.tasks.learned", "--seed", str(seed), "--overrides",
                  json.dumps(dict(settings.overrides)), "--recipe", json.dumps(dict(settings.verifier_recipe)),
                  "--out", os.path.join(out, "calibration.json")],
                 os.path.join(out, "stdout.log"))
        print(f"  learned verifier seed {seed}: done ({time.time() - t0:.0f} s)", flush=True)
        return out
    learned = arm in LEARNED_EVAL
    trains_with = arm in ARMS and ARMS[arm].verifier == "learned"
    verifier = verifier_file(root, seed) if learned or trains_with else None
    if learned and os.path.exists(os.path.join(out, "eval.json")) and not os.path.exists(
            os.path.join(out, "learned.json")):
        if arm != "base" and not os.path.exists(os.path.join(out, "checkpoint.safetensors")):
            raise RuntimeError(f"{out}: evaluated, but its checkpoint is gone: the evaluation under the learned "
                               "verifier needs the policy; move the run away to retrain it (deterministic)")
        os.remove(os.path.join(out, "eval.json"))  # re-evaluated below with the learned verifier: same samples
    if arm != "base" and not os.path.exists(os.path.join(out, "done.json")):
        a = ARMS[arm]
        _run([sys.executable, "-m", "bonfast.cli", "train", "--method", a.method, "--n_bon", str(a.n_bon),
              "--seed", str(seed), "--out_dir", out, "--steps", str(settings.steps), "--progress", "false",
              "--resume", "true", *settings.train_flags(),
              # the in-run evaluation is a small sanity check only; eval_policy below is the measurement
              *settings.in_run_eval, *a.args, *(("--verifier_path", verifier) if a.verifier == "learned" else ())],
             os.path.join(out, "stdout.log"), append=True)
        with open(os.path.join(out, "done.json"), "w") as f:
            json.dump({"arm": arm, "seed": seed, "train_seconds": time.time() - t0}, f)
    if not os.path.exists(os.path.join(out, "eval.json")):
        _run([sys.executable, os.path.abspath(__file__), "--eval-one", out, "--seeds", str(seed),
              "--eval_prompts", str(settings.eval_prompts), "--overrides", json.dumps(settings.overrides),
              *(["--learned", verifier] if learned else [])], os.path.join(out, "eval.log"))
    print(f"  {arm} seed {seed}: done ({time.time() - t0:.0f} s)", flush=True)
    return out


def eval_policy(run_dir: str, seed: int, eval_prompts: int, overrides: dict | None = None,
                learned: str = "") -> None:
    """Per-prompt pass@k and BoK (k = 1..32; noisy and biased verifiers), majority@k, diversity -> eval.json.

    With `learned` (the file of the seed's learned verifier), BoK under it too (`lbo@k`, k = 1..32; the oracle's BoK
    is pass@k on this binary reward) and its calibration on this policy's samples per temperature (learned.json:
    accuracy, AUC, false-positive rate at its threshold, ...; what a verifier is asked about drifts as the policy
    trains)."""
    from bonfast import evaluate, metrics, rollout, tasks
    from bonfast.checkpoint import atomic_write
    from bonfast.config import preset
    from bonfast.engine import Engine

    torch.set_num_threads(1)
    t0 = time.time()
    cfg = preset("default", seed=seed, out_dir=run_dir, **(overrides or {}))
    model, tokenizer, task, _, tag = evaluate.load_policy(cfg, torch.device("cpu"))
    model.eval()
    noisy = tasks.get_verifier("noisy", task, false_positive_rate=NOISY["fpr"], false_negative_rate=NOISY["fnr"],
                               seed=seed)  # the verifier the seed's noisy runs trained against
    biased = tasks.get_verifier(BIASED, task)  # the gameable arms' verifier (one fixed verifier for all seeds)
    if learned:  # the seed's learned verifier (the "verifier" job trained it; cached by its config)
        from bonfast.tasks.learned import LearnedVerifier, calibration_metrics
        scorer = LearnedVerifier(task, path=learned, device="cpu")
        calib = {"verifier": os.path.basename(scorer.path), "threshold": scorer.config.threshold, "temps": {}}
    examples = task.examples("test", n=eval_prompts, seed=EVAL_SEED)
    prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
    n, ks = N_EVAL, range(1, N_EVAL + 1)
    result = {"tag": tag, "seed": seed, "n": n, "levels": [ex.meta["level"] for ex in examples], "temps": {}}
    for temp in TEMPS:
        roll = Engine(model).sample(prompts, n, max_new_tokens=cfg.max_new_tokens, temperature=temp,
                                    stop_token_ids=rollout.stop_ids(tokenizer), seed=EVAL_SEED + int(100 * temp))
        R, r, answers = rollout.judge(task, noisy, examples, roll, tokenizer)
        texts = [[rollout.decode(tokenizer, t) for t in row] for row in roll.tokens]
        g = torch.tensor([biased.score(ex, row) for ex, row in zip(examples, texts)], dtype=torch.float64)
        correct = R > 0.5
        per = {f"pass@{k}": metrics.pass_at_k(torch.full((len(prompts),), n), correct.sum(1), k) for k in ks}
        per.update({f"bo@{k}": metrics.bo_k(r, R, k) for k in ks})
        per.update({f"gbo@{k}": metrics.bo_k(g, R, k) for k in ks})
        if learned:
            s = torch.tensor(scorer.score_many(examples, texts), dtype=torch.float64)  # (G, n)
            per.update({f"lbo@{k}": metrics.bo_k(s, R, k) for k in ks})
            per["learned_accepts"] = (s > scorer.config.threshold).double().mean(1)
            calib["temps"][f"{temp:g}"] = {**calibration_metrics(s, correct.double(), scorer.config.threshold),
                                           **{f"lbo@{k}": float(per[f"lbo@{k}"].mean()) for k in KS}}
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
                   verifier_accepts=(r > 0.5).double().mean(1), biased_score=g.mean(1), length=[
                       sum(len(t) for t in toks) / n for toks in roll.tokens])
        result["temps"][f"{temp:g}"] = {k: torch.as_tensor(v, dtype=torch.float64).tolist() for k, v in per.items()}
    result["seconds"] = time.time() - t0
    os.makedirs(run_dir, exist_ok=True)
    if learned:  # before eval.json: a run with eval.json and no learned.json is not evaluated under the verifier
        with open(os.path.join(run_dir, "learned.json"), "w") as f:
            json.dump(calib, f, indent=1)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(result, f)
    atomic_write(os.path.join(run_dir, "eval.json"), write)


# ------------------------------------------------------------------------------------------------------------
# main


def _select(args) -> list[str]:
    groups = [g for g in args.groups.split(",") if g]
    bad = [g for g in groups if g not in GROUPS]
    if bad:
        raise SystemExit(f"--groups: unknown {bad}; expected a subset of {', '.join(GROUPS)}")
    arms = [a for a, arm in ARMS.items() if arm.group in groups
            or ("learned" in groups and a in LEARNED_EVAL)]  # the learned group evaluates the arms its claims compare
    if args.arms:
        wanted = [a for a in args.arms.split(",") if a and a != "base"]
        unknown = [a for a in wanted if a not in ARMS]
        if unknown:
            raise SystemExit(f"--arms: unknown {unknown}; expected names from {', '.join(ARMS)}")
        arms = [a for a in arms if a in wanted]
    return arms


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", default=",".join(GROUPS), help=f"comma-separated subset of {', '.join(GROUPS)}")
    ap.add_argument("--arms", default="", help="comma-separated arm names (default: every arm of the groups)")
    ap.add_argument("--seeds", default="", help="seeds for every selected arm (default: the per-arm rule)")
    ap.add_argument("--allow-tuning-seeds", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--eval_prompts", type=int, default=800)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", default="runs/science", help="directory of the individual runs")
    ap.add_argument("--out", default="docs/results/science", help="output prefix (.md, .json, -*.png)")
    ap.add_argument("--results-doc", default="", help="the generated results document (default: docs/RESULTS.md "
                    "with the default --out, else RESULTS.md beside --out)")
    ap.add_argument("--plan", action="store_true", help="print every run and its estimated CPU minutes; run nothing")
    ap.add_argument("--smoke", action="store_true", help="every arm, one seed, tiny settings, into a temp dir")
    ap.add_argument("--eval-one", metavar="RUN_DIR", help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--learned", default="", help=argparse.SUPPRESS)  # --eval-one: the learned verifier's file
    ap.add_argument("--report-only", action="store_true", help="tabulate the runs that exist; train nothing")
    ap.add_argument("--no-report", action="store_true", help="run the selected jobs; leave the report to a later "
                    "--report-only call (a queue of several selections)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s] or None
    if args.eval_one:
        eval_policy(args.eval_one, seeds[0], args.eval_prompts, dict(json.loads(args.overrides)), args.learned)
        return
    if seeds and not args.allow_tuning_seeds and set(seeds) & set(TUNING_SEEDS):
        raise SystemExit(f"--seeds: seed(s) {sorted(set(seeds) & set(TUNING_SEEDS))} were used for tuning and are "
                         "not reported (module docstring)")
    arms = _select(args)
    settings = Settings(steps=args.steps, eval_prompts=args.eval_prompts)
    runs, out = args.runs, args.out
    doc = args.results_doc or ("docs/RESULTS.md" if out == ap.get_default("out") else
                               os.path.join(os.path.dirname(out), "RESULTS.md"))
    if args.smoke:
        settings, seeds = SMOKE, seeds or [1]
        root = tempfile.mkdtemp(prefix="bonfast-science-smoke-")
        runs, out = os.path.join(root, "runs"), os.path.join(root, "results", "science")
        doc = os.path.join(root, "RESULTS.md")
        os.environ.setdefault("BONFAST_CACHE", os.path.join(root, "cache"))  # warm starts stay in the temp dir
    jobs = plan(arms, seeds)
    if args.plan:
        print_plan(jobs, settings, runs)
        return
    start = datetime.datetime.now(datetime.timezone.utc)
    if not args.report_only:
        print(f"{len(jobs)} jobs, {args.jobs} at a time, runs in {runs}", flush=True)
        # the seeds' learned verifiers first (each makes its seed's warm start: every arm of a seed reuses both
        # caches), then the warm starts' evaluations, then the arms
        stages = [[j for j in jobs if j[0] == VERIFIER_JOB], [j for j in jobs if j[0] == "base"],
                  [j for j in jobs if j[0] not in ("base", VERIFIER_JOB)]]
        with ThreadPoolExecutor(args.jobs) as pool:
            for stage in stages:
                list(pool.map(lambda job: run_job(*job, runs, settings), stage))
    if args.no_report:
        return None
    import results_doc
    from science_report import report
    all_seeds = sorted({s for _, s in jobs})
    data = report(runs, ["base", *arms], all_seeds, out, meta={
        "date": start.isoformat(timespec="seconds"), "command": "python " + " ".join(sys.argv),
        "minutes": (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds() / 60,
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "torch": torch.__version__,
        "steps": settings.steps, "eval_prompts": settings.eval_prompts, "noisy_verifier": NOISY,
        "labels": LABELS, "groups": {a: ARMS[a].group for a in arms},
        "references": {a: ARMS[a].reference for a in arms if ARMS[a].reference},
        "n_bon": {a: ARMS[a].n_bon for a in arms}, "temps": TEMPS, "ks": KS, "train_n_bon": TRAIN_N_BON,
        "tuning_seeds": TUNING_SEEDS, "pool": POOL, "smoke": args.smoke,
        "planned": {a: [s for a2, s in jobs if a2 == a] for a in ["base", *arms]}})
    results_doc.write(data, doc, real_model_status(),
                      (datetime.datetime.now(datetime.timezone.utc) - start).total_seconds())
    if args.smoke:
        print(f"smoke run finished: {out}.md")
    return data


def real_model_status() -> str:
    path = "docs/results/real_model.md"
    if os.path.exists(path):
        return f"Results of its last call: `{path}`."
    return ("**Not run**: it is sized for a GPU and none was available to this study (on the 2-core CPU one step of "
            "16 samples of a 135M model takes minutes); the GPU plan above is an estimate, not a measurement.")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
