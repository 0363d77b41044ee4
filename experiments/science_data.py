"""The study's per-prompt data in a compact form that is committed with the results (docs/results/science-runs/).

A run's eval.json (science.py `eval_policy`, ~2.5 MB) holds every per-prompt value for k = 1..32. The report needs
less: pass@k for every k (a function of the number of correct samples per prompt, so one uint8 per prompt), BoK
for the table k, and the per-prompt extras. `arrays_of` and `write` make that one compressed .npz per run
(~70 kB), `load` rebuilds the dict the report reads (pass@k recomputed by the same `bonfast.metrics.pass_at_k` the
evaluation used, so it is bitwise the evaluation's value). The report always reads through this round trip, so the
committed files alone regenerate every table: `science.py --report-only` works on a clean clone.

Stored per temperature: the number of correct samples (uint8), `bo@k` / `gbo@k` for the report's k, `maj@k` and
the extras as float32 (the report's numbers are therefore float32-rounded per prompt; the effect on any table
value is below 1e-6), and per run the training curve (true reward and verifier score per step) when the run has
one, and the run's training and evaluation seconds. A run evaluated under the seed's learned verifier (the `learned`
group) also keeps `lbo@k` and `learned_accepts` per prompt and its learned.json (the verifier's calibration on this
policy's samples) as a JSON string. Each seed's learned verifier has its held-out calibration report
(runs/verifier-seed<s>/calibration.json) copied beside the runs as verifier-seed<s>.json (`save_verifier`).
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from bonfast import metrics

FLOAT_NAMES = ("maj@8", "maj@32", "distinct", "entropy", "modal_share", "modal_correct", "verifier_accepts",
               "biased_score", "length")


def path_of(data_dir: str, arm: str, seed: int) -> str:
    return os.path.join(data_dir, f"{arm}-seed{seed}.npz")


def arrays_of(ev: dict, ks: tuple[int, ...], curve: dict | None = None, train_seconds: float = 0.0,
              learned: dict | None = None) -> dict[str, np.ndarray]:
    """eval.json's dict (+ the training curve and time, + learned.json) -> the arrays of its compact file."""
    n = int(ev["n"])
    arrays = {"n": np.array(n), "seed": np.array(int(ev["seed"])), "levels": np.asarray(ev["levels"], np.uint8),
              "temps": np.array(list(ev["temps"])), "eval_seconds": np.array(float(ev.get("seconds", 0.0))),
              "train_seconds": np.array(float(train_seconds))}
    for t, per in ev["temps"].items():
        count = np.rint(np.asarray(per["pass@1"], np.float64) * n)
        if np.abs(count - np.asarray(per["pass@1"]) * n).max() > 1e-6:
            raise ValueError(f"pass@1 x n is not an integer count (seed {ev['seed']}, T = {t})")
        arrays[f"{t}/correct"] = count.astype(np.uint8)
        lbo = [f"lbo@{k}" for k in ks] + ["learned_accepts"] if "lbo@1" in per else []  # the learned group's
        for name in [f"{p}@{k}" for p in ("bo", "gbo") for k in ks] + list(FLOAT_NAMES) + lbo:
            arrays[f"{t}/{name}"] = np.asarray(per[name], np.float32)
    if curve:
        for key in ("step", "reward", "verifier_score"):
            arrays[f"curve/{key}"] = np.asarray(curve[key], np.float64)
    if learned is not None:
        arrays["learned"] = np.array(json.dumps(learned, sort_keys=True))
    return arrays


def differs(arrays: dict[str, np.ndarray], path: str) -> list[str]:
    """The arrays whose values differ from the compact file at `path` (times aside; arrays only one of them has are
    not compared, so a re-evaluation that adds the learned verifier's numbers differs in nothing); [] if no file.
    A rerun of a finished run on the same machine gives []; on another machine it is another run (a different CPU
    rounds differently, the samples diverge) and differs almost everywhere."""
    if not os.path.exists(path):
        return []
    with np.load(path) as old:
        return [k for k in old.files if k in arrays and k not in ("eval_seconds", "train_seconds")
                and not np.array_equal(old[k], arrays[k])]


def write(arrays: dict[str, np.ndarray], path: str) -> None:
    """The compact file at `path`, via a temporary name."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def has_learned(path: str) -> bool:
    """Whether the compact file at `path` holds the learned verifier's numbers (lbo@k)."""
    with np.load(path) as z:
        return any(k.endswith("/lbo@1") for k in z.files)


def load(path: str) -> tuple[dict, dict | None]:
    """(the report's view of eval.json, the training curve or None) from a .npz written by `save`."""
    with np.load(path) as z:
        n = int(z["n"])
        ev = {"seed": int(z["seed"]), "n": n, "levels": z["levels"].astype(int).tolist(), "temps": {},
              "seconds": float(z["eval_seconds"]), "train_seconds": float(z["train_seconds"])}
        for t in z["temps"].tolist():
            count = torch.from_numpy(z[f"{t}/correct"].astype(np.int64))
            per = {f"pass@{k}": metrics.pass_at_k(torch.full_like(count, n), count, k).tolist()
                   for k in range(1, n + 1)}
            prefix = f"{t}/"
            per.update({key[len(prefix):]: z[key].astype(np.float64).tolist() for key in z.files
                        if key.startswith(prefix) and key != f"{t}/correct"})
            ev["temps"][t] = per
        curve = None
        if "curve/step" in z.files:
            curve = {"step": z["curve/step"].astype(int).tolist(), "reward": z["curve/reward"].tolist(),
                     "verifier_score": z["curve/verifier_score"].tolist()}
        if "learned" in z.files:
            ev["learned"] = json.loads(str(z["learned"]))
    return ev, curve


def read_learned(run_dir: str) -> dict | None:
    """The run's learned.json (the learned verifier's calibration on its samples), or None."""
    path = os.path.join(run_dir, "learned.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def verifier_path_of(data_dir: str, seed: int) -> str:
    return os.path.join(data_dir, f"verifier-seed{seed}.json")


def save_verifier(source: str, path: str) -> None:
    """A seed's verifier report (calibration.json of its "verifier" job) -> `path`; the machine's cache path of the
    weights is kept as its file name only."""
    with open(source) as f:
        report = json.load(f)
    if "path" in report:
        report["path"] = os.path.basename(report["path"])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def read_eval(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "eval.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def train_seconds(run_dir: str) -> float:
    """The training time science.py recorded in done.json (0 for a base run, which has no training)."""
    path = os.path.join(run_dir, "done.json")
    if not os.path.exists(path):
        return 0.0
    with open(path) as f:
        return float(json.load(f)["train_seconds"])
