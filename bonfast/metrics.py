"""Evaluation metrics from n >= k samples per prompt: unbiased pass@k, BoK (verifier pick), majority@k, and more.

Every metric estimates the expectation over a uniformly random k-subset of the n samples a prompt has. pass@k and
BoK do it exactly, in closed form. majority@k does it exactly by enumeration when C(n, k) is small, and otherwise by
a seeded Monte Carlo over subsets.
The tie rule is that of ``bonfast.objectives``: ties in verifier scores, and ties between answer classes in majority
voting, are broken uniformly at random, and the metrics average over the tie-break exactly. Training, selection and
evaluation therefore agree (docs/method.md, "Tie rule" and "Evaluation").

    pass_at_k(n, c, k)        1 − C(n−c, k) / C(n, k)                         (Chen et al. 2021)
    bo_k(scores, rewards, k)  Σ_i R_i P(i is the verifier pick of a random k-subset)   (max@k in verifier order)
    majority_at_k(...)        E[correctness of the most frequent answer among k]
    curve(fn, ks)             stack fn(k) over k
    bootstrap_ci(x)           percentile bootstrap over prompts
    hierarchical_bootstrap(a, b)   seed-level interval: resample seeds, then prompts (shared across seeds)
    holm(p)                   Holm step-down adjusted p-values and per-claim levels for a family of claims
    fit_coscaling(ns, pass)   pass@N ≈ exp(a N^b)                            (docs/method.md §7)

These functions are for evaluation, not for the training hot path. Their input checks may sync the host.
"""
from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from bonfast._validation import as_matrix, check_int, expected, run_checks
from bonfast.selection import pick_probability, rank_counts

__all__ = ["pass_at_k", "bo_k", "majority_at_k", "curve", "bootstrap_ci", "hierarchical_bootstrap", "holm",
           "fit_coscaling"]


def _counts(name: str, x) -> Tensor:
    if isinstance(x, bool) or not isinstance(x, (numbers.Integral, Tensor)):
        raise TypeError(expected(name, "an int or an integer-valued tensor", type(x).__name__))
    t = torch.as_tensor(x).detach()
    if t.is_complex():
        raise TypeError(expected(name, "a real dtype", t.dtype))
    t = t.to(torch.float64)
    run_checks([(~torch.isfinite(t) | (t != t.round()), f"{name}: expected integer values, got non-integer values")])
    return t


def pass_at_k(num_samples, num_correct, k):
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021), elementwise with broadcasting:

        pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{j<k} (1 − c/(n−j)),

    computed as −expm1(Σ_{j<k} log1p(−c/(n−j))). This is stable, accurate to a few ulp even when pass@k is tiny,
    and exactly 1 once n − c < k.

    Shapes:
        num_samples, num_correct, k: ints or broadcastable integer tensors. Returns a float if all three are ints,
        otherwise a float64 tensor of the broadcast shape.
    """
    all_int = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (num_samples, num_correct, k))
    n, c, kk = torch.broadcast_tensors(_counts("num_samples", num_samples), _counts("num_correct", num_correct),
                                       _counts("k", k))
    run_checks([((c < 0) | (c > n), "num_correct: expected values in [0, num_samples]"),
                   ((kk < 1) | (kk > n), "k: expected values in [1, num_samples]")])
    k_max = int(kk.max()) if kk.numel() else 0  # host sync: evaluation only
    j = torch.arange(k_max, dtype=torch.float64)
    n_, c_, k_ = n.unsqueeze(-1), c.unsqueeze(-1), kk.unsqueeze(-1)
    ratio = torch.where(j < k_, c_ / (n_ - j).clamp(min=1.0), 0.0).clamp(max=1.0)  # (…, k_max)
    out = -torch.expm1(torch.log1p(-ratio).sum(-1))
    return float(out) if all_int else out


def bo_k(scores: Tensor, rewards: Tensor, k: int) -> Tensor:
    """Exact BoK: expected reward of the verifier's pick among a uniformly random k-subset of the n samples.

        BoK = Σ_i R_i (k/n) P_pick(a_i, e_i; k, n),

    where P_pick is ``selection.pick_probability``, a_i / e_i count the samples strictly below / tied with i, and
    ties are broken uniformly at random, averaged exactly. Without ties this is the max@k formula in verifier order,
    Σ_{i>=k} C(i−1, k−1)/C(n, k) R_(i) (docs/method.md §7). With ``scores = rewards`` it is max@k (pass@k for binary R).

    Shapes:
        scores, rewards: [G, n]; returns [G] float64.
    """
    R = as_matrix("rewards", rewards)
    s = as_matrix("scores", scores, R.shape, rewards.device)
    n = R.shape[1]
    k = check_int("k", k, 1, n, "k <= n, the samples per prompt")
    run_checks([(~torch.isfinite(R), "rewards: expected finite values (no NaN or inf)"),
                   (~torch.isfinite(s), "scores: expected finite values (no NaN or inf)")])
    a, e, _ = rank_counts(s)
    return (R * pick_probability(a, e, k=k, n=n)).sum(-1) * (k / n)


def majority_at_k(answers: Sequence[Sequence], correct, k: int, *, max_subsets: int = 20000,
                  n_mc: int = 4096, seed: int = 0) -> Tensor:
    """Majority@k: expected correctness of the most frequent answer among a uniformly random k-subset.

    ``answers[g]`` holds the n_g hashable final answers of prompt g (e.g. normalised strings; None is an answer like
    any other). ``correct[g]`` holds their correctness (bool or float reward), as a list of lists or a [G, n]
    tensor. Ties between answer classes are broken uniformly at random and averaged exactly. Each answer class is
    worth the mean correctness of its members. That is exact even when a grader is inconsistent: the members of a
    class inside a random subset are a uniformly random subset of that class.
    The expectation over subsets is exact (all C(n, k) subsets enumerated) when C(n_g, k) <= ``max_subsets``.
    Otherwise it is a Monte-Carlo average over ``n_mc`` uniformly random k-subsets drawn with
    ``torch.Generator().manual_seed(seed + g)``. The standard error is at most 0.5/sqrt(n_mc) per prompt.

    Shapes:
        answers: G lists of n_g answers; correct: G lists of n_g values or [G, n]; returns [G] float64.
    """
    k = check_int("k", k, 1)
    max_subsets, n_mc = check_int("max_subsets", max_subsets, 1), check_int("n_mc", n_mc, 1)
    if isinstance(correct, Tensor):
        correct = as_matrix("correct", correct).tolist()
    if not isinstance(answers, Sequence) or not isinstance(correct, Sequence):
        raise TypeError(expected("answers and correct", "sequences with one entry per prompt",
                                 f"{type(answers).__name__} and {type(correct).__name__}"))
    if len(answers) != len(correct):
        raise ValueError("answers and correct: expected sequences with one entry per prompt (the same length G)")
    out = []
    for g, (ans, cor) in enumerate(zip(answers, correct)):
        n = len(ans)
        if len(cor) != n:
            raise ValueError(f"correct[{g}]: expected len(answers[{g}]) = {n} entries, got {len(cor)}")
        if k > n:
            raise ValueError(expected("k", "at most the number of samples of every prompt", f"k = {k} (prompt {g} "
                                      f"has {n})"))
        ids: dict = {}
        cls = torch.tensor([ids.setdefault(a, len(ids)) for a in ans], dtype=torch.long)
        values = torch.tensor([float(v) for v in cor], dtype=torch.float64)
        if not torch.isfinite(values).all():
            raise ValueError(f"correct[{g}]: expected finite values")
        worth = torch.zeros(len(ids), dtype=torch.float64).index_add_(0, cls, values)
        worth /= torch.bincount(cls, minlength=len(ids))
        if math.comb(n, k) <= max_subsets:
            subsets = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long).reshape(-1, k)
        else:
            gen = torch.Generator().manual_seed(seed + g)
            subsets = torch.rand(n_mc, n, generator=gen).argsort(-1)[:, :k]  # (n_mc, k) uniform k-subsets
        votes = torch.zeros(len(subsets), len(ids), dtype=torch.float64)
        votes.scatter_add_(1, cls[subsets], torch.ones(subsets.shape, dtype=torch.float64))  # (S, classes)
        top = (votes == votes.amax(-1, keepdim=True)).to(torch.float64)
        out.append(((top @ worth) / top.sum(-1)).mean())
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def curve(fn: Callable[[int], object], ks: Iterable[int]) -> Tensor:
    """Stack ``fn(k)`` for k in ``ks``, e.g. ``curve(lambda k: bo_k(s, R, k).mean(), range(1, 33))``.

    Shapes:
        fn(k): a scalar or a tensor of a fixed shape S; returns [len(ks), *S] float64.
    """
    ks = list(ks)
    if not ks:
        raise ValueError("ks: expected at least one k")
    return torch.stack([torch.as_tensor(fn(k), dtype=torch.float64) for k in ks])


def bootstrap_ci(per_prompt: Tensor, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Mean over prompts with a percentile-bootstrap (1 − alpha) confidence interval, resampling prompts.

    Returns (mean, lo, hi) as floats; ``torch.Generator().manual_seed(seed)`` makes it reproducible.

    Shapes:
        per_prompt: [G] (G >= 1).
    """
    if not isinstance(per_prompt, Tensor):
        raise TypeError(expected("per_prompt", "a tensor of shape [G] with G >= 1", type(per_prompt).__name__))
    if per_prompt.dim() != 1 or per_prompt.numel() < 1:
        raise ValueError(expected("per_prompt", "a tensor of shape [G] with G >= 1", list(per_prompt.shape)))
    n_boot = check_int("n_boot", n_boot, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(expected("alpha", "a float in (0, 1)", repr(alpha)))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a float in (0, 1), got {alpha!r}")
    x = per_prompt.detach().to(torch.float64).cpu()
    run_checks([(~torch.isfinite(x), "per_prompt: expected finite values (no NaN or inf)")])
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (n_boot, len(x)), generator=gen)
    means = x[idx].mean(-1)
    lo, hi = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    return float(x.mean()), lo, hi


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(expected("alpha", "a float in (0, 1)", repr(alpha)))
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a float in (0, 1), got {alpha!r}")
    return float(alpha)


def _seed_prompt_matrix(name: str, x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(expected(name, "a tensor of shape [S, G] (seeds x prompts)", type(x).__name__))
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(expected(name, "a tensor of shape [S, G] with S >= 1 seeds and G >= 1 prompts",
                                  list(x.shape)))
    x = x.detach().to(torch.float64).cpu()
    run_checks([(~torch.isfinite(x), f"{name}: expected finite values (no NaN or inf)")])
    return x


@functools.lru_cache(maxsize=16)
def _resample_weights(size: int, n_boot: int, seed: int) -> Tensor:
    """[n_boot, size] float64: row b = multiplicities / size of `size` indices drawn with replacement, using
    ``torch.Generator().manual_seed(seed)`` exactly as ``bootstrap_ci`` draws them. Cached (read-only): a report
    makes thousands of comparisons on the same prompts and seeds."""
    idx = torch.randint(0, size, (n_boot, size), generator=torch.Generator().manual_seed(seed))
    counts = torch.zeros(n_boot, size, dtype=torch.float64)
    return counts.scatter_add_(1, idx, torch.ones(idx.shape, dtype=torch.float64)) / size


def hierarchical_bootstrap(a: Tensor, b: Tensor | None = None, *, paired_seeds: bool = True, n_boot: int = 2000,
                           alpha: float = 0.05, seed: int = 0) -> dict:
    """Seed-level percentile-bootstrap interval for the mean of ``a`` (or the mean difference ``a − b``).

    ``a[s, g]`` is a per-prompt value (e.g. pass@8) of the policy trained with seed s, on held-out prompt g; every
    seed is evaluated on the same G prompts. The estimand is the mean over the population of training runs and
    prompts, so both sources of variation enter the interval. Each bootstrap replicate draws

      1. one vector of G prompt indices with replacement, shared by every seed and by both arms (the prompts are
         the same in all of them): ``torch.Generator().manual_seed(seed)``, drawn exactly as ``bootstrap_ci``;
      2. S seed indices with replacement (``manual_seed(seed + 1)``), and for an unpaired ``b`` its own S' seed
         indices (``manual_seed(seed + 2)``),

    and computes mean_s mean_g over the resampled seeds and prompts. With ``paired_seeds`` (default), ``b`` has the
    same seeds as ``a`` in the same order (the seed-s runs of both arms share their warm start) and one seed draw
    resamples the per-seed differences; otherwise ``b`` may have another number of seeds and each arm's seeds are
    resampled separately.

    Two exact reductions (tested): when every seed has the same row, the interval is ``bootstrap_ci`` of that row
    with the same ``seed``; with one prompt (G = 1) it is ``bootstrap_ci`` of the per-seed values with ``seed + 1``.
    The bootstrap of S seeds underestimates the seed variance by the factor (S − 1)/S and is coarse for small S
    (3 seeds have 10 distinct resamples); the per-seed values are returned so a reader can see them.

    Returns {"mean", "lo", "hi", "p", "per_seed", "seeds"}: the point estimate (mean over seeds of the per-seed
    means), the (1 − alpha) interval, a two-sided bootstrap p-value for "the mean is 0"
    (min(1, 2 min(#{stat <= 0}, #{stat >= 0}) + 1) / (n_boot + 1))), the per-seed means (of ``a − b`` when paired,
    else of ``a``) and the number of seeds.

    Shapes:
        a: [S, G]; b: [S, G] (paired) or [S', G]; float values.
    """
    A = _seed_prompt_matrix("a", a)
    B = None if b is None else _seed_prompt_matrix("b", b)
    n_boot = check_int("n_boot", n_boot, 1)
    alpha = _check_alpha(alpha)
    S, G = A.shape
    if B is not None and B.shape[1] != G:
        raise ValueError(expected("b", f"a tensor with the same G = {G} prompts as a", list(B.shape)))
    if B is not None and paired_seeds and B.shape[0] != S:
        raise ValueError(expected("b", f"a tensor of shape [S, G] = [{S}, {G}] (paired_seeds=True: the same seeds "
                                       "as a)", list(B.shape)))
    if B is not None and paired_seeds:
        A, B = A - B, None
    prompt_w = _resample_weights(G, n_boot, seed)  # (n_boot, G)

    def arm(X: Tensor, gen_seed: int) -> Tensor:
        per_seed = prompt_w @ X.T  # (n_boot, S): each seed's mean over the resampled prompts
        return (per_seed * _resample_weights(X.shape[0], n_boot, gen_seed)).sum(-1)

    stats = arm(A, seed + 1)
    per_seed = A.mean(-1)
    mean = float(per_seed.mean())
    if B is not None:
        stats = stats - arm(B, seed + 2)
        mean -= float(B.mean(-1).mean())
    lo, hi = torch.quantile(stats, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64)).tolist()
    tail = min(int((stats <= 0).sum()), int((stats >= 0).sum()))
    p = min(1.0, (2 * tail + 1) / (n_boot + 1))
    return {"mean": mean, "lo": lo, "hi": hi, "p": p, "per_seed": per_seed.tolist(), "seeds": S}


def holm(p_values, alpha: float = 0.05) -> dict:
    """Holm's step-down correction for a family of m claims with p-values ``p_values``.

    Sort the p-values ascending, p_(1) <= ... <= p_(m). The claim of rank j is tested at level alpha / (m − j + 1),
    and rejected only if every claim of lower rank was rejected; the adjusted p-value is
    max_{i <= j} min(1, (m − i + 1) p_(i)). This controls the family-wise error rate at alpha for any dependence
    between the claims. ``levels[i]`` is the level at which claim i is tested: an interval reported with
    ``alpha=levels[i]`` (e.g. ``hierarchical_bootstrap(..., alpha=levels[i])``) is the matching simultaneous interval;
    with that function's bootstrap p-value it excludes 0 when the claim's test rejects at that step (up to the
    p-value's +1 correction).

    Returns {"adjusted": [m] adjusted p-values, "reject": [m] bools, "levels": [m] per-claim levels}, in the input
    order.
    """
    alpha = _check_alpha(alpha)
    p = [float(x) for x in p_values]
    if any(not 0 <= x <= 1 for x in p):
        raise ValueError(expected("p_values", "probabilities in [0, 1]", p))
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted, levels, reject = [0.0] * m, [0.0] * m, [False] * m
    running, still = 0.0, True
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
        levels[i] = alpha / (m - rank)
        still = still and p[i] <= levels[i]
        reject[i] = still
    return {"adjusted": adjusted, "reject": reject, "levels": levels}


def fit_coscaling(ns, pass_at_n):
    """Fit the co-scaling law pass@N ≈ exp(a N^b) (docs/method.md §7) by least squares on
    log(−log pass@N) = log(−a) + b log N.

    Fit once per temperature T to get a(T), b(T). Usually a < 0 and b < 0, so pass@N → 1 as N grows.

    Shapes:
        ns: [m] positive sample counts (at least two distinct); pass_at_n: [m] values in (0, 1). Returns (a, b).
    """
    N = torch.as_tensor(ns, dtype=torch.float64).flatten()
    P = torch.as_tensor(pass_at_n, dtype=torch.float64).flatten()
    if N.shape != P.shape or N.numel() < 2:
        raise ValueError(f"ns and pass_at_n: expected 1-D sequences of the same length >= 2, got {list(N.shape)} and "
                         f"{list(P.shape)}")
    run_checks([(~(N > 0) | ~torch.isfinite(N), "ns: expected finite values > 0"),
                   (~((P > 0) & (P < 1)), "pass_at_n: expected values strictly inside (0, 1) (log(-log p) is undefined "
                                          "at 0 and 1)")])
    if bool((N == N[0]).all()):
        raise ValueError("ns: expected at least two distinct values")
    x, y = N.log(), torch.log(-torch.log(P))
    xm, ym = x.mean(), y.mean()
    b = ((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum()
    return -float(torch.exp(ym - b * xm)), float(b)
