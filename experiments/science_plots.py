"""The study's plots (matplotlib, Agg): pass@k and BoK by method, the meta-strategy and co-scaling fit, the N'
sweep, the gameable verifier's training curves. Each function writes one PNG next to `out` and returns its path;
science_report builds the data they draw.
"""
from __future__ import annotations

import torch


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plots(R, methods, labels, temps, ks, meta_json, cos_json, out) -> list[str]:
    plt = _pyplot()

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
    plt = _pyplot()

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
    plt = _pyplot()

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


def reversal_plot(rev: dict, labels: dict, kinds: list[tuple[str, str]], out: str) -> str:
    """The Bo8 comparisons under each kind of selector (`kinds`: (kind, axis label)): one panel per pair, the change
    with its interval (claims at their Holm level, the rest 95%); a pending or missing kind is left empty."""
    plt = _pyplot()
    pairs = list(rev["pairs"].values())
    fig, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 4.2), squeeze=False)
    for ax, pair in zip(axes[0], pairs):
        for i, (kind, _) in enumerate(kinds):
            v = pair["kinds"].get(kind)
            if not v or v.get("pending"):
                ax.annotate("pending" if v else "missing", (i, 0), ha="center", va="bottom", fontsize=8)
                continue
            ax.errorbar([i], [100 * v["mean"]], yerr=[[100 * (v["mean"] - v["lo"])], [100 * (v["hi"] - v["mean"])]],
                        fmt="o", capsize=4, color=f"C{i}")
            ax.scatter([i] * len(v["per_seed"]), [100 * x for x in v["per_seed"]], s=8, color=f"C{i}", alpha=0.4)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(kinds)), [label for _, label in kinds])
        ax.set_xlim(-0.5, len(kinds) - 0.5)
        ax.set_ylabel("change (points)")
        ax.set_title(f"{labels.get(pair['arm'], pair['arm'])} - {labels.get(pair['minus'], pair['minus'])}\n"
                     f"paper: {'above' if pair['paper_sign'] > 0 else 'below'} 0", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = out + "-reversal.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
