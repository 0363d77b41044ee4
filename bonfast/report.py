"""Reporting for training and evaluation runs: the before / after table and the pass@k / BoK / majority@k plot.

An evaluation result (`bonfast.evaluate.evaluate`) carries its tag ("before", "after", "step 40", ...), used as
the column and legend label, and the names of its method, model, task and verifier, used in the plot title.
When BoK equals pass@k (the oracle verifier picks a correct response whenever there is one), the table prints
one row per k for both and the plot's BoK panel says so instead of repeating the pass@k curves.
"""
from __future__ import annotations

import os

from bonfast import metrics

__all__ = ["format_table", "plot", "bok_is_pass"]


def bok_is_pass(*results: dict | None) -> bool:
    """Whether bo@k equals pass@k at every k and temperature in every given result (oracle verifier)."""
    results = [r for r in results if r is not None]

    def same(a: dict | None, b: dict) -> bool:
        return a is not None and all(abs(a[key] - b[key]) <= 1e-12 for key in ("mean", "lo", "hi"))
    return bool(results) and all(
        same(table.get(f"bo@{name.split('@')[1]}"), v)
        for r in results for table in r["metrics"].values() for name, v in table.items() if name.startswith("pass@"))


def _verifier_note(result: dict, same: bool) -> str:
    verifier = result.get("verifier")
    if same:
        return f"bo@k = pass@k here: the {verifier or 'oracle'} verifier picks a correct response whenever there is one"
    return f"bo@k: reward of the {verifier} verifier's pick among k samples" if verifier else ""


def format_table(before: dict, after: dict | None = None) -> str:
    """A text table of every metric at every k and temperature, with 95% bootstrap intervals over prompts;
    with `after`, also the change and its paired-bootstrap interval (same prompts before and after)."""
    lines = []
    paired = after is not None and "per_prompt" in before and "per_prompt" in after
    same = bok_is_pass(before, after)
    labels = (before.get("tag", "before"), after.get("tag", "after") if after else None)
    for temp, table in before["metrics"].items():
        lines.append(f"{temp}  ({before['prompts']} prompts, n = {before['n']} samples each; 95% bootstrap CI)")
        head = f"  {'metric':14s} {labels[0]:>22s}" + (f" {labels[1]:>22s}" if after else "")
        lines.append(head + (f" {'change (paired CI)':>24s}" if paired else ""))
        for name, v in table.items():
            if same and name.startswith("bo@"):
                continue
            label = f"{name} = bo@{name.split('@')[1]}" if same and name.startswith("pass@") else name
            row = f"  {label:14s} {_fmt(v):>22s}"
            if after:
                row += f" {_fmt(after['metrics'][temp][name]):>22s}"
            if paired:
                key = f"{temp}/{name}"
                diff = after["per_prompt"][key] - before["per_prompt"][key]
                mean, lo, hi = metrics.bootstrap_ci(diff, seed=0)
                row += f" {100 * mean:+6.1f} [{100 * lo:+6.1f}, {100 * hi:+6.1f}]"
            lines.append(row)
    note = _verifier_note(before, same)
    return "\n".join(lines + ([f"  {note}"] if note else []))


def _fmt(v: dict) -> str:
    return f"{100 * v['mean']:5.1f}% [{100 * v['lo']:5.1f}, {100 * v['hi']:5.1f}]"


def plot(before: dict, after: dict | None, path: str) -> str:
    """PNG of pass@k, BoK and majority@k against k, before (dashed) and after (solid) training, titled with the
    method, model and task; the BoK panel says so when BoK equals pass@k (oracle verifier)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    same = bok_is_pass(before, after)
    panels = (("pass", "pass@k"), ("bo", "BoK (verifier pick)"), ("maj", "majority@k"))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (metric, ylabel) in zip(axes, panels):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if metric == "bo" and same:
            ax.set_title(f"verifier: {before.get('verifier') or 'oracle'}", fontsize=9)
            ax.text(0.5, 0.5, "BoK = pass@k here:\nthe oracle verifier picks a correct\nresponse whenever there is one",
                    ha="center", va="center", transform=ax.transAxes, fontsize=9)
            continue
        if metric == "bo" and before.get("verifier"):
            ax.set_title(f"verifier: {before['verifier']}", fontsize=9)
        for result, style in ((before, "--"), (after, "-")):
            if result is None:
                continue
            for temp, table in result["metrics"].items():
                ks = [int(name.split("@")[1]) for name in table if name.startswith(metric + "@")]
                if not ks:
                    continue
                mean = [table[f"{metric}@{k}"]["mean"] for k in ks]
                lo = [table[f"{metric}@{k}"]["lo"] for k in ks]
                hi = [table[f"{metric}@{k}"]["hi"] for k in ks]
                line, = ax.plot(ks, mean, style, marker="o", label=f"{result.get('tag', '')} {temp}")
                ax.fill_between(ks, lo, hi, alpha=0.15, color=line.get_color())
        ax.legend(fontsize=8)
    title = " / ".join(f"{key}: {os.path.basename(str(before[key]).rstrip('/')) or before[key]}"
                       for key in ("method", "model", "task") if before.get(key))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
