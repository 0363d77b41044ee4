"""Tables and verdicts for experiments/science.py, from each run's eval.json (and metrics.jsonl); plots in
science_plots.py.

Statistics. Every policy was evaluated on the same held-out prompts, and the seed-s runs of all arms share the
seed's warm start, so a change (arm − base, arm − RL, variant − its reference) is taken per prompt within a seed,
on the seeds both arms have. Every number is the mean over seeds of the per-seed means; every interval is the
seed-level hierarchical bootstrap of `bonfast.metrics.hierarchical_bootstrap` (resample seeds, then one vector of
prompt indices shared by every seed and both arms; 2000 resamples, fixed generator), so training variation and
prompt variation are both in it. The per-seed values are shown beside the headline numbers.

Claims. The headline (BoN-RLB(P) − RL, pass@N' at T = 1) is the one primary claim, at level 0.05. Every other
verdict is a secondary claim; the secondary family is Holm-corrected (`bonfast.metrics.holm`): each claim's
interval is reported at its Holm level, and a claim is "supported" when that interval excludes 0 in the claimed
direction, "opposite" when it excludes 0 the other way, and "inconclusive" otherwise.
"""
from __future__ import annotations

import json
import os
import sys

import science_data
import science_plots
import torch

from bonfast import metrics

N_BOOT = 2000
ALPHA = 0.05
MIN_SEEDS = 3  # fewer seeds: the interval is reported, the verdict is "inconclusive" (training variance unmeasured)

# (key, claim, arm, minus, metric, T, claimed sign). The first is the primary claim; the rest form the Holm family.
CLAIMS = [
    ("headline", "BoN-aware training beats inference-unaware RL at the trained N (pass@N')",
     "bon_rlb_p", "rl", "pass@{n}", "1", +1),
    ("headline_bok", "... and on BoK (noisy verifier) at N'", "bon_rlb_p", "rl", "bo@{n}", "1", +1),
    ("rl_pass", "standard RL (N'=1) degrades pass@N'", "rl", "base", "pass@{n}", "1", -1),
    ("rl_pass32", "standard RL (N'=1) degrades pass@32", "rl", "base", "pass@32", "1", -1),
    ("rl_diversity", "standard RL collapses diversity (distinct answers)", "rl", "base", "distinct", "1", -1),
    ("sft_bok", "standard SFT (N'=1) lowers BoN performance (BoK at N')", "sft", "base", "bo@{n}", "1", -1),
    ("rl_v_hacks", "RL-V on the biased verifier raises the verifier's score (proxy)", "rl_v.biased", "base",
     "biased_score", "1", +1),
    ("rl_v_true", "... while its true pass@N' falls", "rl_v.biased", "base", "pass@{n}", "1", -1),
    ("bon_rl_v_resists", "BoN-RL-V beats RL-V on the biased verifier (true pass@N')", "bon_rl_v.biased",
     "rl_v.biased", "pass@{n}", "1", +1),
    ("bon_rl_v_bok_gameable", "BoN-RL-V beats RL-V on BoK under the biased verifier", "bon_rl_v.biased",
     "rl_v.biased", "gbo@{n}", "1", +1),
    ("bon_rl_v_bok", "BoN-RL-V improves BoK over the reward-trained BoN-RL-S", "bon_rl_v", "bon_rl_s", "bo@{n}",
     "1", +1),
    ("bon_rl_v_pass", "BoN-RL-V has worse pass@N' than BoN-RL-S", "bon_rl_v", "bon_rl_s", "pass@{n}", "1", -1),
    ("transfer_05", "the headline gain carries over to T = 0.5", "bon_rlb_p", "rl", "pass@{n}", "0.5", +1),
    ("transfer_15", "the headline gain carries over to T = 1.5", "bon_rlb_p", "rl", "pass@{n}", "1.5", +1),
]
# The claims above are read on the seeds they were planned with, even where an arm later gets more seeds (SFT and
# BoN-RL-S get seeds 4-8 for LEARNED_CLAIMS below): seeds added after a reading are not added to that reading.
CLAIM_SEEDS = {"sft_bok": (1, 2, 3), "bon_rl_v_bok": (1, 2, 3), "bon_rl_v_pass": (1, 2, 3)}

# Pre-registered claims of the learned-verifier study (issue #27), fixed here before any of their runs (the commit
# that added them precedes every change of the study that produces their data). Metric `lbo@k`: BoK with the seed's
# learned verifier (bonfast.tasks.learned: a reward model trained on the seed's warm-start samples of training
# prompts only) picking one of k samples, the task scoring the pick; T = 1, k = N' = 8.
#   Seeds: 1-8 for every claim (LEARNED_SEEDS), paired per seed; a claim read on fewer than its 8 seeds is interim.
#   Holm family "learned": these four claims, Holm-corrected among themselves at ALPHA. A family of its own: the
#   secondary family above was fixed and read before these claims existed, and joining it would change verdicts
#   already reported. No claim here is primary.
#   (a) BoN-RL-V trained with the learned verifier picking (task reward of the pick) - RL, Bo8 under it
#   (b) BoN-RLB(P) - RL, Bo8 under the learned verifier (the headline pair; its noisy-verifier Bo8 went the other way)
#   (c) SFT - base, Bo8 under the learned verifier (the paper: SFT lowers BoN performance)
#   (d) BoN-RL-V (learned verifier) - BoN-RL-S, Bo8 under the learned verifier: the pre-planned 8-seed follow-up of
#       bon_rl_v_bok (3 seeds, noisy verifier, inconclusive), not optional stopping: its seeds are fixed here
LEARNED_SEEDS = tuple(range(1, 9))
LEARNED_CLAIMS = [
    ("learned_bon_rl_v", "(a) BoN-RL-V with the learned verifier picking beats RL on Bo8 under the learned verifier",
     "bon_rl_v.learned", "rl", "lbo@{n}", "1", +1),
    ("learned_headline_bok", "(b) BoN-RLB(P) beats RL on Bo8 under the learned verifier", "bon_rlb_p", "rl",
     "lbo@{n}", "1", +1),
    ("learned_sft_bok", "(c) standard SFT (N'=1) lowers Bo8 under the learned verifier", "sft", "base", "lbo@{n}",
     "1", -1),
    ("learned_bon_rl_v_vs_s", "(d) BoN-RL-V (learned verifier) beats the reward-trained BoN-RL-S on Bo8 under the "
     "learned verifier", "bon_rl_v.learned", "bon_rl_s", "lbo@{n}", "1", +1),
]


# The learned group's data set, where it is not the study's: data_dir/learned/<arm>-seed<s>.npz (`load`).
LEARNED_DIR = "learned"
LEARNED_ARMS = ("base", *dict.fromkeys(arm for c in LEARNED_CLAIMS for arm in c[2:4]))


def load(runs: str, data_dir: str, arm: str, seed: int, ks, learned: bool = False
         ) -> tuple[dict | None, dict | None]:
    """(evaluation, training curve) of one run, read through its compact file (science_data), which is refreshed
    from runs/<arm>-seed<seed>/eval.json when that is newer (`refresh`); (None, None) if there is none.

    Two data sets. The study's, data_dir/<arm>-seed<s>.npz: every group's runs, as reported. The learned group's
    (`learned=True`): the runs its claims read, each evaluated under the seed's learned verifier too (lbo@k). A
    seed's learned data are one realization, whole: data_dir/learned/ when that has the seed's base (the learned
    group's runs of that seed are another realization than the study's, see `refresh`), else the study's copies,
    which then must hold lbo@k."""
    refresh(runs, data_dir, arm, seed, ks)
    path = source_of(data_dir, arm, seed, learned)
    if not os.path.exists(path) or (learned and not science_data.has_learned(path)):
        return None, None
    return science_data.load(path)


def source_of(data_dir: str, arm: str, seed: int, learned: bool = False) -> str:
    """The compact file `load` reads for (arm, seed) in the study's data set or the learned group's."""
    other = os.path.join(data_dir, LEARNED_DIR)
    if learned and os.path.exists(science_data.path_of(other, "base", seed)):
        return science_data.path_of(other, arm, seed)
    return science_data.path_of(data_dir, arm, seed)


def refresh(runs: str, data_dir: str, arm: str, seed: int, ks) -> None:
    """Copy runs/<arm>-seed<seed>/eval.json into the data set it belongs to, when it is newer than its copy there.

    A realization of a seed: its warm start ("base") and every arm trained from it. The same config rerun on another
    machine is another realization (the CPU rounds differently, the samples diverge: hardly a per-prompt number is
    equal), and arms of two realizations must never be compared within a seed. A run joins the study's copies only
    if it is the reported realization: its own copy, if any, equal on every per-prompt number (numbers only one of
    them has, such as the learned verifier's, are not compared) and the seed's runs/base equal to the reported base.
    Otherwise the reported copy is kept, and a run evaluated under the learned verifier goes to the learned group's
    data set (data_dir/learned/) instead; anything else is left out with a warning naming what differs."""
    run_dir = os.path.join(runs, f"{arm}-seed{seed}")
    source = os.path.join(run_dir, "eval.json")
    if not os.path.exists(source):
        return
    study = science_data.path_of(data_dir, arm, seed)
    other = science_data.path_of(os.path.join(data_dir, LEARNED_DIR), arm, seed)
    learned = os.path.exists(os.path.join(run_dir, "learned.json"))

    def current(path: str) -> bool:
        return os.path.exists(path) and os.path.getmtime(path) >= os.path.getmtime(source)

    if current(other) or (current(study) and (not learned or science_data.has_learned(study))):
        return  # copied before
    arrays = science_data.arrays_of(science_data.read_eval(run_dir), tuple(ks), train_curve(runs, arm, seed),
                                    science_data.train_seconds(run_dir), science_data.read_learned(run_dir))
    changed = science_data.differs(arrays, study) or [f"its seed's base ({name}, ...)" for name in _base_differs(
        runs, data_dir, seed, ks)[:1]]
    if not changed:
        science_data.write(arrays, study)
        return
    what = f"{len(changed)} arrays differ: {', '.join(changed[:4])}{', ...' if len(changed) > 4 else ''}"
    if not learned:
        print(f"warning: {source} is another run than the one reported ({study}: {what}); it is left out, the "
              "reported copy is kept (delete the copy to report the rerun instead)", file=sys.stderr)
        return
    again = science_data.differs(arrays, other)
    if again:
        print(f"warning: {source} is another run than its copy {other} ({len(again)} arrays differ: "
              f"{', '.join(again[:4])}); the copy is kept (delete it to report the rerun instead)", file=sys.stderr)
        return
    print(f"note: {source} is another realization of seed {seed} than the study's ({what}): it goes to the "
          f"learned group's data set ({other}); the study's copies are kept", file=sys.stderr)
    science_data.write(arrays, other)


def _base_differs(runs: str, data_dir: str, seed: int, ks) -> list[str]:
    """The per-prompt arrays on which the seed's runs/base differs from the reported base ([] if either is missing):
    a different base means every run of that seed in runs/ is another realization."""
    run_dir = os.path.join(runs, f"base-seed{seed}")
    if not os.path.exists(os.path.join(run_dir, "eval.json")):
        return []
    return science_data.differs(science_data.arrays_of(science_data.read_eval(run_dir), tuple(ks)),
                                science_data.path_of(data_dir, "base", seed))


def load_verifier(runs: str, data_dir: str, seed: int) -> dict | None:
    """The held-out calibration report of the seed's learned verifier, read through its copy in `data_dir`
    (science_data.save_verifier), refreshed from runs/verifier-seed<seed>/calibration.json when that is newer."""
    source = os.path.join(runs, f"verifier-seed{seed}", "calibration.json")
    path = science_data.verifier_path_of(data_dir, seed)
    if os.path.exists(source) and (not os.path.exists(path) or os.path.getmtime(source) > os.path.getmtime(path)):
        science_data.save_verifier(source, path)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_curve(runs: str, arm: str, seed: int) -> dict | None:
    """Per-step true reward and verifier score of one run (its metrics.jsonl), or None."""
    path = os.path.join(runs, f"{arm}-seed{seed}", "metrics.jsonl")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        steps = [r for r in map(json.loads, filter(str.strip, f)) if r.get("kind") == "train"]
    if not steps or "verifier_score" not in steps[0]:
        return None
    return {"step": [r["step"] for r in steps], "reward": [r["reward"] for r in steps],
            "verifier_score": [r["verifier_score"] for r in steps]}


def seed_stat(a: torch.Tensor, b: torch.Tensor | None = None, alpha: float = ALPHA) -> dict:
    """The seed-level interval of mean(a) or of the paired mean(a − b) (module docstring); a, b: [S, G]."""
    return metrics.hierarchical_bootstrap(a, b, n_boot=N_BOOT, alpha=alpha, seed=0)


LEARNED_ONLY = ("lbo@", "learned_accepts")  # per-prompt metrics of the runs evaluated under the learned verifier
UNSCALED = ("distinct", "entropy", "length")  # counts, nats, characters; every other metric is a rate, shown in %


def scale_of(metric: str) -> float:
    return 1.0 if metric in UNSCALED else 100.0


def fmt(stat: dict, scale: float = 100.0, signed: bool = False, seeds: bool = False) -> str:
    f = "{:+.1f}" if signed else "{:.1f}"
    out = f"{f.format(scale * stat['mean'])} [{f.format(scale * stat['lo'])}, {f.format(scale * stat['hi'])}]"
    if seeds:
        out += " (" + ", ".join(f.format(scale * v) for v in stat["per_seed"]) + ")"
    return out


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def verdict(stat: dict, sign: int) -> str:
    if (stat["lo"] > 0 and sign > 0) or (stat["hi"] < 0 and sign < 0):
        return "supported"
    if (stat["lo"] > 0 and sign < 0) or (stat["hi"] < 0 and sign > 0):
        return "opposite"
    return "inconclusive"


def report(runs: str, arms: list[str], seeds: list[int], out: str, meta: dict, data_dir: str | None = None) -> dict:
    """Write out.md, out.json and the plots from every (arm, seed) evaluated (runs/*/eval.json, or its compact copy
    in `data_dir`, default <dirname(out)>/science-runs); return the data."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thousands of small bootstraps: thread hand-offs cost more than they save
    try:
        return _report(runs, arms, seeds, out, meta,
                       data_dir or os.path.join(os.path.dirname(out) or ".", "science-runs"))
    finally:
        torch.set_num_threads(threads)


class Study:
    """Every evaluated (arm, seed) of the study, and the seed-level statistics over them.

    `have[arm]`: the seeds on which both the arm and that seed's base were evaluated; `arms`: the arms with at least
    one such seed (the others are in `missing`); `main`: the base and the arms of group "main". `learned`: the
    learned group's data set instead of the study's (`load`)."""

    def __init__(self, runs: str, arms: list[str], seeds: list[int], meta: dict, data_dir: str,
                 learned: bool = False):
        self.labels, self.temps, self.ks = meta["labels"], [f"{t:g}" for t in meta["temps"]], meta["ks"]
        self.groups, self.n_bon, self.seeds = meta.get("groups", {}), meta["train_n_bon"], seeds
        loaded = {(m, s): load(runs, data_dir, m, s, self.ks, learned) for m in arms for s in seeds}
        self.evals = {key: ev for key, (ev, _) in loaded.items()}
        self.curves = {key: curve for key, (_, curve) in loaded.items()}
        self.paths = {(m, s): source_of(data_dir, m, s, learned) for (m, s), ev in self.evals.items() if ev}
        if not learned and not any(self.evals[("base", s)] for s in seeds):
            raise SystemExit(f"no evaluated base policy under {runs}; run experiments/science.py first")
        self.have = {m: [s for s in seeds if self.evals[(m, s)] is not None and self.evals[("base", s)] is not None]
                     for m in arms}
        self.meta = meta
        self.verifiers = {s: load_verifier(runs, data_dir, s) for s in seeds}  # the seeds' learned verifiers
        self.missing = [m for m in arms if not self.have[m]]
        self.arms = [m for m in arms if self.have[m]]
        self.main = ["base"] + [m for m in self.arms if self.groups.get(m, "main") == "main" and m != "base"]

    def matrix(self, m: str, t: str, name: str, on: list[int]) -> torch.Tensor:
        """[S, G] per-prompt values of one metric for arm m at temperature t, on seeds `on`."""
        return torch.tensor([self.evals[(m, s)]["temps"][t][name] for s in on], dtype=torch.float64)

    def seeds_with(self, m: str, t: str, name: str) -> list[int]:
        """The seeds of arm m whose evaluation has metric `name` at temperature t (e.g. `lbo@k`: only the runs
        evaluated under the learned verifier)."""
        return [s for s in self.have.get(m, []) if name in self.evals[(m, s)]["temps"].get(t, {})]

    def values(self, m: str, t: str, name: str) -> list[torch.Tensor]:
        return list(self.matrix(m, t, name, self.have[m]))

    def stat(self, m: str, t: str, name: str, minus: str | None = None, alpha: float = ALPHA,
             seeds: list[int] | None = None) -> dict | None:
        """mean(m) or the paired mean(m − minus), on the seeds both have (within `seeds` if given); None if they
        share none."""
        on = [s for s in self.have[m] if (minus is None or s in self.have[minus]) and (seeds is None or s in seeds)]
        if not on:
            return None
        return seed_stat(self.matrix(m, t, name, on), None if minus is None else self.matrix(minus, t, name, on),
                         alpha)

    def identical(self) -> list[dict]:
        """Pairs of arms whose evaluations are equal, every per-prompt number at every temperature, on every seed
        they share (e.g. two objectives with equal weights on this reward train bitwise the same policy)."""
        # once per run, not once per pair; without the learned verifier's numbers (lbo@k, learned_accepts), which
        # only the learned group's runs have: the check is about the policies, not about which evaluations they got
        fingerprint = {(m, s): json.dumps({t: {k: v for k, v in per.items() if not k.startswith(LEARNED_ONLY)}
                                           for t, per in self.evals[(m, s)]["temps"].items()}, sort_keys=True)
                       for m in self.arms for s in self.have[m]}
        out = []
        for i, a in enumerate(self.arms):
            for b in self.arms[i + 1:]:
                shared = [s for s in self.have[a] if s in self.have[b]]
                if shared and all(fingerprint[(a, s)] == fingerprint[(b, s)] for s in shared):
                    out.append({"arms": [a, b], "seeds": shared})
        return out

    @property
    def levels(self) -> torch.Tensor:
        """The arithmetic level of each evaluation prompt (the same prompts for every policy)."""
        return torch.tensor(self.evals[("base", self.have["base"][0])]["levels"])


def _report(runs: str, arms: list[str], seeds: list[int], out: str, meta: dict, data_dir: str) -> dict:
    groups = meta.get("groups", {})
    # the study's data set (every group but the learned one) and the learned group's (`load`)
    st = Study(runs, [m for m in arms if groups.get(m) != "learned"], seeds, meta, data_dir)
    lst = Study(runs, [m for m in arms if m in LEARNED_ARMS], seeds, meta, data_dir, learned=True)
    # every run in either data set once (seed 1 of the learned group is the study's): one thread each, so wall
    # time = CPU time
    runs_in = {path: study.evals[key] for study in (st, lst) for key, path in study.paths.items()}
    train_min, eval_min = (sum(ev[key] for ev in runs_in.values()) / 60 for key in ("train_seconds", "seconds"))
    cpu = {"runs": len(runs_in), "train": train_min, "eval": eval_min, "total": train_min + eval_min}
    have = {m: sorted(set(st.have.get(m, [])) | set(lst.have.get(m, []))) for m in arms}
    data = {"meta": {**st.meta, "cpu_minutes": cpu, "seeds": seeds, "arms": [m for m in arms if have[m]],
                     "seeds_per_arm": {m: v for m, v in have.items() if v}, "missing": [m for m in arms if not have[m]],
                     "learned_data": learned_data(lst, data_dir),
                     "statistics": f"hierarchical bootstrap over seeds and prompts, {N_BOOT} resamples",
                     "identical_runs": st.identical()},
            "results": results(st)}
    R = data["results"]
    lines = header(st)
    data["verdicts"] = verdict_section(st, lines)
    data["learned_verdicts"] = learned_verdict_section(lst, lines)
    headline_section(st, R, lines)
    variant_section(st, R, lines)
    sweep = sweep_section(st, lines)
    if sweep:
        data["sweep"] = sweep
    gameable = gameable_section(st, R, lines)
    if gameable:
        data["gameable"] = gameable
    data["reversal"] = reversal_section(st, lst, data["verdicts"], data["learned_verdicts"], lines,
                                        read_within(os.path.join(os.path.dirname(out) or ".", WITHIN_FILE)))
    absolute_sections(st, R, lines)
    data["meta_strategy"] = meta_strategy_section(st, lines)
    data["coscaling"], data["T_star_by_difficulty_base"] = coscaling_section(st, R, lines)

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    pngs = science_plots.plots(R, st.main, st.labels, st.temps, st.ks, data["meta_strategy"], data["coscaling"],
                               out)
    if sweep:
        pngs.append(science_plots.sweep_plot(sweep, st.labels, out))
    if gameable and gameable["curves"]:
        pngs.append(science_plots.gameable_plot(gameable, st.labels, out))
    if any(v for p in data["reversal"]["pairs"].values() for v in p["kinds"].values()):
        pngs.append(science_plots.reversal_plot(data["reversal"], st.labels, [
            (kind, f"{kind}\n{name.format(n=st.n_bon)}") for kind, name, _ in VERIFIER_KINDS], out))
    lines += ["Plots: " + ", ".join(f"`{os.path.basename(p)}`" for p in pngs), ""]
    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return data


def learned_data(lst: Study, data_dir: str) -> dict:
    """Where each seed's learned-group runs come from: "study" (the study's own runs, re-evaluated under the learned
    verifier) or "rerun" (data_dir/learned/: the learned group's runs are another realization of the seed, e.g. run
    on another machine, whose warm start and so every run differ from the study's)."""
    return {str(s): "study" if source_of(data_dir, "base", s, True) == science_data.path_of(data_dir, "base", s)
            else "rerun" for s in lst.seeds if any(key[1] == s for key in lst.paths)}


def results(st: Study) -> dict:
    """'arm|T=t|metric' -> its value, its change against the base, against RL (main and sweep arms) and against
    the arm it varies (variants), each a seed-level interval."""
    metric_names = [f"{p}@{k}" for p in ("pass", "bo", "gbo") for k in st.ks] + [f"maj@{k}" for k in (8, 32)]
    extra = ["distinct", "entropy", "modal_share", "modal_correct", "verifier_accepts", "biased_score", "length"]
    out = {}
    for m in st.arms:
        ref = st.meta.get("references", {}).get(m)
        for t in st.temps:
            for name in metric_names + extra:
                entry = {"value": st.stat(m, t, name)}
                if m != "base":
                    entry["change_vs_base"] = st.stat(m, t, name, minus="base")
                if m not in ("base", "rl") and "rl" in st.arms and st.groups.get(m) in ("main", "sweep"):
                    entry["minus_rl"] = st.stat(m, t, name, minus="rl")
                if ref in st.arms:
                    entry["minus_reference"] = st.stat(m, t, name, minus=ref)
                out[f"{m}|T={t}|{name}"] = {k: v for k, v in entry.items() if v is not None}
    return out


def header(st: Study) -> list[str]:
    meta, n_prompts = st.meta, len(st.levels)
    lines = [f"# Science runs: every arm on `arithmetic`, seeds {st.seeds}", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}, torch {meta['torch']}; "
             f"{meta['minutes']:.0f} min for this call, reusing finished runs). Each policy: {n_prompts} held-out "
             f"prompts x 32 samples per temperature. Values in %, mean over seeds [95% seed-level interval: "
             f"hierarchical bootstrap over seeds and prompts] (per-seed values). BoK (`bo@k`): the seed's noisy "
             f"verifier (false-positive rate {meta['noisy_verifier']['fpr']}, false-negative rate "
             f"{meta['noisy_verifier']['fnr']}) picks one of k samples, the task scores it; `gbo@k`: the biased "
             f"verifier picks. Tuning seeds {list(meta.get('tuning_seeds', ()))} are not reported.", ""]
    return lines + ["Seeds per arm: " + "; ".join(f"{st.labels[m]}: {len(st.have[m])}" for m in st.arms) + "."
                    + (f" Not evaluated yet (left out): {', '.join(st.missing)}." if st.missing else ""), ""]


def verdict_section(st: Study, lines: list[str]) -> dict:
    """One primary claim at ALPHA, the secondary family Holm-corrected; a claim on fewer than MIN_SEEDS seeds is
    "inconclusive" whatever its interval (kept as `direction`)."""
    claims = []
    for key, text, m, minus, name, t, sign in CLAIMS:
        name = name.format(n=st.n_bon)
        on = CLAIM_SEEDS.get(key)
        if m in st.arms and minus in st.arms and t in st.temps and st.stat(m, t, name, minus, seeds=on) is not None:
            claims.append((key, text, m, minus, name, t, sign, st.stat(m, t, name, minus, seeds=on)))
    secondary = [c for c in claims if c[0] != "headline"]
    holm = metrics.holm([c[-1]["p"] for c in secondary], ALPHA)
    levels = {c[0]: lv for c, lv in zip(secondary, holm["levels"])}
    adjusted = {c[0]: p for c, p in zip(secondary, holm["adjusted"])}
    rows, verdicts = [], {}
    for key, text, m, minus, name, t, sign, _ in claims:
        level = levels.get(key, ALPHA)
        s = st.stat(m, t, name, minus, alpha=level, seeds=CLAIM_SEEDS.get(key))
        few = len(s["per_seed"]) < MIN_SEEDS
        direction = verdict(s, sign)
        v = "inconclusive" if few else direction
        verdicts[key] = {"claim": text, "arm": m, "minus": minus, "metric": name, "T": t, "sign": sign,
                         "level": level, "p_holm": adjusted.get(key), "verdict": v, "too_few_seeds": few,
                         "direction": direction, **s}
        rows.append([text, f"{st.labels[m]} − {st.labels[minus]}, {name}, T = {t}", "primary" if key == "headline"
                     else f"{1 - level:.4f}", fmt(s, scale_of(name), signed=True, seeds=len(s["per_seed"]) <= 8),
                     f"{s['p']:.3g}" + ("" if key == "headline" else f" / {adjusted[key]:.3g}"),
                     f"**{v}**" + (f" ({len(s['per_seed'])} seed(s), {MIN_SEEDS} needed)" if few else "")])
    lines += ["## Verdicts (seed-level intervals; secondary claims Holm-corrected)", "",
              "Interval level: 95% for the primary claim; for a secondary claim, its Holm level. p: bootstrap "
              "p-value / Holm-adjusted.", ""]
    lines += table(["claim", "comparison", "level", "points [interval] (per seed)", "p", "verdict"], rows) + [""]
    return verdicts


def learned_verdicts(st: Study) -> dict:
    """The verdicts of LEARNED_CLAIMS: Holm family "learned" (the four claims among themselves), each read on its
    pre-registered seeds LEARNED_SEEDS only. A claim whose runs under the learned verifier are not all in is
    "pending" with the seeds it has: never a verdict on fewer seeds. Holm's adjusted p-values only grow with any
    input p, so a pending claim enters the family at p = 1 (ranked last): the complete claims' levels are then at
    most their final levels, and a verdict given now is one the final family keeps. A claim is "supported" /
    "opposite" only if Holm's step-down rejects it and its interval at its Holm level excludes 0 (that way)."""
    found = []
    for key, text, m, minus, name, t, sign in LEARNED_CLAIMS:
        name = name.format(n=st.n_bon)
        both = set(st.seeds_with(m, t, name)) & set(st.seeds_with(minus, t, name))
        have = [s for s in LEARNED_SEEDS if s in both]
        s95 = st.stat(m, t, name, minus, seeds=list(LEARNED_SEEDS)) if len(have) == len(LEARNED_SEEDS) else None
        found.append((key, text, m, minus, name, t, sign, have, s95))
    holm = metrics.holm([1.0 if c[-1] is None else c[-1]["p"] for c in found], ALPHA)
    out = {}
    for i, (key, text, m, minus, name, t, sign, have, s95) in enumerate(found):
        entry = {"claim": text, "arm": m, "minus": minus, "metric": name, "T": t, "sign": sign, "family": "learned",
                 "seeds_in": have, "seeds_planned": list(LEARNED_SEEDS), "pending": s95 is None}
        if s95 is None:
            entry.update(verdict="pending", level=None, p_holm=None)
        else:
            level = holm["levels"][i]
            stat = st.stat(m, t, name, minus, alpha=level, seeds=list(LEARNED_SEEDS))
            direction = verdict(stat, sign)
            entry.update(level=level, p_holm=holm["adjusted"][i], direction=direction, holm_reject=holm["reject"][i],
                         verdict=direction if holm["reject"][i] else "inconclusive", **stat)
        out[key] = entry
    return out


def pending_text(v: dict) -> str:
    have = v["seeds_in"]
    return (f"pending: {len(have)} of {len(v['seeds_planned'])} seeds in"
            + (f" ({', '.join(map(str, have))})" if have else ""))


def learned_verdict_section(st: Study, lines: list[str]) -> dict:
    """The table of the learned-verifier claims (`learned_verdicts`)."""
    LV = learned_verdicts(st)
    rows = []
    for v in LV.values():
        comparison = f"{st.labels.get(v['arm'], v['arm'])} − {st.labels.get(v['minus'], v['minus'])}, {v['metric']}, " \
                     f"T = {v['T']}"
        if v["pending"]:
            rows.append([v["claim"], comparison, "—", "—", "—", f"**{pending_text(v)}**"])
        else:
            rows.append([v["claim"], comparison, f"{1 - v['level']:.4f}", fmt(v, signed=True, seeds=True),
                         f"{v['p']:.3g} / {v['p_holm']:.3g}", f"**{v['verdict']}**"])
    seeds = f"{LEARNED_SEEDS[0]}-{LEARNED_SEEDS[-1]}"
    lines += [f"## Verdicts under the learned verifier (LEARNED_CLAIMS: seeds {seeds}, Holm family \"learned\")", "",
              f"`lbo@k`: the seed's learned verifier picks one of k samples, the task scores the pick. Each claim is "
              f"read on seeds {seeds} only; until all are in it is pending (no verdict on fewer seeds). Level: the "
              "claim's Holm level within these four"
              + (" (pending claims counted at p = 1: a level can only rise when they come in)."
                 if any(v["pending"] for v in LV.values()) and not all(v["pending"] for v in LV.values()) else ".")
              + " p: bootstrap p-value / Holm-adjusted.", ""]
    lines += table(["claim", "comparison", "level", "points [interval] (per seed)", "p", "verdict"], rows) + [""]
    return LV


# The Bo8 reversal read against the verifier's kind: (name, the pair's noisy-verifier claim, its learned-verifier
# claim, arm, minus, the paper's sign of arm − minus on BoN performance).
REVERSAL_PAIRS = (("bon_rlb_p_minus_rl", "headline_bok", "learned_headline_bok", "bon_rlb_p", "rl", +1),
                  ("sft_minus_base", "sft_bok", "learned_sft_bok", "sft", "base", -1))
# (kind, metric, what picks the one of k that is scored)
VERIFIER_KINDS = (("oracle", "pass@{n}", "the task's own check (pass@k)"),
                  ("noisy", "bo@{n}", "hash noise: the noisy verifier, errors a hash of the response"),
                  ("biased", "gbo@{n}", "length bias: the biased verifier"),
                  ("learned", "lbo@{n}", "learned: the seed's reward model"))


DESCRIPTIVE = {"supported": "the paper's direction", "opposite": "against the paper", "inconclusive": "contains 0"}


def reversal_reading(noisy: dict | None, learned: dict | None, biased: dict | None = None) -> tuple[str, str]:
    """(code, sentence) of what the data say about one pair's Bo8 reversal: is it a property of the hash-noise
    verifier, or does it persist under the learned one? `noisy` / `learned`: the pair's claims (verdict dicts);
    `biased`: the descriptive change under the length-bias verifier (its clause only; never the code).

    Codes: "missing" (no noisy verdict), "no_reversal" (the noisy claim is not "opposite": nothing to explain),
    "pending" (the learned claim has not all its seeds), "noise_property" (learned: supported), "persists" (learned:
    opposite), "undecided" (learned: inconclusive)."""
    if noisy is None or learned is None:
        return "missing", "runs missing: no reading"
    if learned["pending"]:
        lv = pending_text(learned)
    else:
        lv = f"{fmt(learned, signed=True)} at its {100 * (1 - learned['level']):.2f}% Holm level, {learned['verdict']}"
    noisy_text = (f"hash noise {fmt(noisy, signed=True)} ({100 * (1 - noisy['level']):.2f}% Holm level, "
                  f"{noisy['verdict']})")
    if biased:
        noisy_text += f", length bias {fmt(biased, signed=True)} (95%, descriptive: {DESCRIPTIVE[biased['direction']]})"
    if noisy["verdict"] != "opposite":
        return "no_reversal", (f"no reversal under the noisy verifier to explain ({noisy_text}); under the learned "
                               f"verifier: {lv}")
    if learned["pending"]:
        return "pending", f"{lv} ({noisy_text})"
    if learned["verdict"] == "supported":
        return "noise_property", (f"the reversal is a property of the hash-noise verifier: under the learned "
                                  f"verifier the change goes the paper's way, {lv} ({noisy_text})")
    if learned["verdict"] == "opposite":
        return "persists", f"it persists under a learned verifier: {lv} ({noisy_text})"
    return "undecided", (f"under the learned verifier the interval contains 0, {lv}: the data support neither "
                         "reading (the reversal is not shown to persist, nor to be a property of the hash-noise "
                         f"verifier) ({noisy_text})")


# experiments/learned_selection.py's measurement of the learned verifiers' ranking within one prompt, beside the report
WITHIN_FILE = "learned-selection.json"


def read_within(path: str) -> list[dict]:
    """The seeds measured by experiments/learned_selection.py (those not left out), or [] without its file."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [r for r in json.load(f) if "left_out" not in r]


def reversal_section(st: Study, lst: Study, V: dict, LV: dict, lines: list[str],
                     within: list[dict] | None = None) -> dict:
    """The Bo8 reversal (BoN-RLB(P) − RL, SFT − base) against the verifier's kind (oracle, hash noise, length bias,
    learned), the reading of each pair, the same comparison under every selector on the learned group's own runs
    (`lst`: the policies its claims read, descriptive), the learned verifiers' held-out calibration per seed and the
    selection accuracy of the learned verifier by policy (each run's learned.json)."""
    n, out = st.n_bon, {"pairs": {}}
    for pair, noisy_key, learned_key, m, minus, sign in REVERSAL_PAIRS:
        on = list(CLAIM_SEEDS.get(noisy_key, st.seeds))
        kinds = {}
        for kind, name, _ in VERIFIER_KINDS:
            name = name.format(n=n)
            if kind == "noisy":
                kinds[kind] = V.get(noisy_key)
            elif kind == "learned":
                kinds[kind] = LV.get(learned_key)
            elif m in st.arms and minus in st.arms:  # descriptive: 95%, on the noisy claim's seeds
                stat = st.stat(m, "1", name, minus, seeds=on)
                kinds[kind] = stat and {**stat, "metric": name, "level": ALPHA, "descriptive": True,
                                        "direction": verdict(stat, sign)}
        code, text = reversal_reading(V.get(noisy_key), LV.get(learned_key), kinds.get("biased"))
        out["pairs"][pair] = {"arm": m, "minus": minus, "paper_sign": sign, "kinds": kinds, "reading": code,
                              "text": text, "learned_runs": same_policies(lst, m, minus, sign)}
    out["calibration"] = {str(s): v for s, v in lst.verifiers.items() if v is not None}
    out["selection"] = selection_by_policy(lst)
    rows = []
    for kind, name, what in VERIFIER_KINDS:
        cells = [kind_cell(out["pairs"][pair]["kinds"].get(kind)) for pair, *_ in REVERSAL_PAIRS]
        rows.append([what, name.format(n=n)] + cells)
    lines += [f"## The Bo{n} reversal against the verifier's kind (T = 1, points)", ""]
    lines += table(["what picks", "metric"] + [f"{st.labels.get(m, m)} − {st.labels.get(minus, minus)}"
                                               for _, _, _, m, minus, _ in REVERSAL_PAIRS], rows) + [""]
    lines += ["Reading: " + "; ".join(f"{st.labels.get(p['arm'], p['arm'])} − {st.labels.get(p['minus'], p['minus'])}"
                                      f": {p['text']}" for p in out["pairs"].values()) + ".", ""]
    lines += same_policies_table(out["pairs"], st.labels, n)
    out["within_prompt"] = within or []
    out["selection_reading"] = selection_reading(out["selection"], st.labels, n, out["within_prompt"])
    lines += calibration_table(out["calibration"]) + selection_table(out["selection"], st.labels, n)
    lines += [out["selection_reading"], ""] if out["selection_reading"] else []
    return out


def worse_than_random(sel: dict) -> list[str]:
    """The policies on which the learned verifier's pick is correct less often than a random sample (means)."""
    return [m for m, v in sel.items() if v["mean"]["pick_correct"] < v["mean"]["random_pick"]]


def selection_reading(sel: dict, labels: dict, n: int, within: list[dict] | None = None) -> str:
    """What the selection table says of the learned verifier as a selector: whether its pick of n beats a random
    sample (pass@1) on each policy (means over seeds; descriptive), and, where experiments/learned_selection.py
    measured it (`within`), how it ranks the answers to one prompt."""
    if not sel:
        return ""
    worse = worse_than_random(sel)
    cells = ", ".join(f"{labels.get(m, m)} {100 * v['mean']['pick_correct']:.1f} vs "
                      f"{100 * v['mean']['random_pick']:.1f}" for m, v in sel.items())
    if not worse:
        return (f"As a selector the learned verifier beats a random pick on every policy (its pick of {n} correct vs "
                f"a random sample, %, mean over seeds: {cells}).")
    text = (f"As a selector the learned verifier is worse than a random pick on {len(worse)} of {len(sel)} policies "
            f"(its pick of {n} correct vs a random sample, %, mean over seeds: {cells}), although it classifies "
            "single responses well (accuracy and AUC above, pooled over prompts).")
    if within:
        pooled, inside = (sum(r[k] for r in within) / len(within) for k in ("auc", "auc_within"))
        seeds = ", ".join(str(r["seed"]) for r in within)
        text += (f" Measured on the base policy's held-out samples (experiments/learned_selection.py, seeds "
                 f"{seeds}): pooled AUC {pooled:.3f}, but within one prompt {inside:.3f} ("
                 + ", ".join(f"{r['auc_within']:.2f}" for r in within) + " per seed; 0.5 is a coin): it tells "
                 "easy prompts from hard ones far better than a right answer from a wrong one to the same prompt, "
                 "and its top score within a prompt goes to a wrong answer more often than a random pick would.")
    return text + (" Bo@k under it reads how a policy fares with such a reward model, not with a good selector.")


def same_policies(lst: Study, m: str, minus: str, sign: int) -> dict:
    """arm − minus under every selector (VERIFIER_KINDS) on the learned group's runs, T = 1, on the seeds where both
    have all four metrics: one set of policies read under each kind of selector (descriptive 95% intervals)."""
    n = lst.n_bon
    names = {kind: name.format(n=n) for kind, name, _ in VERIFIER_KINDS}
    on = [s for s in LEARNED_SEEDS if all(s in lst.seeds_with(a, "1", name) for a in (m, minus)
                                           for name in names.values())]
    if not on:
        return {}
    out = {}
    for kind, name in names.items():
        stat = lst.stat(m, "1", name, minus, seeds=on)
        out[kind] = {**stat, "metric": name, "level": ALPHA, "descriptive": True, "direction": verdict(stat, sign)}
    return out


def same_policies_table(pairs: dict, labels: dict, n: int) -> list[str]:
    """`same_policies` of each pair as a table (rows: the selectors)."""
    if not any(p["learned_runs"] for p in pairs.values()):
        return []
    rows = [[what, name.format(n=n)] + [kind_cell(p["learned_runs"].get(kind)) for p in pairs.values()]
            for kind, name, what in VERIFIER_KINDS]
    return (["The same comparisons on the learned group's own runs (the policies its claims read), under every "
             "selector (T = 1, points, descriptive 95% intervals):", ""]
            + table(["what picks", "metric"] + [f"{labels.get(p['arm'], p['arm'])} − "
                                                f"{labels.get(p['minus'], p['minus'])}" for p in pairs.values()],
                    rows) + [""])


def kind_cell(v: dict | None) -> str:
    """One cell of the reversal table: the change, its level and its verdict (claims) or direction (descriptive)."""
    if v is None:
        return "—"
    if v.get("pending"):
        return pending_text(v)
    seeds = len(v["per_seed"])
    if v.get("descriptive"):
        return f"{fmt(v, signed=True, seeds=True)}, {seeds} seeds, 95%, descriptive: {DESCRIPTIVE[v['direction']]}"
    return f"{fmt(v, signed=True, seeds=True)}, {seeds} seeds, {100 * (1 - v['level']):.2f}% -> {v['verdict']}"


def selection_by_policy(st: Study) -> dict:
    """Per policy evaluated under the learned verifier, T = 1: mean over its seeds of the verifier's calibration on
    the policy's samples (learned.json) and how often the verifier's pick of k = N' is correct (`lbo@N'`) beside a
    random pick (pass@1) and the oracle's (pass@N')."""
    n, out = st.n_bon, {}
    for m in st.arms:
        seeds = [s for s in st.seeds_with(m, "1", f"lbo@{n}") if st.evals[(m, s)].get("learned")]
        if not seeds:
            continue
        per_seed = {}
        for s in seeds:
            calib = st.evals[(m, s)]["learned"]["temps"]["1"]
            ev = st.evals[(m, s)]["temps"]["1"]
            per_seed[str(s)] = {**{k: calib.get(k) for k in ("base_rate", "accuracy", "auc", "fpr", "fnr", "brier")},
                                "pick_correct": sum(ev[f"lbo@{n}"]) / len(ev[f"lbo@{n}"]),
                                "random_pick": sum(ev["pass@1"]) / len(ev["pass@1"]),
                                "oracle_pick": sum(ev[f"pass@{n}"]) / len(ev[f"pass@{n}"])}
        keys = next(iter(per_seed.values())).keys()
        mean = {k: (None if any(v[k] is None for v in per_seed.values())
                    else sum(v[k] for v in per_seed.values()) / len(per_seed)) for k in keys}
        out[m] = {"seeds": seeds, "mean": mean, "per_seed": per_seed}
    return out


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def calibration_table(calib: dict) -> list[str]:
    """The seeds' learned verifiers on held-out prompts (test split) x their base policy's samples, at T = 1."""
    if not calib:
        return ["No learned verifier's calibration report is in yet.", ""]
    rows = []
    for seed, report in calib.items():
        held = report["heldout"]
        k = held["samples"]
        m = held["1"]
        rows.append([seed, str(m["n"]), _pct(m["base_rate"]), _pct(m["accuracy"]),
                     "—" if m["auc"] is None else f"{m['auc']:.3f}", _pct(m["fpr"]), _pct(m["fnr"]),
                     f"{m['brier']:.3f}", _pct(m[f"bo@{k}"]), _pct(m[f"pass@{k}"]), _pct(m["pass@1"])])
    k = next(iter(calib.values()))["heldout"]["samples"]
    return (["Learned verifiers, held-out calibration at T = 1 (per seed: test-split prompts x the seed's base-policy "
             f"samples; threshold 0.5; Bo{k}: the verifier picks one of {k}, pass@1: a random pick, pass@{k}: the "
             "oracle's):", ""]
            + table(["seed", "samples", "correct %", "accuracy %", "AUC", "FPR %", "FNR %", "Brier", f"Bo{k} %",
                     f"pass@{k} %", "pass@1 %"], rows) + [""])


def selection_table(sel: dict, labels: dict, n: int) -> list[str]:
    """`selection_by_policy` as a table: the verifier's calibration on each policy's samples and its picks."""
    if not sel:
        return ["No policy has been evaluated under the learned verifier yet.", ""]
    rows = []
    for m, v in sel.items():
        mean = v["mean"]
        rows.append([labels.get(m, m), str(len(v["seeds"])), _pct(mean["accuracy"]),
                     "—" if mean["auc"] is None else f"{mean['auc']:.3f}"]
                    + [_pct(mean[k]) for k in ("fpr", "fnr", "pick_correct", "random_pick", "oracle_pick")])
    return (["Selection accuracy by policy (T = 1: the learned verifier on each policy's own evaluation samples, "
             f"mean over the seeds in): `pick correct`: how often the verifier's pick of {n} is correct (lbo@{n}); "
             f"a random pick: pass@1; the oracle's: pass@{n}.", ""]
            + table(["policy", "seeds", "accuracy %", "AUC", "FPR %", "FNR %", f"pick correct (Bo{n}) %",
                     "random pick %", f"oracle pick (pass@{n}) %"], rows) + [""])


def headline_section(st: Study, R: dict, lines: list[str]) -> None:
    """Every main arm against the base and against RL at k = N'."""
    n = st.n_bon
    lines += [f"## Headline at T = 1: change against the base, and against RL (N'=1), at k = N' = {n}", ""]
    rows = []
    for m in st.main[1:]:
        e, b = R[f"{m}|T=1|pass@{n}"], R[f"{m}|T=1|bo@{n}"]
        rows.append([st.labels[m], fmt(e["change_vs_base"], signed=True, seeds=True),
                     fmt(e["minus_rl"], signed=True) if "minus_rl" in e else "—",
                     fmt(b["change_vs_base"], signed=True),
                     fmt(b["minus_rl"], signed=True) if "minus_rl" in b else "—",
                     fmt(R[f"{m}|T=1|pass@1"]["change_vs_base"], signed=True),
                     fmt(R[f"{m}|T=1|pass@32"]["change_vs_base"], signed=True)])
    lines += table(["arm", f"pass@{n} - base (per seed)", f"pass@{n} - RL", f"Bo{n} - base",
                    f"Bo{n} - RL", "pass@1 - base", "pass@32 - base"], rows) + [""]


def variant_section(st: Study, R: dict, lines: list[str]) -> None:
    """The published variants and ablations against the form they vary."""
    variants, n = [m for m in st.arms if st.groups.get(m) == "variant"], st.n_bon
    if not variants:
        return
    lines += [f"## Published variants and ablations at T = 1, against the arm they vary (points, k = {n})", ""]
    rows = []
    for m in variants:
        e, b = R[f"{m}|T=1|pass@{n}"], R[f"{m}|T=1|bo@{n}"]
        ref = st.meta["references"][m]
        rows.append([st.labels[m], st.labels.get(ref, ref),
                     fmt(e["minus_reference"], signed=True, seeds=True) if "minus_reference" in e else "—",
                     fmt(b["minus_reference"], signed=True) if "minus_reference" in b else "—",
                     fmt(e["change_vs_base"], signed=True)])
    lines += table(["variant", "reference", f"pass@{n} - reference (per seed)", f"Bo{n} - reference",
                    f"pass@{n} - base"], rows) + [""]


def sweep_section(st: Study, lines: list[str]) -> dict | None:
    """The N' sweep of the headline method: pass@N at T = 1 for N = 1..32, one row per N' (table, best N').

    Every row is on the seeds that every N' has (the main N' arm may have more): means over different seed sets
    would compare training luck as much as N'."""
    by_nbon = {st.meta["n_bon"][m]: m for m in st.arms if m == "bon_rlb_p" or st.groups.get(m) == "sweep"}
    if len(by_nbon) < 2:
        return None
    order = sorted(by_nbon)
    common = [s for s in st.have["base"] if all(s in st.have[m] for m in by_nbon.values())]
    if not common:
        return None
    n_all = sorted(int(k.split("@")[1]) for k in st.evals[("base", st.have["base"][0])]["temps"]["1"] if
                   k.startswith("pass@"))
    curves, rows = {}, []
    for nb in ["base", *order]:
        m = "base" if nb == "base" else by_nbon[nb]
        curves[str(nb)] = {str(k): st.stat(m, "1", f"pass@{k}", seeds=common) for k in n_all}
        at = ("—" if nb == "base" else
              fmt(st.stat(m, "1", f"pass@{nb}", minus="base", seeds=common), signed=True, seeds=True))
        rows.append([st.labels[m]] + [fmt(curves[str(nb)][str(k)]) for k in st.ks] + [at])
    best = []
    for k in st.ks:
        means = {nb: curves[str(nb)][str(k)]["mean"] for nb in order}
        best.append(str(max(means, key=means.get)))
    lines += ["## N' sweep of BoN-RLB(P): pass@N at T = 1 for each trained N' (seed-level intervals)", "",
              f"Rows: the N' the policy was trained for, on the seeds every N' has ({', '.join(map(str, common))}); "
              "columns: the test N. Last column: the change against the base at N = N' (per seed). Every N in "
              "1..32 is in science.json and in the plot.", ""]
    lines += table(["trained N'"] + [f"pass@{k}" for k in st.ks] + ["pass@N' - base at N = N'"], rows)
    lines += ["", "Best trained N' at each test N (highest mean pass@N; read with the intervals above): "
              + ", ".join(f"N = {k}: N' = {b}" for k, b in zip(st.ks, best)) + ".", ""]
    return {"curves": curves, "best_n_bon": dict(zip(map(str, st.ks), best)), "n_bon": order, "seeds": common}


GAMEABLE = ("rl_v.biased", "bon_rl_v.biased", "bon_rl_v.biased_reward")
# (key in science.json, arm, minus, row label): the paired differences of the gameable section. The first is the
# claims' pair (its intervals in the verdicts are at the Holm level); the other two are descriptive (95%): BoN-RL-V
# with every signal from the verifier, against RL-V (BoN-awareness alone) and against BoN-RL-V (the reward source).
GAMEABLE_DIFFS = (
    ("bon_rl_v_minus_rl_v", "bon_rl_v.biased", "rl_v.biased", "BoN-RL-V minus RL-V"),
    ("verifier_reward_minus_rl_v", "bon_rl_v.biased_reward", "rl_v.biased", "BoN-RL-V (verifier rewards) minus RL-V"),
    ("verifier_reward_minus_bon_rl_v", "bon_rl_v.biased_reward", "bon_rl_v.biased",
     "BoN-RL-V (verifier rewards) minus BoN-RL-V"),
)


def gameable_section(st: Study, R: dict, lines: list[str]) -> dict | None:
    """RL-V, BoN-RL-V and BoN-RL-V with the verifier's reward against the biased verifier: the proxy (its score)
    against the truth (pass@N), BoK under it, the paired differences and the training curves of verifier score and
    true reward."""
    arms, n = [m for m in GAMEABLE if m in st.arms], st.n_bon
    if not arms:
        return None
    names = ("biased_score", f"pass@{n}", f"gbo@{n}", "gbo@32", "length")
    rows = [[st.labels[m]] + [fmt(R[f"{m}|T=1|{name}"]["change_vs_base"], scale_of(name), signed=True,
                                  seeds=name == f"pass@{n}") for name in names] for m in arms]
    diffs = {}
    for key, m, minus, label in GAMEABLE_DIFFS:
        if m in arms and minus in arms:  # paired on the seeds both arms have
            diff = {name: st.stat(m, "1", name, minus=minus) for name in names}
            if all(diff.values()):
                diffs[key] = diff
                rows.append([label] + [fmt(v, scale_of(name), signed=True, seeds=name == f"pass@{n}")
                                       for name, v in diff.items()])
    lines += ["## Gameable verifier: RL-V and BoN-RL-V trained against the biased verifier (T = 1, change vs base)",
              "", "The biased verifier scores 0.25 x correctness + 0.74 x length (non-space characters, capped at 8) "
              "+ 0.01 x jitter: three extra characters outweigh correctness. Training prompts repeat (a pool of "
              f"{st.meta.get('pool', 512)}). `biased_score`: the verifier's mean score of the policy's samples (the "
              "proxy); pass@k: the truth; `gbo@k`: BoK with the biased verifier picking. BoN-RL-V's signal is the "
              "task reward of the verifier's pick; with `--bon_rl_v_reward verifier` it is the verifier's score of "
              "its pick (every signal from the verifier, as for RL-V). Differences: 95% seed-level intervals.", ""]
    lines += table(["arm", "biased score", f"pass@{n} (per seed)", f"gBo{n}", "gBo32", "length"], rows) + [""]
    curves = {}
    for m in arms:
        per_seed = [c for c in (st.curves[(m, s)] for s in st.have[m]) if c is not None]
        if per_seed:
            length = min(len(c["step"]) for c in per_seed)
            curves[m] = {key: [sum(c[key][i] for c in per_seed) / len(per_seed) for i in range(length)]
                         for key in ("reward", "verifier_score")}
            curves[m]["step"] = per_seed[0]["step"][:length]
            curves[m]["seeds"] = len(per_seed)
    if curves:
        lines += ["Training curves (mean over seeds of each step's true reward and verifier score): "
                  "`science-gameable.png`.", ""]
    return {"arms": arms, "curves": curves, **{key: diffs.get(key, {}) for key, *_ in GAMEABLE_DIFFS}}


def absolute_sections(st: Study, R: dict, lines: list[str]) -> None:
    """The main arms' absolute pass@k and BoK per temperature, their transfer across temperatures, diversity."""
    methods, n = st.main, st.n_bon
    for t in st.temps:
        lines += [f"## T = {t}: pass@k and BoK (absolute)", ""]
        names = [f"pass@{k}" for k in st.ks] + [f"bo@{k}" for k in (8, 32)] + ["maj@8", "maj@32"]
        rows = [[st.labels[m]] + [fmt(R[f"{m}|T={t}|{name}"]["value"]) for name in names] for m in methods]
        lines += table(["method"] + names, rows) + [""]
    lines += [f"## Transfer across test temperatures: pass@{n} and Bo{n} change against the base", ""]
    rows = [[st.labels[m]] + [fmt(R[f"{m}|T={t}|{p}@{n}"]["change_vs_base"], signed=True)
                              for p in ("pass", "bo") for t in st.temps] for m in methods[1:]]
    lines += table(["method"] + [f"{p}@{n} T={t}" for p in ("pass", "bo") for t in st.temps], rows) + [""]
    lines += ["## Diversity at T = 1 (per prompt, 32 samples): distinct final answers, entropy of the answer "
              "distribution (nats), share of samples on the modal answer, modal answer correct (%)", ""]
    rows = [[st.labels[m], fmt(R[f"{m}|T=1|distinct"]["value"], 1.0), fmt(R[f"{m}|T=1|entropy"]["value"], 1.0),
             fmt(R[f"{m}|T=1|modal_share"]["value"]), fmt(R[f"{m}|T=1|modal_correct"]["value"])] for m in methods]
    lines += table(["method", "distinct answers", "answer entropy", "modal share %", "modal correct %"], rows)
    lines += [""]


def difficulty_bins(st: Study) -> list[tuple[str, torch.Tensor]]:
    """(name, prompt mask) per arithmetic level. The level is fixed by the prompt: a bin defined from the evaluated
    samples themselves (e.g. the base's pass@1) would select on their noise."""
    levels = st.levels
    return [(f"level {int(lv)}", levels == lv) for lv in sorted(set(levels.tolist()))]


def meta_strategy_section(st: Study, lines: list[str]) -> dict:
    """Modal share and pass@1 by difficulty, for each main arm at T = 1."""
    bins, rows, out = difficulty_bins(st), [], {}
    for m in st.main:
        share, corr = st.values(m, "1", "modal_share"), st.values(m, "1", "pass@1")
        cells = []
        for name, mask in bins:
            s = sum(float(v[mask].mean()) for v in share) / len(share)
            c = sum(float(v[mask].mean()) for v in corr) / len(corr)
            out.setdefault(m, {})[name] = {"modal_share": s, "pass@1": c, "prompts": int(mask.sum())}
            cells.append(f"{100 * s:.0f} / {100 * c:.0f}")
        rows.append([st.labels[m]] + cells)
    lines += ["## Meta-strategy at T = 1: share of samples on the modal answer / pass@1 (%), by difficulty", "",
              "Difficulty = the arithmetic level (1: one operation on small numbers ... 3: several operations; "
              "bonfast/tasks/arithmetic.py); prompts per level: "
              + ", ".join(f"{name}: {int(mask.sum())}" for name, mask in bins) + ".", ""]
    lines += table(["method"] + [name for name, _ in bins], rows) + [""]
    return out


def coscaling_section(st: Study, R: dict, lines: list[str]) -> tuple[dict, dict]:
    """The co-scaling fit pass@N(T) ~ exp(a N^b) and T*(N) per main arm; T*(N) of the base by difficulty."""
    temps, ks = st.temps, st.ks
    lines += ["## Co-scaling: pass@N(T) ~ exp(a N^b), fitted on N = 1..32 (pooled means)", "",
              "a, b per temperature; `err`: largest |fit - measured| over N, in points. T*(N): the test temperature "
              "with the highest pass@N.", ""]
    rows, cos_json = [], {}
    for m in st.main:
        cells = []
        for t in temps:
            curve = torch.tensor([R[f"{m}|T={t}|pass@{k}"]["value"]["mean"] for k in ks], dtype=torch.float64)
            a, b = metrics.fit_coscaling(torch.tensor(ks), curve.clamp(1e-6, 1 - 1e-6))
            fit = torch.exp(a * torch.tensor(ks, dtype=torch.float64) ** b)
            err = float((fit - curve).abs().max())
            cos_json.setdefault(m, {})[t] = {"a": a, "b": b, "max_abs_err": err}
            cells.append(f"{a:.2f}, {b:.2f} (err {100 * err:.1f})")
        best = [max(temps, key=lambda t: R[f"{m}|T={t}|pass@{k}"]["value"]["mean"]) for k in ks]
        cos_json[m]["T_star"] = dict(zip([str(k) for k in ks], best))
        rows.append([st.labels[m]] + cells + [" ".join(best)])
    lines += table(["method"] + [f"a, b at T={t}" for t in temps] + [f"T*(N) for N = {', '.join(map(str, ks))}"],
                   rows) + [""]
    rows, tstar_json = [], {}
    for name, mask in difficulty_bins(st):
        best = []
        for k in ks:
            by_t = {}
            for t in temps:
                per_seed = st.values("base", t, f"pass@{k}")
                by_t[t] = sum(float(v[mask].mean()) for v in per_seed) / len(per_seed)
            top = max(by_t.values())
            winners = [t for t in temps if by_t[t] >= top - 1e-12]
            best.append(winners[0] if len(winners) == 1 else "tie")  # e.g. a bin no temperature solves
        tstar_json[name] = dict(zip([str(k) for k in ks], best))
        rows.append([name, str(int(mask.sum()))] + best)
    lines += ["T*(N) of the base policies by level (\"tie\": equal pass@N at the best temperatures):", ""]
    lines += table(["difficulty", "prompts"] + [f"N={k}" for k in ks], rows) + [""]
    return cos_json, tstar_json
