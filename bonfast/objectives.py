"""Per-sample weights for every BoN-aware objective (arXiv 2412.15287; docs/method.md): exact and published forms.

Contract
--------
For each prompt, n responses y_1..y_n are drawn i.i.d. from the (tempered) policy π. ``rewards[g, i] = R(y_i)`` is
the task reward and ``scores[g, i] = r(y_i)`` is the verifier score that Best-of-N (BoN) selection uses. Every method
returns float64 weights ``w [G, n]`` on the input's device. The trainer's loss is
``-(Σ_i w_i log π(y_i)) / normaliser``, so the weights must satisfy, for each prompt,

    E_{y_1..y_n ~ π} [ Σ_i w_i ∇log π(y_i) ] = ∇J(π)

for the objective J named by the method (the *exact* forms), or a documented multiple of ∇J (the *published* forms).
``tests/test_objectives.py`` checks each claim by exact enumeration of all n-tuples on small categorical policies,
against autograd of the closed-form objective. N' (``n_bon``) is the training-time BoN size. It is a separate setting
from n, the number of samples per prompt.

Tie rule
--------
Ties in verifier scores are broken uniformly at random, and every estimator averages over that tie-break
exactly, in closed form (``bonfast.selection``; derivation in docs/method.md, "Tie rule").

Methods
-------
``OBJECTIVES`` (end of this module) registers every method: sft, bon_sft, rl, rl_v, pass_at_k, bon_rl_s, bon_rl_v,
bon_rlb, bon_rlb_p. ``weights(name, ...)`` dispatches on it. docs/objectives.md tabulates each estimator, its
objective and whether it is exact; the derivations are in docs/method.md.

Numerics (docs/method.md §6): everything is float64; subset counts C(x, k) / C(n, k) come from exact tables,
cached per (n, k, device); baselines use only the other samples; estimated failure rates are clamped to
[eps, 1 − eps]; degenerate groups (all correct, all wrong, n = 1, N' = 1, p at 0 or 1) give finite weights.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import torch
from torch import Tensor

from bonfast._validation import as_matrix, check_choice, check_int, run_checks
from bonfast.selection import pick_mass, pick_probability, rank_counts

__all__ = ["OBJECTIVES", "METHODS", "Objective", "weights", "rl", "rl_v", "pass_at_k", "bon_rl_s", "bon_rl_v",
           "bon_rlb", "bon_rlb_p", "bon_rlb_scale", "bon_sft", "sft", "pick_probability", "subset_credit"]


# ----------------------------------------------------------------------------------------------------------------
# Validation: shape / dtype checks are free; value checks (finite, binary, ranges) cost ONE host sync in total.
# ----------------------------------------------------------------------------------------------------------------


def _validate(rewards, scores, *, n_bon, method, need_scores=False, allow_scores=True, binary=False,
              n_bon_name="n_bon"):
    """Validate the common arguments: shapes, dtypes, devices and n_bon now; value checks are returned pending.

    Returns (R float64 [G, n], s float64 [G, n] or None, n_bon, checks). The caller appends its own checks and runs
    them all with ONE ``run_checks(checks, check_values)``.
    """
    R = as_matrix("rewards", rewards)
    n = R.shape[1]
    n_bon = check_int(n_bon_name, n_bon, 1, n, f"{n_bon_name} <= n, the samples per prompt")
    if scores is None and need_scores:
        raise ValueError(f"scores: expected a [G, n] tensor of verifier scores for {method}, got None")
    if scores is not None and not allow_scores:
        raise ValueError(f"scores: expected None for {method}: it selects by the reward itself "
                         "(use bon_rl_v for selection by a separate verifier)")
    s = None if scores is None else as_matrix("scores", scores, R.shape, rewards.device)
    checks = [(~torch.isfinite(R), "rewards: expected finite values (no NaN or inf)")]
    if s is not None:
        checks.append((~torch.isfinite(s), "scores: expected finite values (no NaN or inf)"))
    if binary:
        checks.append(((R != 0) & (R != 1), f"rewards: expected binary values (0 or 1) for {method}"))
    return R, s, n_bon, checks


def _prompt_vector(name: str, x, G: int, device, lo: float | None, hi: float | None, checks) -> Tensor:
    """A per-prompt [G] parameter as float64. Its range check (finiteness if lo is None) is appended to `checks`."""
    if not isinstance(x, Tensor) or x.is_complex():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"{name}: expected a real tensor of shape [G] = [{G}], got {got}")
    if x.shape != (G,):
        raise ValueError(f"{name}: expected a real tensor of shape [G] = [{G}], got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of rewards), got {x.device}")
    x = x.detach().to(torch.float64)
    if lo is None:
        checks.append((~torch.isfinite(x), f"{name}: expected finite values (no NaN or inf)"))
    else:
        checks.append((~((x >= lo) & (x <= hi)), f"{name}: expected values in [{lo}, {hi}] (no NaN)"))
    return x


# ----------------------------------------------------------------------------------------------------------------
# Combinatorics of BoN selection with exact tie averaging
# ----------------------------------------------------------------------------------------------------------------


def subset_credit(rewards: Tensor, scores: Tensor, k: int) -> Tensor:
    """Subset-averaged BoN credit c_i (see ``_subset_credit``), with input validation (one host sync).

    Shapes:
        rewards, scores: [G, n]; returns [G, n] float64.
    """
    R, s, k, checks = _validate(rewards, scores, n_bon=k, need_scores=True, method="subset_credit", n_bon_name="k")
    run_checks(checks)
    return _subset_credit(R, s, k)


def _subset_credit(rewards: Tensor, scores: Tensor, k: int) -> Tensor:
    """Subset-averaged BoN credit c_i = (1 / C(n, k)) Σ_{k-subsets S ∋ i} E_tie[R_{pick(S)}] (docs/method.md §5.2).

    The pick of S is the verifier argmax, with ties broken uniformly at random and averaged exactly. Without ties,
    with samples sorted by score ascending (positions 1..n), this is
    c_i = [C(i−1, k−1) R_i + Σ_{j>i} C(j−2, k−2) R_j] / C(n, k). With ties, sample j above i contributes
    R_j h_j, where h_j = m(a_j, e_j) − m(a_j − 1, e_j). A tie partner contributes R_j u_i, where
    u_i = m(a_i, e_i) − m(a_i, e_i − 1). Here m is the normalised pick count of ``pick_probability``. Two
    identities follow: Σ_i c_i / k = E[R_pick of a random k-subset] (bo_k), and
    Σ_i c_i ∇log π(y_i) is unbiased for ∇ E[R_pick of k i.i.d. draws].
    Cost O(n log n) per prompt, no host sync.

    Shapes:
        rewards, scores: [G, n] float64; returns [G, n] float64.
    """
    G, n = rewards.shape
    a, e, order = rank_counts(scores)
    own = pick_mass(a, e, k, n)
    h = own - pick_mass(a - 1, e, k, n)  # credit weight of j for each i strictly below it
    u = own - pick_mass(a, e - 1, k, n)  # credit weight of each tie partner of i
    x = (rewards * h).gather(-1, order)  # (G, n) in ascending score order
    suffix = torch.cat([x.flip(-1).cumsum(-1).flip(-1), x.new_zeros(G, 1)], dim=-1)  # suffix[t] = Σ_{pos >= t}
    above = suffix.gather(-1, a + e + 1)  # Σ over strictly higher scores
    block = torch.zeros_like(rewards).scatter_add_(-1, a, rewards)  # tie blocks are keyed by a
    tie = block.gather(-1, a) - rewards  # Σ_{j tied with i, j != i} R_j
    return rewards * own + above + u * tie


def _apply_baseline(credit_fn, n: int, k: int, baseline: str) -> Tensor:
    """Subtract a leave-one-out baseline from the subset credit. The baseline depends only on the other samples.

    ``credit_fn(j)`` returns the credit c^(j) for subset size j. Each baseline is (k/n) × an unbiased U-statistic
    of E[f] from the other n−1 samples. It uses Σ_{S ∌ i} f(S) = Σ_S f(S) − Σ_{S ∋ i} f(S):
      "loo"            k-subsets of the others (n > k):  w_i = (n c_i − Σ_j c_j) / (n − k);
                       when n == k it falls back to "loo_k_minus_1".
      "loo_k_minus_1"  (k−1)-subsets of the others (PKPO-style):
                       b_i = k/(n−k+1) (Σ_j c^(k−1)_j / (k−1) − c^(k−1)_i); b = 0 for k = 1.
      "none"           w = c.
    """
    c = credit_fn(k)
    if baseline == "none":
        return c
    if baseline == "loo" and n > k:
        return (n * c - c.sum(-1, keepdim=True)) / (n - k)
    if k == 1:  # no (k-1)-subset carries information: the baseline is 0
        return c
    cp = credit_fn(k - 1)
    return c - k / (n - k + 1) * (cp.sum(-1, keepdim=True) / (k - 1) - cp)


# ----------------------------------------------------------------------------------------------------------------
# Methods: RL, pass@k, BoN-RL-S, BoN-RL-V
# ----------------------------------------------------------------------------------------------------------------


def rl(rewards: Tensor, *, n_bon: int = 1, scores: Tensor | None = None, baseline: str = "loo",
       target: str = "rewards", check_values: bool = True) -> Tensor:
    """Inference-unaware RL (N' = 1): J = E[R], or with ``target="scores"``, RL-V: J = E[r].

        w_i = (X_i − b_i) / n,   X = rewards (or scores),   b_i = mean_{j != i} X_j  ("loo") or 0 ("none").

    Exact for every n. With n = 1 the "loo" baseline has no other samples and is 0. ``n_bon`` must be 1: use
    bon_rl_s / bon_rl_v / pass_at_k for N' > 1.

    Shapes:
        rewards, scores: [G, n]; returns w [G, n] float64.
    """
    target = check_choice("target", target, ("rewards", "scores"))
    check_choice("baseline", baseline, ("loo", "none"))
    R, s, n_bon, checks = _validate(rewards, scores, n_bon=n_bon, need_scores=target == "scores",
                                    allow_scores=target == "scores", method="rl")
    if n_bon != 1:
        raise ValueError(f"n_bon: expected 1 for rl (the N' = 1 baseline), got {n_bon}")
    run_checks(checks, check_values)
    x = s if target == "scores" else R
    n = x.shape[1]
    if baseline == "none" or n == 1:
        return x / n
    return (x - (x.sum(-1, keepdim=True) - x) / (n - 1)) / n


def rl_v(rewards: Tensor, *, n_bon: int = 1, scores: Tensor | None = None, baseline: str = "loo",
         check_values: bool = True) -> Tensor:
    """RL-V: inference-unaware RL on the verifier score, J = E[r]; ``rl`` with ``target="scores"``.

    Shapes:
        rewards, scores: [G, n]; returns w [G, n] float64.
    """
    return rl(rewards, n_bon=n_bon, scores=scores, baseline=baseline, target="scores", check_values=check_values)


@functools.lru_cache(maxsize=256)
def _rho_table(m: int, j: int, device: torch.device) -> Tensor:
    """ρ(m, c, j) = 1 − C(m−c, j)/C(m, j) (unbiased pass@j from m samples with c correct), c = 0..m, exact."""
    if j == 0:
        return torch.zeros(m + 1, dtype=torch.float64, device=device)
    values = [float(1 - Fraction(math.comb(m - c, j), math.comb(m, j))) for c in range(m + 1)]
    return torch.tensor(values, dtype=torch.float64, device=device)


def pass_at_k(rewards: Tensor, *, n_bon: int, scores: Tensor | None = None, baseline: str = "loo",
              check_values: bool = True) -> Tensor:
    """PKPO-style unbiased weights for pass@k, k = n_bon <= n, binary rewards: J = 1 − p^k.

    Subset credit (see ``subset_credit``; here in closed form from the count C of correct samples):

        c_i = k/n                         if R_i = 1,
        c_i = (k/n) ρ(n−1, C, k−1)        if R_i = 0,     ρ(m, c, j) = 1 − C(m−c, j)/C(m, j).

    Then a leave-one-out baseline is subtracted (``baseline`` as in bon_rl_s; "loo" is the default). Exact for
    every n >= k. All-correct and all-wrong groups get w = 0 under both leave-one-out baselines (n >= 2).
    Equals ``bon_rl_s`` on binary rewards.

    Shapes:
        rewards: [G, n] in {0, 1}; returns w [G, n] float64.
    """
    check_choice("baseline", baseline, ("loo", "loo_k_minus_1", "none"))
    R, _, k, checks = _validate(rewards, scores, n_bon=n_bon, allow_scores=False, binary=True, method="pass_at_k")
    run_checks(checks, check_values)
    n = R.shape[1]
    correct = R.sum(-1, keepdim=True).round().long()

    def credit(j: int) -> Tensor:
        rho = _rho_table(n - 1, j - 1, R.device)[correct.clamp(max=n - 1)]  # (G, 1); used only where R_i = 0
        return (j / n) * (R + (1 - R) * rho)

    return _apply_baseline(credit, n, k, baseline)


def bon_rl_v(rewards: Tensor, *, n_bon: int, scores: Tensor | None = None, credit: str = "exact",
             baseline: str | None = None, reward: str = "task", check_values: bool = True) -> Tensor:
    """BoN-RL-V: J = E[R(y_i*)], where i* = argmax of the verifier ``scores`` over N' = n_bon i.i.d. draws.

    ``reward="task"`` (default, the paper's BoN-RL-V): the signal is the task reward R of the verifier's pick.
    ``reward="verifier"``: the signal is the verifier's own score of its pick, J = E[r(y_i*)] = E[max of N' scores]
    (``rewards`` is ignored; the weights equal ``bon_rl_s`` on the scores). Every signal then comes from the
    verifier, as in RL-V, which isolates BoN-awareness when comparing against RL-V on a verifier that can be gamed.

    ``credit="exact"`` (default; docs/method.md §5.2, "Recommended estimator"): w = the subset-averaged credit
    c_i = (1/C(n, N')) Σ_{N'-subsets S ∋ i} E_tie[R_pick(S)] (``subset_credit``, exact tie averaging), minus a
    leave-one-out baseline: ``baseline`` in {"loo" (default), "loo_k_minus_1", "none"} (see ``_apply_baseline``;
    "loo" needs n > N' and uses the k−1 form when n == N'). Exact for every n >= N'.

    ``credit="winner"``: the published selected-only reading (BoN-max-mean, docs/method.md §5.2). The samples form
    floor(n/N') disjoint groups in sample order (leftovers get 0). The verifier winner of each group (ties averaged)
    gets (R_win − b) / #groups. The default b is the group's mean reward (``baseline="mean"``); "none" gives b = 0.
    Its expectation (exact enumeration in the tests; derivation in docs/method.md §5.2): exactly ∇J / 2 for N' = 2
    with the mean baseline; biased for N' >= 3 or baseline "none" (it drops the (N'−1)∇F/F part of ∇log π_bon);
    parallel to ∇J for binary scores == rewards, with a per-prompt scale; identically 0 for N' = 1.

    Shapes:
        rewards, scores: [G, n]; returns w [G, n] float64.
    """
    credit = check_choice("credit", credit, ("exact", "winner"))
    if baseline is None:
        baseline = "loo" if credit == "exact" else "mean"
    check_choice("baseline", baseline, ("loo", "loo_k_minus_1", "none") if credit == "exact" else ("mean", "none"))
    if check_choice("reward", reward, ("task", "verifier")) == "verifier" and torch.is_tensor(scores):
        rewards = scores  # the verifier picks and rewards: J = E[max of N' scores]
    R, s, k, checks = _validate(rewards, scores, n_bon=n_bon, need_scores=True, method="bon_rl_v")
    run_checks(checks, check_values)
    if credit == "exact":
        return _apply_baseline(lambda j: _subset_credit(R, s, j), R.shape[1], k, baseline)
    pick, mean_r, groups = _group_picks(s, R, k)
    b = mean_r if baseline == "mean" else 0.0
    return pick * (R - b) / groups


def bon_rl_s(rewards: Tensor, *, n_bon: int, scores: Tensor | None = None, credit: str = "exact",
             baseline: str | None = None, check_values: bool = True) -> Tensor:
    """BoN-RL-S: J = E[max reward of N' = n_bon i.i.d. draws] (selection by the reward itself, any real reward).

    This is bon_rl_v with scores = rewards, for both ``credit`` forms ("exact", the default, and "winner", the
    published selected-only reading) and their ``baseline`` options. Ties in R do not change the picked reward.
    For binary R, J = pass@N' = 1 − p^N' and the exact weights equal ``pass_at_k``. Exact for every n >= N'.

    Shapes:
        rewards: [G, n]; returns w [G, n] float64.
    """
    credit = check_choice("credit", credit, ("exact", "winner"))
    if baseline is None:
        baseline = "loo" if credit == "exact" else "mean"
    check_choice("baseline", baseline, ("loo", "loo_k_minus_1", "none") if credit == "exact" else ("mean", "none"))
    R, _, k, checks = _validate(rewards, scores, n_bon=n_bon, allow_scores=False, method="bon_rl_s")
    run_checks(checks, check_values)
    if credit == "exact":
        return _apply_baseline(lambda j: _subset_credit(R, R, j), R.shape[1], k, baseline)
    pick, mean_r, groups = _group_picks(R, R, k)
    return pick * (R - (mean_r if baseline == "mean" else 0.0)) / groups


def _group_picks(s: Tensor, R: Tensor, N: int):
    """Disjoint BoN groups of N samples in sample order. Returns the pick probability of each sample (argmax of s,
    ties averaged; 0 for the n mod N leftovers), each sample's group-mean reward, and the number of groups."""
    G, n = s.shape
    m = n // N
    sg = s[:, : m * N].reshape(G, m, N)  # (G, groups, N)
    is_max = (sg == sg.amax(-1, keepdim=True)).to(torch.float64)
    pick = torch.zeros_like(R)
    pick[:, : m * N] = (is_max / is_max.sum(-1, keepdim=True)).reshape(G, m * N)
    mean_r = torch.zeros_like(R)
    mean_r[:, : m * N] = R[:, : m * N].reshape(G, m, N).mean(-1, keepdim=True).expand(G, m, N).reshape(G, m * N)
    return pick, mean_r, m


# ----------------------------------------------------------------------------------------------------------------
# Methods: BoN-RLB and BoN-RLB(P) (binary reward, r = R, closed-form weights in the failure probability p)
# ----------------------------------------------------------------------------------------------------------------


def _fail_rate(R: Tensor, N: int, p, source: str, eps: float, checks) -> Tensor:
    """Per-sample failure-probability estimate p̂ [G, n], clamped to [eps, 1 − eps].

    Tensor [G]: the given (true) p. "group": 1 − mean(R) over all n samples (plug-in).
    "loo": for source "bon", the failure rate among the samples outside the pick's group. It falls back to the
    other samples of the group when n == N', and to the sample itself when n == 1. For the other sources it is
    the failure rate among the other n − 1 samples (the sample itself when n == 1).
    """
    G, n = R.shape
    fail = 1 - R
    if isinstance(p, str):
        check_choice("p", p, ("loo", "group"))
        total = fail.sum(-1, keepdim=True)
        if p == "group":
            p_hat = (total / n).expand(G, n)
        elif source == "bon" and n > N:
            m = n // N
            own = fail.clone()  # leftovers (outside every group) leave out only themselves
            own[:, : m * N] = fail[:, : m * N].reshape(G, m, N).sum(-1, keepdim=True).expand(G, m, N).reshape(G, -1)
            count = torch.full_like(R, n - 1.0)
            count[:, : m * N] = n - N
            p_hat = (total - own) / count
        elif n > 1:
            p_hat = (total - fail) / (n - 1)
        else:
            p_hat = fail
    else:
        p_hat = _prompt_vector("p", p, G, R.device, 0.0, 1.0, checks)[:, None].expand(G, n)
    return p_hat.clamp(eps, 1 - eps)


def _g_terms(p: Tensor, N: int):
    """(N p^(N−1), 1 − p^N) computed stably: exp((N−1) log p) and −expm1(N log p); p in (0, 1)."""
    log_p = torch.log(p)
    lead = N * torch.exp((N - 1) * log_p) if N > 1 else torch.ones_like(p)
    return lead, -torch.expm1(N * log_p)


def _check_options(*, eps=None, clip=None, negative_sign=-1):
    if eps is not None and (isinstance(eps, bool) or not isinstance(eps, numbers.Real)):
        raise TypeError(f"eps: expected a float in (0, 0.5), got {eps!r}")
    if eps is not None and not 0 < eps < 0.5:
        raise ValueError(f"eps: expected a float in (0, 0.5), got {eps!r}")
    if negative_sign not in (1, -1):
        raise ValueError(f"negative_sign: expected +1 (exact identity) or -1 (published), got {negative_sign!r}")
    if isinstance(clip, numbers.Real) and not isinstance(clip, bool):
        if not clip >= 0:
            raise ValueError(f"clip: expected None, a number >= 0 (0 = off) or a pair (C_pos, C_neg) of positive "
                             f"floats, got {clip!r}")
    elif clip is not None and not (isinstance(clip, (tuple, list)) and len(clip) == 2
                                   and all(isinstance(c, numbers.Real) and c > 0 for c in clip)):
        raise ValueError(f"clip: expected None, a number >= 0 (0 = off) or a pair (C_pos, C_neg) of positive floats, "
                         f"got {clip!r}")


def bon_rlb(rewards: Tensor, *, n_bon: int, scores: Tensor | None = None, negative_sign: int = -1,
            sample_source: str = "bon", p=None, p_estimator: str = "loo", clip=None, eps: float = 1e-3,
            check_values: bool = True) -> Tensor:
    """BoN-RLB: the published g⁺/g⁻ weights for binary rewards (docs/method.md §5.3); N = N' = n_bon, p = P(fail).

        g⁺(p) = N p^(N−1) / (1 − p^N)  on correct samples,   negative_sign · g⁻(p),  g⁻(p) = N p / (1 − p)  on failures.

    ``sample_source="bon"`` (paper style): floor(n/N') disjoint groups in sample order. Each group's BoN pick (a
    uniformly random correct sample if there is one, else a uniformly random sample; the tie rule, averaged exactly)
    carries the weight, divided by the number of groups. ``sample_source="policy_group"`` (re-implementation):
    every one of the n samples carries its weight, divided by n.
    ``p``: a tensor [G] (the true p), else ``p_estimator`` estimates it from the samples: "loo" (default; leave-out
    plug-in, see ``_fail_rate``) or "group" (1 − mean R). ``p`` may also be given as the estimator's name.
    p̂ is clamped to [eps, 1 − eps]. ``clip=(C_pos, C_neg)`` caps |w| per sample before averaging
    (the re-implementation uses (3, 3)); a number C means (C, C), and 0 means no clip.

    With the true p, no clip and a non-binding eps, the expected update is ``bon_rlb_scale(p, ...)`` × ∇(1 − p^N):
    bon with +g⁻ gives exactly ∇J; bon with −g⁻ (the default, as published) gives (1+p)/(1−p) × ∇J; policy_group
    gives (g⁺ − sign·g⁻)/(N p^(N−1)) × ∇J. With a plug-in p̂ no choice is exactly unbiased.
    Degenerate groups: all correct gives p̂ = eps, so g⁺ ≈ N eps^(N−1) and the weights are ≈ 0. All wrong gives
    p̂ = 1 − eps and a large push (up to N/eps): use clip. At N' = 1, g⁺ = 1/(1−p) and g⁻ = p/(1−p).

    Shapes:
        rewards: [G, n] in {0, 1}; p: [G] if a tensor; returns w [G, n] float64.
    """
    check_choice("sample_source", sample_source, ("bon", "policy_group"))
    p = check_choice("p_estimator", p_estimator, ("loo", "group")) if p is None else p
    _check_options(eps=eps, clip=clip, negative_sign=negative_sign)
    if isinstance(clip, numbers.Real) and not isinstance(clip, bool):
        clip = (clip, clip) if clip > 0 else None
    R, _, N, checks = _validate(rewards, scores, n_bon=n_bon, allow_scores=False, binary=True, method="bon_rlb")
    p_hat = _fail_rate(R, N, p, sample_source, eps, checks)
    run_checks(checks, check_values)
    lead, one_m_pn = _g_terms(p_hat, N)
    g_pos, g_neg = lead / one_m_pn, N * p_hat / (1 - p_hat)
    if clip is not None:
        g_pos, g_neg = g_pos.clamp(max=float(clip[0])), g_neg.clamp(max=float(clip[1]))
    w = R * g_pos + (1 - R) * negative_sign * g_neg
    if sample_source == "policy_group":
        return w / R.shape[1]
    pick, _, groups = _group_picks(R, R, N)
    return pick * w / groups


def bon_rlb_p(rewards: Tensor, *, n_bon: int, scores: Tensor | None = None, sample_source: str = "bon", p=None,
              p_estimator: str = "loo", eps: float = 1e-3, check_values: bool = True) -> Tensor:
    """BoN-RLB(P): positive-only weights for binary rewards (docs/method.md §5.4). N = N' = n_bon.

        ḡ⁺(p) = N p^(N−1) (1 − p) / (1 − p^N) = N p^(N−1) / Σ_{t<N} p^t  ∈ [0, 1]   on correct BoN picks,

    with ``sample_source="bon"`` (default): disjoint groups as in bon_rlb, weight on correct picks, divided by the
    number of groups. With ``sample_source="policy_group"`` (π-sample form), every correct sample gets N p^(N−1) / n.
    Both are exactly unbiased for ∇(1 − p^N) with the true p (a tensor [G]). ``p``, ``p_estimator`` and ``eps`` work
    as in bon_rlb.
    Degenerate groups: all-wrong groups get 0. All-correct groups get ≈ N eps^(N−1) ≈ 0 (p̂ = eps). At N' = 1,
    ḡ⁺ = 1.

    Shapes:
        rewards: [G, n] in {0, 1}; p: [G] if a tensor; returns w [G, n] float64.
    """
    check_choice("sample_source", sample_source, ("bon", "policy_group"))
    p = check_choice("p_estimator", p_estimator, ("loo", "group")) if p is None else p
    _check_options(eps=eps)
    R, _, N, checks = _validate(rewards, scores, n_bon=n_bon, allow_scores=False, binary=True, method="bon_rlb_p")
    p_hat = _fail_rate(R, N, p, sample_source, eps, checks)
    run_checks(checks, check_values)
    lead, one_m_pn = _g_terms(p_hat, N)
    if sample_source == "policy_group":
        return R * lead / R.shape[1]
    pick, _, groups = _group_picks(R, R, N)
    return pick * R * (lead * (1 - p_hat) / one_m_pn) / groups


def bon_rlb_scale(p: Tensor, *, n_bon: int, negative_sign: int = -1, sample_source: str = "bon") -> Tensor:
    """Per-prompt factor s(p) such that E[bon_rlb update] = s(p) ∇(1 − p^N), given the true p (no clip).

        sample_source "bon":           s = (1 − sign·p) / (1 − p)      (+g⁻: 1, exact;  −g⁻: (1+p)/(1−p))
        sample_source "policy_group":  s = (g⁺ − sign·g⁻) / (N p^(N−1)) = 1/(1 − p^N) − sign · p^(2−N) / (1 − p)

    Log it next to the weights to see how the published form re-weights prompts (docs/method.md §5.3).

    Shapes:
        p: [G] in (0, 1); returns [G] float64.
    """
    check_choice("sample_source", sample_source, ("bon", "policy_group"))
    _check_options(negative_sign=negative_sign)
    N = check_int("n_bon", n_bon, 1)
    if not isinstance(p, Tensor) or p.dim() != 1:
        raise ValueError(f"p: expected a tensor of shape [G], got {getattr(p, 'shape', type(p).__name__)}")
    p = p.detach().to(torch.float64)
    if sample_source == "bon":
        return (1 - negative_sign * p) / (1 - p)
    log_p = torch.log(p)
    return 1 / -torch.expm1(N * log_p) - negative_sign * torch.exp((2 - N) * log_p) / (1 - p)


# ----------------------------------------------------------------------------------------------------------------
# Methods: BoN-SFT and SFT (expert data; returns weights for the expert AND for the on-policy samples)
# ----------------------------------------------------------------------------------------------------------------


def _bon_log_coeffs(F: Tensor, Fm: Tensor, N: int):
    """Partial derivatives of log π_bon(y*) = log π(y*) + log(F^N − F⁻^N) − log(F − F⁻) in stable form.

    With x = F⁻/F ∈ [0, 1] and S_m = Σ_{t<m} x^t:
        α     = ∂/∂F      = (1/F) Σ_{t<N−1} (N−1−t) x^t / S_N
        α + β = ∂/∂F + ∂/∂F⁻ = (N/F) S_{N−1} / S_N
    Both are finite at x = 1 (the no-mass limit gives the continuous-score form (N−1)/F). Returns (α, α + β).
    """
    x = (Fm / F).clamp(0.0, 1.0)
    t = torch.arange(N, dtype=torch.float64, device=F.device)
    powers = x.unsqueeze(-1) ** t  # (..., N)
    s_n = powers.sum(-1)
    s_n1 = powers[..., : N - 1].sum(-1)
    alpha = (powers[..., : N - 1] * (N - 1 - t[: N - 1])).sum(-1) / (F * s_n)
    return alpha, N * s_n1 / (F * s_n)


def bon_sft(expert_scores: Tensor, scores: Tensor | None = None, *, n_bon: int, form: str = "exact",
            lam: float | None = None, rewards: Tensor | None = None, cdf="loo", p: Tensor | None = None,
            baseline: str = "loo", eps: float = 1e-3, check_values: bool = True):
    """BoN-SFT: maximise log π_bon(y*) for an expert response y* with verifier score s* (docs/method.md §5.1).

    Returns (w_expert [G], w_samples [G, n]). The loss is −(w_expert log π(y*) + Σ_i w_i log π(y_i)), with
    y_i ~ π the on-policy samples and ``scores`` their verifier scores. If ``scores`` is None, ``rewards`` is the
    selector (r = R). n_bon = N' may exceed n: the samples only estimate expectations under π.

    ``form="exact"``: w_i = (α 1{s_i = s*} + (α+β) 1{s_i < s*} − b_i) / n, the sample form of
    ∇log π_bon(y*) = ∇log π(y*) + α ∇F + β ∇F⁻ (F = P_π(r <= s*), F⁻ = P_π(r < s*); docs/method.md §5.1).
    Exactly unbiased when the true (F, F⁻) are given as ``cdf=(F, F_minus)`` tensors [G], or for a binary
    verifier as ``p`` [G] = P_π(r = 0). ``cdf="loo"`` (default) plugs in leave-one-out estimates from the other
    samples (F̂ clamped to >= eps): consistent as n → ∞, not exact at finite n.

    ``form="variational"``: w_i = λ (1{s_i <= s*} − b_i) / n with λ = ``lam`` (default N' − 1). Exactly unbiased
    for log π(y*) + λ Q_π(y*), i.e. the tilted log-likelihood without its normaliser term, which vanishes for
    continuous scores but not for discrete or tied ones (docs/method.md §3.1 has the λ table).

    ``baseline``: "loo" (default) subtracts the leave-one-out mean of the per-sample term (valid: it depends only
    on the other samples), or "none". At N' = 1 both forms give w_samples = 0 (this is ``sft``).

    Shapes:
        expert_scores: [G]; scores / rewards: [G, n]; cdf: pair of [G]; p: [G]; returns ([G], [G, n]) float64.
    """
    form = check_choice("form", form, ("exact", "variational"))
    check_choice("baseline", baseline, ("loo", "none"))
    _check_options(eps=eps)
    if scores is None and rewards is None:
        raise ValueError("scores (or rewards, when the reward itself selects): expected a [G, n] tensor for bon_sft, "
                         "got None for both")
    name = "scores" if scores is not None else "rewards"
    s = as_matrix(name, scores if scores is not None else rewards)
    if scores is not None and rewards is not None:
        as_matrix("rewards", rewards, s.shape, scores.device)
    N = check_int("n_bon", n_bon, 1)
    G, n = s.shape
    checks = [(~torch.isfinite(s), f"{name}: expected finite values (no NaN or inf)")]
    s_star = _prompt_vector("expert_scores", expert_scores, G, s.device, None, None, checks)[:, None]
    below, equal = (s < s_star).to(torch.float64), (s == s_star).to(torch.float64)
    if form == "variational":
        lam = N - 1.0 if lam is None else lam
        if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
            raise TypeError(f"lam: expected a float >= 0, got {lam!r}")
        if not lam >= 0:
            raise ValueError(f"lam: expected a float >= 0, got {lam!r}")
        run_checks(checks, check_values)
        win = below + equal
        v = lam * win
        b = lam * (win.sum(-1, keepdim=True) - win) / (n - 1) if n > 1 else torch.zeros_like(v)
    else:
        F, Fm = _expert_cdf(s, below, equal, s_star, cdf, p, eps, checks)
        run_checks(checks, check_values)
        alpha, gamma = _bon_log_coeffs(F, Fm, N)
        v = alpha * equal + gamma * below
        if n > 1:  # the same coefficients applied to the other samples' indicators
            others_eq, others_lt = equal.sum(-1, keepdim=True) - equal, below.sum(-1, keepdim=True) - below
            b = (alpha * others_eq + gamma * others_lt) / (n - 1)
        else:
            b = torch.zeros_like(v)
    if baseline == "none":
        b = torch.zeros_like(v)
    return torch.ones(G, dtype=torch.float64, device=s.device), (v - b) / n


def _expert_cdf(s: Tensor, below: Tensor, equal: Tensor, s_star: Tensor, cdf, p, eps: float, checks):
    """(F, F⁻) of the expert's score as [G, 1] (given) or [G, n] (leave-one-out plug-in) float64 tensors."""
    G, n = below.shape
    device = below.device
    if p is not None:
        if not (isinstance(cdf, str) and cdf == "loo"):
            raise ValueError("give either cdf=(F, F_minus) or p (binary verifier), not both")
        p = _prompt_vector("p", p, G, device, 0.0, 1.0, checks)[:, None]
        checks.append(((s_star != 0) & (s_star != 1),
                       "expert_scores: expected binary values (0 or 1) when p is given"))
        checks.append(((s != 0) & (s != 1), "scores: expected binary values (0 or 1) when p is given"))
        correct = s_star == 1
        F = torch.where(correct, torch.ones_like(p), p)
        Fm = torch.where(correct, p, torch.zeros_like(p))
    elif isinstance(cdf, str):
        check_choice("cdf", cdf, ("loo",))
        le, lt = below + equal, below
        if n > 1:
            F = (le.sum(-1, keepdim=True) - le) / (n - 1)
            Fm = (lt.sum(-1, keepdim=True) - lt) / (n - 1)
        else:
            F, Fm = le, lt
    else:
        if not (isinstance(cdf, (tuple, list)) and len(cdf) == 2):
            raise ValueError("cdf: expected 'loo' or a pair (F, F_minus) of [G] tensors")
        F = _prompt_vector("cdf[0] (F)", cdf[0], G, device, 0.0, 1.0, checks)[:, None]
        Fm = _prompt_vector("cdf[1] (F_minus)", cdf[1], G, device, 0.0, 1.0, checks)[:, None]
        checks.append((Fm > F, "cdf: expected F_minus <= F"))
    return F.clamp(min=eps), Fm.clamp(max=1.0)


def sft(expert_scores: Tensor, scores: Tensor | None = None, *, n_bon: int = 1, rewards: Tensor | None = None,
        **options):
    """Standard SFT: the N' = 1 case of bon_sft. Returns (w_expert = 1 [G], w_samples = 0 [G, n]).

    The on-policy samples are optional. Without them, w_samples has shape [G, 0].

    Shapes:
        expert_scores: [G]; scores / rewards: [G, n]; returns ([G], [G, n]) float64.
    """
    if check_int("n_bon", n_bon, 1) != 1:
        raise ValueError(f"n_bon: expected 1 for sft (use bon_sft for N' > 1), got {n_bon}")
    if scores is None and rewards is None:
        if not isinstance(expert_scores, Tensor) or expert_scores.dim() != 1:
            raise ValueError(f"expert_scores: expected a tensor of shape [G], got {type(expert_scores).__name__}")
        G = expert_scores.shape[0]
        dev = expert_scores.device
        return torch.ones(G, dtype=torch.float64, device=dev), torch.zeros(G, 0, dtype=torch.float64, device=dev)
    return bon_sft(expert_scores, scores, n_bon=1, rewards=rewards, **options)


# ----------------------------------------------------------------------------------------------------------------
# Dispatch
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Objective:
    """How a method is called: its weight function and what the trainer passes to it.

    fn       the weight function: ``fn(rewards, n_bon=, scores=, **options) -> w [G, n]``, or for ``expert``
             methods ``fn(expert_scores, scores, n_bon=, rewards=, **options) -> (w_expert [G], w_samples [G, n])``.
    label    a short display name.
    options  keyword options a run may set: option name -> allowed values (a tuple), or None for "a number
             >= 0, or None for the function's default". ``bonfast.config.TrainConfig`` has one field
             ``<method>_<option>`` per option, and
             ``TrainConfig.objective_kwargs()`` collects those of the configured method.
    scores   the trainer passes the verifier scores r (else None: the method selects by the reward itself).
    expert   the method needs an expert (reference) response per prompt.
    bon_aware  False for the inference-unaware methods, which need n_bon = 1.
    descends   None, or ``descends(n_bon, options) -> None | (option, reason)``: names the option of a setting whose
             expected update is not an ascent direction of the method's objective (the trainer refuses it).
    """
    fn: Callable
    label: str
    options: dict = field(default_factory=dict)
    scores: bool = False
    expert: bool = False
    bon_aware: bool = True
    descends: Callable | None = None


def _bon_rlb_descends(n_bon: int, options: dict):
    """BoN-RLB with +g⁻ on π samples: s(p) = 1/(1 − p^N) − p^(2−N)/(1 − p) < 0 for every p when N >= 2, since
    p^(2−N) >= 1 and 1 − p^N > 1 − p (``bon_rlb_scale``): the expected update points down the pass@N' gradient."""
    if n_bon >= 2 and options.get("negative_sign") == 1 and options.get("sample_source") == "policy_group":
        return ("negative_sign", "-1 when sample_source is 'policy_group' and n_bon >= 2: with +1 the expected "
                "update is bon_rlb_scale(p) x grad pass@N' with a negative scale for every p, so training would "
                "descend the objective (use sample_source 'bon' for the exact +1 identity)")
    return None


# The registry: adding a method = a weight function above + one entry here (+ its option fields in config.py).
OBJECTIVES: dict[str, Objective] = {
    "sft": Objective(sft, "SFT", scores=True, expert=True, bon_aware=False),
    # lam: None (N' − 1) or a number >= 0; used by form "variational" only
    "bon_sft": Objective(bon_sft, "BoN-SFT", {"form": ("exact", "variational"), "lam": None}, scores=True,
                         expert=True),
    "rl": Objective(rl, "RL", bon_aware=False),
    "rl_v": Objective(rl_v, "RL-V", scores=True, bon_aware=False),
    "pass_at_k": Objective(pass_at_k, "PKPO pass@k"),
    "bon_rl_s": Objective(bon_rl_s, "BoN-RL-S", {"credit": ("exact", "winner")}),
    "bon_rl_v": Objective(bon_rl_v, "BoN-RL-V", {"credit": ("exact", "winner"), "reward": ("task", "verifier")},
                          scores=True),
    "bon_rlb": Objective(bon_rlb, "BoN-RLB", {"negative_sign": (-1, 1), "sample_source": ("bon", "policy_group"),
                                              "clip": None, "p_estimator": ("loo", "group")},
                         descends=_bon_rlb_descends),
    "bon_rlb_p": Objective(bon_rlb_p, "BoN-RLB(P)", {"sample_source": ("bon", "policy_group"),
                                                     "p_estimator": ("loo", "group")}),
}
METHODS = tuple(OBJECTIVES)


def weights(method: str, rewards: Tensor | None, *, n_bon: int, scores: Tensor | None = None, **options):
    """Weights for ``method`` (a key of ``OBJECTIVES``): ``fn(rewards, n_bon=n_bon, scores=scores, **options)``.

    Expert methods ("sft", "bon_sft") take the expert's scores as ``expert_scores=`` in ``options`` and return
    a pair (w_expert [G], w_samples [G, n]). Every other method returns w [G, n].
    """
    if method not in OBJECTIVES:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    objective = OBJECTIVES[method]
    if objective.expert:
        if "expert_scores" not in options:
            raise ValueError(f"{method} needs expert_scores=[G] tensor (the verifier scores of the expert responses)")
        expert_scores = options.pop("expert_scores")
        return objective.fn(expert_scores, scores, n_bon=n_bon, rewards=rewards, **options)
    return objective.fn(rewards, n_bon=n_bon, scores=scores, **options)
