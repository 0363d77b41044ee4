"""Tables, verdicts and plots for experiments/science.py, from each run's eval.json (and metrics.jsonl).

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

import science_data
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


def load(runs: str, data_dir: str, arm: str, seed: int, ks) -> tuple[dict | None, dict | None]:
    """(evaluation, training curve) of one run, read through its compact file in `data_dir` (science_data), which
    is refreshed from runs/<arm>-seed<seed>/eval.json when that is newer; (None, None) if neither exists."""
    run_dir = os.path.join(runs, f"{arm}-seed{seed}")
    path = science_data.path_of(data_dir, arm, seed)
    source = os.path.join(run_dir, "eval.json")
    if os.path.exists(source) and (not os.path.exists(path) or os.path.getmtime(source) > os.path.getmtime(path)):
        science_data.save(science_data.read_eval(run_dir), path, tuple(ks), train_curve(runs, arm, seed),
                          science_data.train_seconds(run_dir))
    if not os.path.exists(path):
        return None, None
    return science_data.load(path)


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


def _report(runs: str, arms: list[str], seeds: list[int], out: str, meta: dict, data_dir: str) -> dict:
    labels, temps, ks = meta["labels"], [f"{t:g}" for t in meta["temps"]], meta["ks"]
    groups = meta.get("groups", {})
    n_bon = meta["train_n_bon"]
    loaded = {(m, s): load(runs, data_dir, m, s, meta["ks"]) for m in arms for s in seeds}
    evals = {key: ev for key, (ev, _) in loaded.items()}
    curves = {key: curve for key, (_, curve) in loaded.items()}
    if not any(evals[("base", s)] for s in seeds):
        raise SystemExit(f"no evaluated base policy under {runs}; run experiments/science.py first")
    have = {m: [s for s in seeds if evals[(m, s)] is not None and evals[("base", s)] is not None] for m in arms}
    done = [ev for ev in evals.values() if ev is not None]  # each ran on one thread: wall time = CPU time
    train_min, eval_min = (sum(ev[key] for ev in done) / 60 for key in ("train_seconds", "seconds"))
    meta = {**meta, "cpu_minutes": {"runs": len(done), "train": train_min, "eval": eval_min,
                                    "total": train_min + eval_min}}
    missing = [m for m in arms if not have[m]]
    arms = [m for m in arms if have[m]]
    main = ["base"] + [m for m in arms if groups.get(m, "main") == "main" and m != "base"]

    def matrix(m, t, name, on):
        return torch.tensor([evals[(m, s)]["temps"][t][name] for s in on], dtype=torch.float64)

    def values(m, t, name, on=None):
        return list(matrix(m, t, name, on or have[m]))

    def stat(m, t, name, minus: str | None = None, alpha: float = ALPHA):
        on = [s for s in have[m] if minus is None or s in have[minus]]  # paired: the seeds both have
        if not on:
            return None
        return seed_stat(matrix(m, t, name, on), None if minus is None else matrix(minus, t, name, on), alpha)

    metric_names = [f"{p}@{k}" for p in ("pass", "bo", "gbo") for k in ks] + [f"maj@{k}" for k in (8, 32)]
    extra = ["distinct", "entropy", "modal_share", "modal_correct", "verifier_accepts", "biased_score", "length"]
    data = {"meta": {**meta, "seeds": seeds, "arms": arms, "seeds_per_arm": have, "missing": missing,
                     "statistics": f"hierarchical bootstrap over seeds and prompts, {N_BOOT} resamples"},
            "results": {}}
    for m in arms:
        for t in temps:
            for name in metric_names + extra:
                entry = {"value": stat(m, t, name)}
                if m != "base":
                    entry["change_vs_base"] = stat(m, t, name, minus="base")
                if m not in ("base", "rl") and "rl" in arms and groups.get(m) in ("main", "sweep"):
                    entry["minus_rl"] = stat(m, t, name, minus="rl")
                ref = meta.get("references", {}).get(m)
                if ref in arms:
                    entry["minus_reference"] = stat(m, t, name, minus=ref)
                data["results"][f"{m}|T={t}|{name}"] = {k: v for k, v in entry.items() if v is not None}
    R = data["results"]
    n_prompts = len(evals[("base", have["base"][0])]["levels"])
    lines = [f"# Science runs: every arm on `arithmetic`, seeds {seeds}", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}, torch {meta['torch']}; "
             f"{meta['minutes']:.0f} min for this call, reusing finished runs). Each policy: {n_prompts} held-out "
             f"prompts x 32 samples per temperature. Values in %, mean over seeds [95% seed-level interval: "
             f"hierarchical bootstrap over seeds and prompts] (per-seed values). BoK (`bo@k`): the seed's noisy "
             f"verifier (false-positive rate {meta['noisy_verifier']['fpr']}, false-negative rate "
             f"{meta['noisy_verifier']['fnr']}) picks one of k samples, the task scores it; `gbo@k`: the biased "
             f"verifier picks. Tuning seeds {list(meta.get('tuning_seeds', ()))} are not reported.", ""]
    lines += ["Seeds per arm: " + "; ".join(f"{labels[m]}: {len(have[m])}" for m in arms) + "."
              + (f" Not evaluated yet (left out): {', '.join(missing)}." if missing else ""), ""]

    # --- verdicts: one primary claim, a Holm-corrected secondary family
    claims = []
    for key, text, m, minus, name, t, sign in CLAIMS:
        name = name.format(n=n_bon)
        if m in arms and minus in arms and t in temps and stat(m, t, name, minus) is not None:
            claims.append((key, text, m, minus, name, t, sign, stat(m, t, name, minus)))
    secondary = [c for c in claims if c[0] != "headline"]
    holm = metrics.holm([c[-1]["p"] for c in secondary], ALPHA)
    levels = {c[0]: lv for c, lv in zip(secondary, holm["levels"])}
    adjusted = {c[0]: p for c, p in zip(secondary, holm["adjusted"])}
    rows, verdicts = [], {}
    for key, text, m, minus, name, t, sign, _ in claims:
        level = levels.get(key, ALPHA)
        st = stat(m, t, name, minus, alpha=level)
        few = len(st["per_seed"]) < MIN_SEEDS
        direction = verdict(st, sign)
        v = "inconclusive" if few else direction
        verdicts[key] = {"claim": text, "arm": m, "minus": minus, "metric": name, "T": t, "sign": sign,
                         "level": level, "p_holm": adjusted.get(key), "verdict": v, "too_few_seeds": few,
                         "direction": direction, **st}
        rows.append([text, f"{labels[m]} − {labels[minus]}, {name}, T = {t}", "primary" if key == "headline"
                     else f"{1 - level:.4f}", fmt(st, scale_of(name), signed=True, seeds=len(st["per_seed"]) <= 8),
                     f"{st['p']:.3g}" + ("" if key == "headline" else f" / {adjusted[key]:.3g}"),
                     f"**{v}**" + (f" ({len(st['per_seed'])} seed(s), {MIN_SEEDS} needed)" if few else "")])
    data["verdicts"] = verdicts
    lines += ["## Verdicts (seed-level intervals; secondary claims Holm-corrected)", "",
              "Interval level: 95% for the primary claim; for a secondary claim, its Holm level. p: bootstrap "
              "p-value / Holm-adjusted.", ""]
    lines += table(["claim", "comparison", "level", "points [interval] (per seed)", "p", "verdict"], rows) + [""]

    # --- headline: every main arm against the base and against RL at k = N'
    lines += [f"## Headline at T = 1: change against the base, and against RL (N'=1), at k = N' = {n_bon}", ""]
    rows = []
    for m in main[1:]:
        e, b = R[f"{m}|T=1|pass@{n_bon}"], R[f"{m}|T=1|bo@{n_bon}"]
        rows.append([labels[m], fmt(e["change_vs_base"], signed=True, seeds=True),
                     fmt(e["minus_rl"], signed=True) if "minus_rl" in e else "—",
                     fmt(b["change_vs_base"], signed=True),
                     fmt(b["minus_rl"], signed=True) if "minus_rl" in b else "—",
                     fmt(R[f"{m}|T=1|pass@1"]["change_vs_base"], signed=True),
                     fmt(R[f"{m}|T=1|pass@32"]["change_vs_base"], signed=True)])
    lines += table(["arm", f"pass@{n_bon} - base (per seed)", f"pass@{n_bon} - RL", f"Bo{n_bon} - base",
                     f"Bo{n_bon} - RL", "pass@1 - base", "pass@32 - base"], rows) + [""]

    # --- published variants and ablations against the form they vary
    variants = [m for m in arms if groups.get(m) == "variant"]
    if variants:
        lines += [f"## Published variants and ablations at T = 1, against the arm they vary (points, k = {n_bon})",
                  ""]
        rows = []
        for m in variants:
            e, b = R[f"{m}|T=1|pass@{n_bon}"], R[f"{m}|T=1|bo@{n_bon}"]
            ref = meta["references"][m]
            rows.append([labels[m], labels.get(ref, ref),
                         fmt(e["minus_reference"], signed=True, seeds=True) if "minus_reference" in e else "—",
                         fmt(b["minus_reference"], signed=True) if "minus_reference" in b else "—",
                         fmt(e["change_vs_base"], signed=True)])
        lines += table(["variant", "reference", f"pass@{n_bon} - reference (per seed)", f"Bo{n_bon} - reference",
                         f"pass@{n_bon} - base"], rows) + [""]

    sweep = sweep_section(stat, evals, have, arms, meta, labels, n_bon, ks, lines)
    if sweep:
        data["sweep"] = sweep
    gameable = gameable_section(stat, curves, R, arms, have, meta, labels, n_bon, lines)
    if gameable:
        data["gameable"] = gameable

    methods = main  # the sections below describe the main arms

    # --- absolute tables per temperature
    for t in temps:
        lines += [f"## T = {t}: pass@k and BoK (absolute)", ""]
        names = [f"pass@{k}" for k in ks] + [f"bo@{k}" for k in (8, 32)] + ["maj@8", "maj@32"]
        rows = [[labels[m]] + [fmt(R[f"{m}|T={t}|{n}"]["value"]) for n in names] for m in methods]
        lines += table(["method"] + names, rows) + [""]

    # --- temperatures: the change at k = N' at every test temperature
    lines += [f"## Transfer across test temperatures: pass@{n_bon} and Bo{n_bon} change against the base", ""]
    rows = [[labels[m]] + [fmt(R[f"{m}|T={t}|{p}@{n_bon}"]["change_vs_base"], signed=True)
                           for p in ("pass", "bo") for t in temps] for m in methods[1:]]
    lines += table(["method"] + [f"{p}@{n_bon} T={t}" for p in ("pass", "bo") for t in temps], rows) + [""]

    # --- diversity
    lines += ["## Diversity at T = 1 (per prompt, 32 samples): distinct final answers, entropy of the answer "
              "distribution (nats), share of samples on the modal answer, modal answer correct (%)", ""]
    rows = [[labels[m], fmt(R[f"{m}|T=1|distinct"]["value"], 1.0), fmt(R[f"{m}|T=1|entropy"]["value"], 1.0),
             fmt(R[f"{m}|T=1|modal_share"]["value"]), fmt(R[f"{m}|T=1|modal_correct"]["value"])] for m in methods]
    lines += table(["method", "distinct answers", "answer entropy", "modal share %", "modal correct %"], rows)
    lines += [""]

    # --- meta-strategy: modal share by difficulty. Difficulty = the arithmetic level of the prompt: a bin
    # defined from the evaluated samples themselves (e.g. the base's pass@1) would select on their noise
    levels = torch.tensor(evals[("base", have["base"][0])]["levels"])
    bins = [(f"level {int(lv)}", levels == lv) for lv in sorted(set(levels.tolist()))]
    meta_rows, meta_json = [], {}
    for m in methods:
        share, corr = values(m, "1", "modal_share"), values(m, "1", "pass@1")
        cells = []
        for name, mask in bins:
            s = sum(float(v[mask].mean()) for v in share) / len(share)
            c = sum(float(v[mask].mean()) for v in corr) / len(corr)
            meta_json.setdefault(m, {})[name] = {"modal_share": s, "pass@1": c, "prompts": int(mask.sum())}
            cells.append(f"{100 * s:.0f} / {100 * c:.0f}")
        meta_rows.append([labels[m]] + cells)
    data["meta_strategy"] = meta_json
    lines += ["## Meta-strategy at T = 1: share of samples on the modal answer / pass@1 (%), by difficulty", "",
              "Difficulty = the arithmetic level (1: one operation on small numbers ... 3: several operations; "
              "bonfast/tasks/arithmetic.py); prompts per level: "
              + ", ".join(f"{name}: {int(mask.sum())}" for name, mask in bins) + ".", ""]
    lines += table(["method"] + [name for name, _ in bins], meta_rows) + [""]

    # --- co-scaling fit and the best temperature per N
    lines += ["## Co-scaling: pass@N(T) ~ exp(a N^b), fitted on N = 1..32 (pooled means)", "",
              "a, b per temperature; `err`: largest |fit - measured| over N, in points. T*(N): the test temperature "
              "with the highest pass@N.", ""]
    rows, cos_json = [], {}
    for m in methods:
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
        rows.append([labels[m]] + cells + [" ".join(best)])
    data["coscaling"] = cos_json
    lines += table(["method"] + [f"a, b at T={t}" for t in temps] + [f"T*(N) for N = {', '.join(map(str, ks))}"],
                    rows) + [""]
    # T* by difficulty for the base model
    rows, tstar_json = [], {}
    for name, mask in bins:
        best = []
        for k in ks:
            by_t = {t: sum(float(v[mask].mean()) for v in values("base", t, f"pass@{k}")) / len(seeds) for t in temps}
            top = max(by_t.values())
            winners = [t for t in temps if by_t[t] >= top - 1e-12]
            best.append(winners[0] if len(winners) == 1 else "tie")  # e.g. a bin no temperature solves
        tstar_json[name] = dict(zip([str(k) for k in ks], best))
        rows.append([name, str(int(mask.sum()))] + best)
    data["T_star_by_difficulty_base"] = tstar_json
    lines += ["T*(N) of the base policies by level (\"tie\": equal pass@N at the best temperatures):", ""]
    lines += table(["difficulty", "prompts"] + [f"N={k}" for k in ks], rows) + [""]

    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    pngs = plots(R, methods, labels, temps, ks, meta_json, cos_json, out)
    if sweep:
        pngs.append(sweep_plot(sweep, labels, out))
    if gameable and gameable["curves"]:
        pngs.append(gameable_plot(gameable, labels, out))
    lines += ["Plots: " + ", ".join(f"`{os.path.basename(p)}`" for p in pngs), ""]
    with open(out + ".json", "w") as f:
        json.dump(data, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    return data


def sweep_section(stat, evals, have, arms, meta, labels, n_bon, ks, lines) -> dict | None:
    """The N' sweep of the headline method: pass@N at T = 1 for N = 1..32, one row per N' (table, best N')."""
    by_nbon = {meta["n_bon"][m]: m for m in arms if m == "bon_rlb_p" or meta.get("groups", {}).get(m) == "sweep"}
    if len(by_nbon) < 2:
        return None
    order = sorted(by_nbon)
    n_all = sorted(int(k.split("@")[1]) for k in evals[("base", have["base"][0])]["temps"]["1"] if
                   k.startswith("pass@"))
    curves, rows = {}, []
    for nb in ["base", *order]:
        m = "base" if nb == "base" else by_nbon[nb]
        curves[str(nb)] = {str(k): stat(m, "1", f"pass@{k}") for k in n_all}
        at = ("—" if nb == "base" else fmt(stat(m, "1", f"pass@{nb}", minus="base"), signed=True, seeds=True))
        rows.append([labels[m], str(len(have[m]))] + [fmt(curves[str(nb)][str(k)]) for k in ks] + [at])
    best = []
    for k in ks:
        means = {nb: curves[str(nb)][str(k)]["mean"] for nb in order}
        best.append(str(max(means, key=means.get)))
    lines += ["## N' sweep of BoN-RLB(P): pass@N at T = 1 for each trained N' (seed-level intervals)", "",
              "Rows: the N' the policy was trained for; columns: the test N. Last column: the change against the "
              "base at N = N' (per seed). Every N in 1..32 is in science.json and in the plot.", ""]
    lines += table(["trained N'", "seeds"] + [f"pass@{k}" for k in ks] + ["pass@N' - base at N = N'"], rows)
    lines += ["", "Best trained N' at each test N (highest mean pass@N; read with the intervals above): "
              + ", ".join(f"N = {k}: N' = {b}" for k, b in zip(ks, best)) + ".", ""]
    return {"curves": curves, "best_n_bon": dict(zip(map(str, ks), best)), "n_bon": order}


def gameable_section(stat, curves_of, R, arms, have, meta, labels, n_bon, lines) -> dict | None:
    """RL-V vs BoN-RL-V against the biased verifier: the proxy (its score) against the truth (pass@N), BoK under
    it, and the training curves of verifier score and true reward."""
    pair = [m for m in ("rl_v.biased", "bon_rl_v.biased") if m in arms]
    if not pair:
        return None
    rows = []
    for m in pair:
        names = ("biased_score", f"pass@{n_bon}", f"gbo@{n_bon}", "gbo@32")
        rows.append([labels[m]] + [fmt(R[f"{m}|T=1|{name}"]["change_vs_base"], signed=True,
                                        seeds=name == f"pass@{n_bon}") for name in names])
    diff = {}
    if len(pair) == 2:  # paired on the seeds both arms have
        diff = {name: stat("bon_rl_v.biased", "1", name, minus="rl_v.biased")
                for name in ("biased_score", f"pass@{n_bon}", f"gbo@{n_bon}", "gbo@32")}
        if all(diff.values()):
            rows.append(["BoN-RL-V minus RL-V (biased)"] + [fmt(v, signed=True, seeds=name == f"pass@{n_bon}")
                                                            for name, v in diff.items()])
    lines += ["## Gameable verifier: RL-V and BoN-RL-V trained against the biased verifier (T = 1, change vs base)",
              "", "The biased verifier scores 0.25 x correctness + 0.74 x length (non-space characters, capped at 8) "
              "+ 0.01 x jitter: three extra characters outweigh correctness. Training prompts repeat (a pool of "
              f"{meta.get('pool', 512)}). `biased_score`: the verifier's mean score of the policy's samples (the "
              "proxy); pass@k: the truth; `gbo@k`: BoK with the biased verifier picking.", ""]
    lines += table(["arm", "biased score", f"pass@{n_bon} (per seed)", f"gBo{n_bon}", "gBo32"], rows) + [""]
    curves = {}
    for m in pair:
        per_seed = [c for c in (curves_of[(m, s)] for s in have[m]) if c is not None]
        if per_seed:
            length = min(len(c["step"]) for c in per_seed)
            curves[m] = {key: [sum(c[key][i] for c in per_seed) / len(per_seed) for i in range(length)]
                         for key in ("reward", "verifier_score")}
            curves[m]["step"] = per_seed[0]["step"][:length]
            curves[m]["seeds"] = len(per_seed)
    if curves:
        lines += ["Training curves (mean over seeds of each step's true reward and verifier score): "
                  "`science-gameable.png`.", ""]
    return {"arms": pair, "curves": curves, "bon_rl_v_minus_rl_v": diff}


def plots(R, methods, labels, temps, ks, meta_json, cos_json, out) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for ax, (prefix, title) in zip(axes[:2], (("pass", "pass@k (T = 1)"), ("bo", "BoK, noisy verifier (T = 1)"))):
        for m in methods:
            y = [100 * R[f"{m}|T=1|{prefix}@{k}"]["value"]["mean"] for k in ks]
            ax.plot(ks, y, marker="o", label=labels[m], lw=2.2 if m in ("base", "rl", "bon_rlb_p") else 1.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel("%")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    ax = axes[2]
    width = 0.8 / max(1, len(methods) - 1)
    for i, m in enumerate(methods[1:]):
        ys, errs = [], [[], []]
        for t in temps:
            e = R[f"{m}|T={t}|pass@8"]["change_vs_base"]
            ys.append(100 * e["mean"])
            errs[0].append(100 * (e["mean"] - e["lo"]))
            errs[1].append(100 * (e["hi"] - e["mean"]))
        ax.bar([j + i * width for j in range(len(temps))], ys, width, yerr=errs, label=labels[m], capsize=2,
               color=f"C{(i + 1) % 10}")  # the colour of the method's line in the left panels
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(temps))], [f"T = {t}" for t in temps])
    ax.set_ylabel("pass@8 change vs base (points)")
    ax.set_title("pass@8 change vs base, by test T")
    fig.tight_layout()
    paths.append(out + "-pass_at_k.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for m in methods:
        by_level = meta_json[m]
        axes[0].plot(list(by_level), [100 * v["modal_share"] for v in by_level.values()], marker="o",
                     label=labels[m])
    axes[0].set_xlabel("difficulty: arithmetic level")
    axes[0].set_ylabel("share of samples on the modal answer (%)")
    axes[0].set_title("meta-strategy: concentration by difficulty (T = 1)")
    axes[0].legend(fontsize=7)
    axes[0].grid(alpha=0.3)
    ax = axes[1]
    for t, color in zip(temps, ("tab:blue", "tab:orange", "tab:red")):
        y = torch.tensor([R[f"base|T={t}|pass@{k}"]["value"]["mean"] for k in ks], dtype=torch.float64)
        x = torch.tensor(ks, dtype=torch.float64)
        ax.plot(x.log(), torch.log(-torch.log(y)), "o", color=color, label=f"base, T = {t}")
        fit = cos_json["base"][t]
        ax.plot(x.log(), torch.log(torch.tensor(-fit["a"])) + fit["b"] * x.log(), "-", color=color, lw=1)
    ax.set_xlabel("log N")
    ax.set_ylabel("log(-log pass@N)")
    ax.set_title("co-scaling fit pass@N = exp(a N^b), base policies")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out + "-meta_coscaling.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def sweep_plot(sweep, labels, out) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    base = sweep["curves"]["base"]
    ns = [int(k) for k in base]
    for nb, curve in sweep["curves"].items():
        y = [100 * curve[str(k)]["mean"] for k in ns]
        lo = [100 * curve[str(k)]["lo"] for k in ns]
        hi = [100 * curve[str(k)]["hi"] for k in ns]
        name = "base" if nb == "base" else f"N' = {nb}"
        axes[0].plot(ns, y, label=name, lw=2 if nb == "base" else 1.4)
        axes[0].fill_between(ns, lo, hi, alpha=0.15)
        if nb != "base":
            axes[1].plot(ns, [a - 100 * base[str(k)]["mean"] for a, k in zip(y, ns)], marker=".", label=name)
    for ax, title in zip(axes, ("pass@N (T = 1), seed-level 95% band", "pass@N minus base (points)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("test N")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[1].axhline(0, color="k", lw=0.8)
    fig.tight_layout()
    path = out + "-nprime_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def gameable_plot(gameable, labels, out) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for m, curve in gameable["curves"].items():
        for ax, key in zip(axes, ("verifier_score", "reward")):
            ax.plot(curve["step"], curve[key], label=f"{labels[m]} ({curve['seeds']} seeds)")
    axes[0].set_title("biased verifier's mean score of the training samples (proxy)")
    axes[1].set_title("true reward of the training samples")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out + "-gameable.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
