"""Reporting for training and evaluation runs: the before / after table and the pass@k / BoK plot."""
from __future__ import annotations

from bonfast import metrics


def format_table(before: dict, after: dict | None = None) -> str:
    """A text table of every metric at every k and temperature, with 95% bootstrap intervals over prompts;
    with `after`, also the change and its paired-bootstrap interval (same prompts before and after)."""
    lines = []
    paired = after is not None and "per_prompt" in before and "per_prompt" in after
    for temp, table in before["metrics"].items():
        lines.append(f"{temp}  ({before['prompts']} prompts, n = {before['n']} samples each; 95% bootstrap CI)")
        head = f"  {'metric':10s} {'before':>22s}" + (f" {'after':>22s}" if after else "")
        lines.append(head + (f" {'change (paired CI)':>24s}" if paired else ""))
        for name, v in table.items():
            row = f"  {name:10s} {_fmt(v):>22s}"
            if after:
                row += f" {_fmt(after['metrics'][temp][name]):>22s}"
            if paired:
                key = f"{temp}/{name}"
                diff = after["per_prompt"][key] - before["per_prompt"][key]
                mean, lo, hi = metrics.bootstrap_ci(diff, seed=0)
                row += f" {100 * mean:+6.1f} [{100 * lo:+6.1f}, {100 * hi:+6.1f}]"
            lines.append(row)
    return "\n".join(lines)


def _fmt(v: dict) -> str:
    return f"{100 * v['mean']:5.1f}% [{100 * v['lo']:5.1f}, {100 * v['hi']:5.1f}]"


def plot(before: dict, after: dict | None, path: str) -> str:
    """PNG of pass@k and BoK against k, before (dashed) and after (solid) training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("pass", "bo")):
        for result, style in ((before, "--"), (after, "-")):
            if result is None:
                continue
            for temp, table in result["metrics"].items():
                ks = [int(name.split("@")[1]) for name in table if name.startswith(metric + "@")]
                mean = [table[f"{metric}@{k}"]["mean"] for k in ks]
                lo = [table[f"{metric}@{k}"]["lo"] for k in ks]
                hi = [table[f"{metric}@{k}"]["hi"] for k in ks]
                line, = ax.plot(ks, mean, style, marker="o", label=f"{result['tag']} {temp}")
                ax.fill_between(ks, lo, hi, alpha=0.15, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k")
        ax.set_ylabel("pass@k" if metric == "pass" else "BoK (verifier pick)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
