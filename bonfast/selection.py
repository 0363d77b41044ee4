"""Best-of-N selection with the tie rule: which sample is picked, and with what probability.

One rule for selection, training and evaluation: ties in verifier scores are broken uniformly at random, and
every estimator (`bonfast.objectives`) and metric (`bonfast.metrics`) averages over that tie-break exactly,
in closed form, from one count. Take a sample with ``a`` of the other samples strictly below it and ``e``
equal to it. By Vandermonde's identity,

    Σ_{k-subsets S ∋ i} P(i is picked | S) = Σ_t C(e, t) C(a, k−1−t) / (t+1) = [C(a+e+1, k) − C(a, k)] / (e+1),

and the probability that i is the pick of a uniformly random k-subset containing it is that count divided by
C(n−1, k−1). The derivation and the population version are in docs/method.md ("Tie rule").
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction

import torch
from torch import Tensor

from bonfast._validation import check_int, expected, run_checks

__all__ = ["comb_table", "pick_mass", "pick_probability", "rank_counts"]


@functools.lru_cache(maxsize=256)
def comb_table(n: int, k: int, device: torch.device) -> Tensor:
    """T[x + 1] = C(x, k) / C(n, k) for x = -1..n, exact rationals rounded once to float64 (C(-1, k) = 0)."""
    denom = math.comb(n, k)
    values = [0.0] + [float(Fraction(math.comb(x, k), denom)) for x in range(n + 1)]
    return torch.tensor(values, dtype=torch.float64, device=device)


def pick_mass(a: Tensor, e: Tensor, k: int, n: int) -> Tensor:
    """(1 / C(n, k)) Σ_{k-subsets S ∋ i} P(i picked | S) = [C(a+e+1, k) − C(a, k)] / ((e+1) C(n, k)).

    Defined for a >= -1 and e >= -1; e = -1 ("no such sample") gives 0. Only differences of this function at
    shifted (a, e) are ever used with a = -1 or e = -1, and those are finite by construction.
    """
    table = comb_table(n, k, a.device)
    top = table[(a + e + 2).clamp(min=0)]
    mass = (top - table[a + 1]) / (e + 1).clamp(min=1).to(torch.float64)
    return torch.where(e >= 0, mass, torch.zeros_like(mass))


def pick_probability(a: Tensor, e: Tensor, *, k: int, n: int) -> Tensor:
    """Probability that a sample is the BoN pick of a uniformly random k-subset of n samples that contains it.

    The sample has ``a`` others strictly below it and ``e`` others tied with it (ties broken uniformly at random):

        P = [C(a+e+1, k) − C(a, k)] / ((e+1) C(n−1, k−1)).

    This is the single tie-rule helper. ``objectives.subset_credit`` and ``metrics.bo_k`` both use it.

    Shapes:
        a, e: any (same shape, integer); returns float64 of that shape.
    """
    n = check_int("n", n, 1)
    k = check_int("k", k, 1, n, "k <= n")
    if not isinstance(a, Tensor) or not isinstance(e, Tensor):
        raise TypeError(expected("a, e", "integer tensors", f"{type(a).__name__}, {type(e).__name__}"))
    if a.shape != e.shape:
        raise ValueError(expected("a, e", "tensors of the same shape", f"{list(a.shape)} and {list(e.shape)}"))
    a, e = a.long(), e.long()
    run_checks([(a < 0, expected("a", "counts >= 0")), (e < 0, expected("e", "counts >= 0")),
                  (a + e + 1 > n, expected("a + e + 1", f"at most n = {n}"))])
    return pick_mass(a, e, k, n) * (n / k)


def rank_counts(s: Tensor):
    """a[g, i] = #{j: s_j < s_i}, e[g, i] = #{j != i: s_j = s_i}, and the ascending sort order of s."""
    G, n = s.shape
    sorted_s, order = s.sort(dim=-1)
    pos = torch.arange(n, device=s.device).expand(G, n)
    new_block = torch.ones_like(order, dtype=torch.bool)
    new_block[:, 1:] = sorted_s[:, 1:] != sorted_s[:, :-1]
    start = torch.where(new_block, pos, 0).cummax(-1).values  # first sorted position of each tie block
    last = torch.ones_like(new_block)
    last[:, :-1] = new_block[:, 1:]
    end = torch.where(last, pos + 1, n).flip(-1).cummin(-1).values.flip(-1)  # one past the block's last position
    a = torch.empty_like(order).scatter_(-1, order, start)
    le = torch.empty_like(order).scatter_(-1, order, end)  # = a + e + 1
    return a, le - a - 1, order
