"""Exact-enumeration tests for bonfast.objectives.

On a small categorical policy π = softmax(θ) over K responses (each with a fixed reward R, verifier score r), the
expectation over ALL n-tuples y_1..y_n ~ π of Σ_i w_i ∇_θ log π(y_i) is computed exactly (one vectorised weight call
with G = K^n rows, each row weighted by Π_i π(y_i)). It is then compared with torch.autograd of the closed-form
objective in float64. Exact forms must agree to relative error 1e-8. Published forms must agree with their
documented multiple of the exact gradient.
"""
import functools
import itertools
import math

import pytest
import torch

from bonfast import objectives as ob

REL = 1e-8
NS = [1, 2, 3, 4, 6]
NK = [(n, k) for n in NS for k in range(1, n + 1)]


# ------------------------------------------------------------------------------------------------------------------
# Harness
# ------------------------------------------------------------------------------------------------------------------


def n_responses(n):
    return 8 if n <= 3 else (6 if n == 4 else 4)  # K^n <= 8^4 tuples


@functools.lru_cache(maxsize=None)
def tuples(K, n):
    """All n-tuples of response indices, [K^n, n]."""
    return torch.tensor(list(itertools.product(range(K), repeat=n)), dtype=torch.long).reshape(-1, n)


def expected_update(theta, w, idx):
    """Σ_tuples Π_i π(y_i) Σ_i w_i ∇_θ log π(y_i), where ∇_θ log softmax(θ)_y = e_y − π."""
    pi = torch.softmax(theta, 0).detach()
    prob = pi[idx].prod(-1)  # (M,)
    pw = prob[:, None] * w  # (M, n)
    A = torch.zeros_like(pi).index_add_(0, idx.flatten(), pw.flatten())
    return A - pi * pw.sum()


def grad_of(objective, theta):
    th = theta.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(objective(torch.softmax(th, 0)), th)
    return g


def bon_distribution(pi, s, N):
    """docs/method.md §3 with ties: π_bon(y) = π(y) [F(y)^N − F⁻(y)^N] / P(r = r(y))."""
    le = (s[None, :] <= s[:, None]).to(pi.dtype)
    lt = (s[None, :] < s[:, None]).to(pi.dtype)
    F, Fm = le @ pi, lt @ pi
    return pi * (F ** N - Fm ** N) / (F - Fm)


def assert_grad(E, g, rel=REL, what=""):
    assert g.norm() > 1e-6, "degenerate instance: the true gradient is ~0"
    err = (E - g).norm() / g.norm()
    assert err <= rel, f"{what}: relative error {err:.3e} (E={E.tolist()}, grad={g.tolist()})"


def make_instance(K, seed, *, binary=True, ties=True):
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(K, generator=gen, dtype=torch.float64)
    if binary:
        R = torch.zeros(K, dtype=torch.float64)
        R[torch.randperm(K, generator=gen)[: max(1, K // 3)]] = 1.0
    else:
        R = torch.rand(K, generator=gen, dtype=torch.float64) * 2 - 0.5
    if ties:
        s = torch.randint(0, 3, (K,), generator=gen).to(torch.float64)
        s[:2] = torch.tensor([0.0, 2.0])  # at least two levels
    else:
        s = torch.randperm(K, generator=gen).to(torch.float64) + 0.25 * torch.rand(K, generator=gen)
    return theta, R, s


def fail_prob(theta, R):
    return (torch.softmax(theta, 0) * (1 - R)).sum()


def run(fn, theta, R, s, n):
    """Expected update of a weight function fn(R [M, n], s [M, n]) -> w [M, n] on all n-tuples."""
    idx = tuples(len(theta), n)
    return expected_update(theta, fn(R[idx], s[idx]), idx)


# ------------------------------------------------------------------------------------------------------------------
# Combinatorics: pick_probability and subset_credit against brute force over subsets and tie-break orders
# ------------------------------------------------------------------------------------------------------------------


def brute_credit(R, s, k):
    """c_i = (1/C(n,k)) Σ_{S ∋ i} mean over all tie-break orders of R_pick(S); all orders enumerated."""
    n = len(R)
    levels = sorted(set(s))
    blocks = [[i for i in range(n) if s[i] == v] for v in levels]
    orders = list(itertools.product(*[itertools.permutations(b) for b in blocks]))
    c = [0.0] * n
    for S in itertools.combinations(range(n), k):
        total = 0.0
        for order in orders:
            rank = {i: r for r, i in enumerate(itertools.chain(*order))}
            total += R[max(S, key=rank.__getitem__)]
        for i in S:
            c[i] += total / len(orders)
    return [x / math.comb(n, k) for x in c]


@pytest.mark.parametrize("n", [1, 2, 5, 7])
def test_pick_probability_brute_force(n):
    for a in range(n):
        for e in range(n - a):
            for k in range(1, n + 1):
                # sample 0 has a strictly lower, e equal, the rest higher; count over subsets containing 0
                s = [1] + [0] * a + [1] * e + [2] * (n - 1 - a - e)
                exp = 0.0
                for S in itertools.combinations(range(1, n), k - 1):
                    top = max(s[j] for j in (0, *S))
                    if s[0] == top:
                        exp += 1.0 / sum(1 for j in (0, *S) if s[j] == top)
                want = exp / math.comb(n - 1, k - 1)
                got = ob.pick_probability(torch.tensor([a]), torch.tensor([e]), k=k, n=n)
                assert abs(got.item() - want) < 1e-14, (n, a, e, k)


@pytest.mark.parametrize("n", [1, 3, 6, 8])
def test_subset_credit_brute_force(n):
    gen = torch.Generator().manual_seed(n)
    for trial in range(3):
        R = (torch.rand(n, generator=gen, dtype=torch.float64) * 4 - 1).round(decimals=2)
        s = torch.randint(0, 3 if trial else n + 1, (n,), generator=gen).to(torch.float64)
        for k in range(1, n + 1):
            got = ob.subset_credit(R[None], s[None], k)[0]
            want = torch.tensor(brute_credit(R.tolist(), s.tolist(), k), dtype=torch.float64)
            torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------------------------------------------
# Exact methods
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("baseline", ["loo", "none"])
@pytest.mark.parametrize("target", ["rewards", "scores"])
def test_rl_exact(n, baseline, target):
    theta, R, s = make_instance(n_responses(n), 10 + n, binary=False)
    if target == "rewards":
        E = run(lambda r, v: ob.rl(r, n_bon=1, baseline=baseline), theta, R, s, n)
        g = grad_of(lambda pi: pi @ R, theta)
    else:
        E = run(lambda r, v: ob.rl(r, n_bon=1, scores=v, target="scores", baseline=baseline), theta, R, s, n)
        g = grad_of(lambda pi: pi @ s, theta)
    assert_grad(E, g, what=f"rl n={n}")


BASELINES = ["loo", "loo_k_minus_1", "none"]


@pytest.mark.parametrize("n,k", NK)
def test_pass_at_k_exact(n, k):
    theta, R, s = make_instance(n_responses(n), 100 + 10 * n + k)
    g = grad_of(lambda pi: 1 - (pi @ (1 - R)) ** k, theta)
    for b in BASELINES:
        E = run(lambda r, v: ob.pass_at_k(r, n_bon=k, baseline=b), theta, R, s, n)
        assert_grad(E, g, what=f"pass_at_k n={n} k={k} baseline={b}")


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("binary", [True, False])
def test_bon_rl_s_exact(n, k, binary):
    theta, R, s = make_instance(n_responses(n), 200 + 10 * n + k, binary=binary)
    g = grad_of(lambda pi: bon_distribution(pi, R, k) @ R, theta)
    for b in BASELINES:
        E = run(lambda r, v: ob.bon_rl_s(r, n_bon=k, baseline=b), theta, R, s, n)
        assert_grad(E, g, what=f"bon_rl_s n={n} k={k} baseline={b}")
    if binary:  # closed form of docs/method.md §3: BoN with r = R is pass@N
        pi = torch.softmax(theta, 0)
        torch.testing.assert_close(bon_distribution(pi, R, k) @ R, 1 - fail_prob(theta, R) ** k)


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("binary", [True, False])
def test_bon_rl_v_exact(n, k, ties, binary):
    theta, R, s = make_instance(n_responses(n), 300 + 10 * n + k, binary=binary, ties=ties)
    g = grad_of(lambda pi: bon_distribution(pi, s, k) @ R, theta)
    for b in BASELINES:
        E = run(lambda r, v: ob.bon_rl_v(r, n_bon=k, scores=v, baseline=b), theta, R, s, n)
        assert_grad(E, g, what=f"bon_rl_v n={n} k={k} baseline={b}")


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("ties", [True, False])
def test_bon_rl_v_verifier_reward_exact(n, k, ties):
    """reward="verifier": the verifier picks and its score of the pick is the signal, J = E[max of N' scores]."""
    theta, R, s = make_instance(n_responses(n), 350 + 10 * n + k, binary=False, ties=ties)
    g = grad_of(lambda pi: bon_distribution(pi, s, k) @ s, theta)
    for b in BASELINES:
        E = run(lambda r, v: ob.bon_rl_v(r, n_bon=k, scores=v, baseline=b, reward="verifier"), theta, R, s, n)
        assert_grad(E, g, what=f"bon_rl_v reward=verifier n={n} k={k} baseline={b}")


@pytest.mark.parametrize("n,k", [(2, 2), (3, 1), (4, 2), (6, 4)])
def test_enumeration_catches_a_baseline_that_uses_the_sample_itself(n, k):
    """Negative control: subtracting the mean credit *including* sample i biases the estimator, and the harness
    sees it. (The leave-one-out identity (n c_i − Σc)/(n − k) is the valid version.)"""
    theta, R, s = make_instance(n_responses(n), 400 + n, binary=False)
    g = grad_of(lambda pi: bon_distribution(pi, s, k) @ R, theta)

    def biased(r, v):
        c = ob.subset_credit(r, v, k)
        return c - c.mean(-1, keepdim=True) * (1.5 if n == k else 1.0)

    E = run(biased, theta, R, s, n)
    assert (E - g).norm() / g.norm() > 1e-3


def test_method_equalities():
    gen = torch.Generator().manual_seed(1)
    for n in [1, 2, 5, 8, 13]:
        Rb = torch.randint(0, 2, (64, n), generator=gen).to(torch.float64)
        Rr = torch.randn(64, n, generator=gen, dtype=torch.float64)
        for k in range(1, n + 1):
            for b in ["loo", "loo_k_minus_1", "none"]:
                torch.testing.assert_close(ob.pass_at_k(Rb, n_bon=k, baseline=b),
                                           ob.bon_rl_s(Rb, n_bon=k, baseline=b), rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(ob.bon_rl_v(Rr, n_bon=k, scores=Rr, baseline=b),
                                           ob.bon_rl_s(Rr, n_bon=k, baseline=b), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(ob.rl(Rr, n_bon=1), ob.bon_rl_s(Rr, n_bon=1), rtol=1e-12, atol=1e-14)
        if n > 1:  # the leave-one-out weights sum to zero over the samples of a prompt
            zero = torch.zeros(64, dtype=torch.float64)
            torch.testing.assert_close(ob.bon_rl_v(Rr, n_bon=1, scores=Rb).sum(-1), zero)


# ------------------------------------------------------------------------------------------------------------------
# Published variants and their documented relations
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,k", NK)
def test_winner_credit_binary_r_equals_R_is_parallel_with_documented_scale(n, k):
    theta, R, _ = make_instance(n_responses(n), 500 + 10 * n + k)
    E = run(lambda r, v: ob.bon_rl_v(r, n_bon=k, scores=r, credit="winner"), theta, R, R, n)
    g = grad_of(lambda pi: 1 - (pi @ (1 - R)) ** k, theta)
    p = fail_prob(theta, R).item()
    scale = sum(p ** t for t in range(k - 1)) / (k * p ** (k - 2)) if k > 1 else 0.0
    if k == 1:
        assert E.abs().max() < 1e-15
    else:
        assert_grad(E, scale * g, what=f"winner n={n} k={k}")
        assert abs(scale - 1) > 1e-3  # ... so it is NOT the gradient of pass@N'


@pytest.mark.parametrize("n,k,baseline", [(3, 3, "mean"), (4, 4, "mean"), (6, 3, "mean"), (2, 2, "none"),
                                          (4, 2, "none"), (6, 3, "none")])
@pytest.mark.parametrize("verifier", [True, False])
@pytest.mark.parametrize("ties", [True, False])
def test_winner_credit_is_biased(n, k, baseline, verifier, ties):
    """Real rewards, selection by a verifier or by R itself: not even parallel to the true gradient."""
    theta, R, s = make_instance(n_responses(n), 600 + n, binary=False, ties=ties)
    s = s if verifier else R
    E = run(lambda r, v: ob.bon_rl_v(r, n_bon=k, scores=v, credit="winner", baseline=baseline), theta, R, s, n)
    g = grad_of(lambda pi: bon_distribution(pi, s, k) @ R, theta)
    cos = (E @ g) / (E.norm() * g.norm())
    assert (E - g).norm() / g.norm() > 1e-2 and cos < 1 - 1e-5


@pytest.mark.parametrize("n", [2, 3, 4, 6])
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("binary", [True, False])
def test_winner_credit_at_two_is_half_the_gradient(n, ties, binary):
    """At N' = 2 the mean baseline turns the winner's credit into (R_win − R_lose)/2, and the expected update is
    exactly ∇J / 2 for any verifier (ties included): the published form is exact up to scale only here."""
    theta, R, s = make_instance(n_responses(n), 650 + n, binary=binary, ties=ties)
    E = run(lambda r, v: ob.bon_rl_v(r, n_bon=2, scores=v, credit="winner"), theta, R, s, n)
    assert_grad(E, 0.5 * grad_of(lambda pi: bon_distribution(pi, s, 2) @ R, theta), what="winner N'=2")


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("source", ["bon", "policy_group"])
def test_bon_rlb_relations_with_true_p(n, k, sign, source):
    theta, R, s = make_instance(n_responses(n), 700 + 10 * n + k)
    p = fail_prob(theta, R).detach()
    idx = tuples(len(theta), n)
    w = ob.bon_rlb(R[idx], n_bon=k, negative_sign=sign, sample_source=source, p=p.expand(len(idx)), eps=1e-12)
    E = expected_update(theta, w, idx)
    scale = ob.bon_rlb_scale(p[None], n_bon=k, negative_sign=sign, sample_source=source)[0]
    g = grad_of(lambda pi: 1 - (pi @ (1 - R)) ** k, theta)
    assert_grad(E, scale * g, what=f"bon_rlb n={n} k={k} sign={sign} {source}")
    # the documented closed forms of the scale
    gp, gm = k * p ** (k - 1) / (1 - p ** k), k * p / (1 - p)
    want = ((1 - sign * p) / (1 - p)) if source == "bon" else (gp - sign * gm) / (k * p ** (k - 1))
    torch.testing.assert_close(scale, want, rtol=1e-12, atol=0)
    if source == "bon" and sign == 1:
        torch.testing.assert_close(scale, torch.ones((), dtype=torch.float64))


@pytest.mark.parametrize("n,k", NK)
@pytest.mark.parametrize("source", ["bon", "policy_group"])
def test_bon_rlb_p_exact_with_true_p(n, k, source):
    theta, R, s = make_instance(n_responses(n), 800 + 10 * n + k)
    p = fail_prob(theta, R).detach()
    idx = tuples(len(theta), n)
    w = ob.bon_rlb_p(R[idx], n_bon=k, sample_source=source, p=p.expand(len(idx)), eps=1e-12)
    E = expected_update(theta, w, idx)
    assert_grad(E, grad_of(lambda pi: 1 - (pi @ (1 - R)) ** k, theta), what=f"bon_rlb_p n={n} k={k}")


def test_rlb_weight_table_of_paper():
    """docs/method.md §5.3 weight table (N, p, g+, g-, g-bar+), read off the weights of single-sample groups."""
    rows = [(4, 0.5, 0.533, 4, 0.267), (4, 0.99, 98.5, 396, 0.985), (16, 0.9, 4.04, 144, 0.404),
            (32, 0.5, 1.49e-8, 32, 7.45e-9), (32, 0.97, 20.0, 1030, 0.600)]
    for N, p, gp, gm, gbar in rows:
        pt = torch.tensor([p, p], dtype=torch.float64)
        R = torch.zeros(2, N, dtype=torch.float64)
        R[0, 0] = 1.0  # prompt 0: one correct pick; prompt 1: all wrong
        w = ob.bon_rlb(R, n_bon=N, p=pt, sample_source="bon")
        wp = ob.bon_rlb_p(R, n_bon=N, p=pt)
        assert w[0, 0].item() == pytest.approx(gp, rel=5e-3)
        assert -w[1].sum().item() == pytest.approx(gm, rel=5e-3)
        assert wp[0, 0].item() == pytest.approx(gbar, rel=5e-3)
        assert 0 <= wp[0, 0].item() <= 1


def test_bon_rlb_groups_picks_and_leave_group_out_p():
    R = torch.tensor([[1, 0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1]], dtype=torch.float64)
    w = ob.bon_rlb(R, n_bon=2, negative_sign=1, p="group")
    # groups (0,1) (2,3) (4,5); sample 6 is a leftover; weights only on picks
    assert w[0, 1] == 0 and w[0, 6] == 0 and w[0, 4] == w[0, 5] and w[1, 6] == 0
    assert torch.all(w[1, :6] > 0) and torch.allclose(w[1, :6], w[1, :1].expand(6))
    p_hat = ob._fail_rate(R, 2, "loo", "bon", 1e-3, [])
    # group (0,1) of prompt 0 leaves out its own 1 failure: (4 - 1) / (7 - 2); leftover 6 leaves out itself
    assert p_hat[0, 0].item() == pytest.approx(3 / 5) and p_hat[0, 6].item() == pytest.approx(3 / 6)
    assert p_hat[1, 0].item() == pytest.approx(4 / 5)
    p_pg = ob._fail_rate(R, 2, "loo", "policy_group", 1e-3, [])
    assert p_pg[0, 1].item() == pytest.approx(3 / 6) and p_pg[0, 0].item() == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------------------------------------------
# BoN-SFT and SFT
# ------------------------------------------------------------------------------------------------------------------


def sft_expected(theta, w_expert, w, idx, star):
    pi = torch.softmax(theta, 0).detach()
    onehot = torch.zeros_like(pi)
    onehot[star] = 1.0
    return w_expert * (onehot - pi) + expected_update(theta, w, idx)


def log_bon(pi, s, N, star):
    return torch.log(bon_distribution(pi, s, N)[star])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("N", [1, 2, 3, 6])
@pytest.mark.parametrize("ties", [True, False])
@pytest.mark.parametrize("baseline", ["loo", "none"])
def test_bon_sft_exact_with_true_cdf(n, N, ties, baseline):
    theta, R, s = make_instance(n_responses(n), 900 + 10 * n + N, binary=False, ties=ties)
    pi = torch.softmax(theta, 0).detach()
    idx = tuples(len(theta), n)
    for star in range(len(theta)):
        F, Fm = pi[s <= s[star]].sum().clamp(max=1.0), pi[s < s[star]].sum()
        M = len(idx)
        we, w = ob.bon_sft(s[star].expand(M), s[idx], n_bon=N, cdf=(F.expand(M), Fm.expand(M)),
                           baseline=baseline, eps=1e-12)
        assert torch.all(we == 1)
        E = sft_expected(theta, 1.0, w, idx, star)
        assert_grad(E, grad_of(lambda q: log_bon(q, s, N, star), theta), what=f"bon_sft n={n} N={N} *={star}")


@pytest.mark.parametrize("n", [1, 3, 4])
@pytest.mark.parametrize("N", [1, 2, 4])
def test_bon_sft_exact_binary_verifier_with_p(n, N):
    theta, R, _ = make_instance(n_responses(n), 950 + n + N)
    p = fail_prob(theta, R).detach()
    idx = tuples(len(theta), n)
    M = len(idx)
    for star in [int(R.argmax()), int(R.argmin())]:
        we, w = ob.bon_sft(R[star].expand(M), R[idx], n_bon=N, p=p.expand(M), eps=1e-12, baseline="none")
        E = sft_expected(theta, 1.0, w, idx, star)
        assert_grad(E, grad_of(lambda q: log_bon(q, R, N, star), theta), what=f"bon_sft binary n={n} N={N}")
        if R[star] == 1 and n > 1:  # docs/method.md §5.1: w_i = -c(p) R_i / n, here with its leave-one-out baseline
            c = 1 / (1 - p) - N * p ** (N - 1) / (1 - p ** N)
            r = R[idx]
            _, w = ob.bon_sft(R[star].expand(M), r, n_bon=N, p=p.expand(M), eps=1e-12)
            loo = (r.sum(-1, keepdim=True) - r) / (n - 1)
            torch.testing.assert_close(w, -c * (r - loo) / n, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("N", [1, 2, 5])
@pytest.mark.parametrize("ties", [True, False])
def test_bon_sft_variational_exact_for_logpi_plus_lambda_Q(n, N, ties):
    theta, R, s = make_instance(n_responses(n), 970 + n + N, binary=False, ties=ties)
    idx = tuples(len(theta), n)
    M = len(idx)
    star = 2
    lam = N - 1.0
    we, w = ob.bon_sft(s[star].expand(M), s[idx], n_bon=N, form="variational")
    E = sft_expected(theta, 1.0, w, idx, star)

    def Q(pi):
        return pi[s <= s[star]].sum()

    assert_grad(E, grad_of(lambda pi: torch.log(pi[star]) + lam * Q(pi), theta), what="variational")
    if N > 1:  # with discrete scores the dropped ∇log Z term is real: the variational log-likelihood differs
        def with_z(pi):
            F = (s[None, :] <= s[:, None]).to(pi.dtype) @ pi
            return torch.log(pi[star]) + lam * Q(pi) - torch.log(pi @ torch.exp(lam * F))
        g = grad_of(with_z, theta)
        assert (E - g).norm() / g.norm() > 1e-3


@pytest.mark.parametrize("n,N", [(2, 3), (3, 2), (4, 5)])
def test_bon_sft_plug_in_expectation(n, N):
    """With cdf="loo" the coefficients depend only on the other samples, so the expected update is exactly
    ∇log π(y*) + E[α] ∇F + E[β] ∇F⁻ (α, β evaluated at the leave-one-out F̂, F̂⁻), as documented."""
    theta, R, s = make_instance(n_responses(n), 990 + n, binary=False, ties=True)
    idx = tuples(len(theta), n)
    pi = torch.softmax(theta, 0).detach()
    star = 3
    sv = s[idx]
    _, w = ob.bon_sft(s[star].expand(len(idx)), sv, n_bon=N, eps=1e-12)
    E = sft_expected(theta, 1.0, w, idx, star)
    # E[α], E[β] for sample 0, from the other n - 1 samples of every tuple
    others = sv[:, 1:]
    F_hat = (others <= s[star]).to(torch.float64).mean(-1).clamp(min=1e-12)
    Fm_hat = (others < s[star]).to(torch.float64).mean(-1)
    alpha, gamma = ob._bon_log_coeffs(F_hat, Fm_hat, N)
    prob = pi[idx].prod(-1)
    a_bar, b_bar = prob @ alpha, prob @ (gamma - alpha)

    def surrogate(q):
        return torch.log(q[star]) + a_bar * q[s <= s[star]].sum() + b_bar * q[s < s[star]].sum()

    assert_grad(E, grad_of(surrogate, theta), what="plug-in")
    g = grad_of(lambda q: log_bon(q, s, N, star), theta)
    assert (E - g).norm() / g.norm() > 1e-4  # ... which is not the exact gradient at finite n


def test_sft_is_bon_sft_at_one():
    s = torch.randn(5, 4, dtype=torch.float64)
    e = torch.randn(5, dtype=torch.float64)
    for form in ["exact", "variational"]:
        we, w = ob.sft(e, s, form=form)
        assert torch.all(we == 1) and torch.all(w == 0) and w.shape == (5, 4)
        we2, w2 = ob.bon_sft(e, s, n_bon=1, form=form)
        assert torch.equal(w, w2)
    we, w = ob.sft(e)
    assert we.shape == (5,) and w.shape == (5, 0)
    with pytest.raises(ValueError, match="n_bon: expected 1 for sft"):
        ob.sft(e, s, n_bon=2)


def test_variational_bon_sft_is_sft_when_the_expert_has_the_top_binary_score():
    """Why the science study runs variational BoN-SFT on one seed only (a check arm): with binary scores and the gold
    answer scored 1, every sample has 1{r_i <= r*} = 1, the leave-one-out baseline cancels it and the weights are
    SFT's; the exact form keeps a term through P(r < r*)."""
    gen = torch.Generator().manual_seed(0)
    s = torch.randint(0, 2, (6, 16), generator=gen).to(torch.float64)
    e = torch.ones(6, dtype=torch.float64)
    for lam in (None, 9.0):
        we, w = ob.bon_sft(e, s, n_bon=8, form="variational", lam=lam)
        assert torch.equal(we, torch.ones(6, dtype=torch.float64)) and torch.equal(w, torch.zeros(6, 16,
                                                                                                 dtype=torch.float64))
    assert ob.bon_sft(e, s, n_bon=8, form="exact")[1].abs().max() > 0


def test_bon_sft_plug_in_and_degenerate_expert():
    s = torch.tensor([[0.1, 0.5, 0.9], [2.0, 3.0, 4.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    e = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)  # middle; below every sample; tied with all
    for N in [1, 2, 32]:
        for form in ["exact", "variational"]:
            we, w = ob.bon_sft(e, s, n_bon=N, form=form)
            assert torch.isfinite(w).all()
    # the stable coefficients at the no-mass limit F⁻ = F equal the continuous-score form (N-1)/F, and α -> (N-1)/(2F)
    F = torch.tensor([0.7], dtype=torch.float64)
    a, g = ob._bon_log_coeffs(F, F, 5)
    torch.testing.assert_close(g, 4 / F)
    torch.testing.assert_close(a, 2 / F)


# ------------------------------------------------------------------------------------------------------------------
# Degenerate groups, validation, dispatch
# ------------------------------------------------------------------------------------------------------------------


def test_degenerate_groups_are_finite():
    for n in [1, 2, 5]:
        R = torch.stack([torch.ones(n), torch.zeros(n)]).to(torch.float64)  # all correct, all wrong
        for k in range(1, n + 1):
            for name in ["pass_at_k", "bon_rl_s"]:
                w = ob.weights(name, R, n_bon=k)
                assert w.abs().max() < 1e-12 or n == 1 and k == 1  # n = 1: no other sample, no baseline
            for p in ["loo", "group", torch.tensor([0.0, 1.0], dtype=torch.float64)]:
                for src in ["bon", "policy_group"]:
                    for sign in [1, -1]:
                        w = ob.bon_rlb(R, n_bon=k, p=p, sample_source=src, negative_sign=sign)
                        assert torch.isfinite(w).all()
                        wc = ob.bon_rlb(R, n_bon=k, p=p, sample_source=src, negative_sign=sign, clip=(3.0, 2.0))
                        assert wc[0].max() <= 3.0 and wc[1].abs().max() <= 2.0 + 1e-12
                    w = ob.bon_rlb_p(R, n_bon=k, p=p, sample_source=src)
                    assert torch.isfinite(w).all() and torch.all(w[1] == 0) and torch.all(w >= 0)
            w = ob.bon_rl_v(R, n_bon=k, scores=R.flip(0))
            assert torch.isfinite(w).all()
    # N' = 1 closed forms: g+ = 1/(1-p), g- = p/(1-p), g-bar+ = 1
    p = torch.tensor([0.25], dtype=torch.float64)
    R = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    w = ob.bon_rlb(R, n_bon=1, p=p, sample_source="policy_group")
    torch.testing.assert_close(w, torch.tensor([[1 / 0.75 / 2, -0.25 / 0.75 / 2]], dtype=torch.float64))
    torch.testing.assert_close(ob.bon_rlb_p(R, n_bon=1, p=p), torch.tensor([[0.5, 0.0]], dtype=torch.float64))


def test_large_n_is_finite_and_zero_sum():
    gen = torch.Generator().manual_seed(3)
    R = torch.randint(0, 2, (8, 128), generator=gen).to(torch.float64)
    s = torch.randn(8, 128, generator=gen, dtype=torch.float64).round(decimals=1)
    for k in [1, 16, 64, 128]:
        for w in [ob.pass_at_k(R, n_bon=k), ob.bon_rl_v(R, n_bon=k, scores=s), ob.bon_rlb(R, n_bon=k)]:
            assert torch.isfinite(w).all()
        if k < 128:
            torch.testing.assert_close(ob.bon_rl_v(R, n_bon=k, scores=s).sum(-1), torch.zeros(8, dtype=torch.float64),
                                       atol=1e-12, rtol=0)


BAD = [
    (lambda: ob.rl(torch.zeros(4), n_bon=1), "rewards: expected shape \\[G, n\\]"),
    (lambda: ob.rl([[1.0]], n_bon=1), "rewards: expected a torch.Tensor", TypeError),
    (lambda: ob.rl(torch.zeros(2, 3, dtype=torch.complex64), n_bon=1), "rewards: expected a real", TypeError),
    (lambda: ob.rl(torch.zeros(2, 0), n_bon=1), "n >= 1"),
    (lambda: ob.bon_rl_v(torch.zeros(2, 3), n_bon=2, scores=torch.zeros(2, 4)), "scores: expected shape"),
    (lambda: ob.bon_rl_v(torch.zeros(2, 3), n_bon=2),
     "scores: expected a \\[G, n\\] tensor of verifier scores for bon_rl_v, got None"),
    (lambda: ob.bon_rl_s(torch.zeros(2, 3), n_bon=2, scores=torch.zeros(2, 3)), "scores: expected None"),
    (lambda: ob.pass_at_k(torch.full((2, 3), 0.5), n_bon=2), "rewards: expected binary"),
    (lambda: ob.bon_rlb(torch.full((2, 3), 2.0), n_bon=2), "rewards: expected binary"),
    (lambda: ob.bon_rlb_p(torch.full((2, 3), -1.0), n_bon=2), "rewards: expected binary"),
    (lambda: ob.bon_rl_s(torch.zeros(2, 3), n_bon=4), "n_bon: expected an int in \\[1, 3\\]"),
    (lambda: ob.bon_rl_s(torch.zeros(2, 3), n_bon=0), "n_bon: expected an int in \\[1, 3\\]"),
    (lambda: ob.bon_rl_s(torch.zeros(2, 3), n_bon=2.0), "n_bon: expected an int", TypeError),
    (lambda: ob.bon_rl_s(torch.tensor([[0.0, float("nan")]]), n_bon=1), "rewards: expected finite values"),
    (lambda: ob.bon_rl_v(torch.zeros(1, 2), n_bon=1, scores=torch.tensor([[0.0, float("inf")]])),
     "scores: expected finite values"),
    (lambda: ob.rl(torch.zeros(2, 3), n_bon=2), "n_bon: expected 1 for rl"),
    (lambda: ob.rl(torch.zeros(2, 3), n_bon=1, baseline="mean"), "baseline: expected one of"),
    (lambda: ob.bon_rl_v(torch.zeros(2, 3), n_bon=1, scores=torch.zeros(2, 3), credit="x"), "credit: expected"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, negative_sign=0), "negative_sign: expected"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, sample_source="pi"), "sample_source: expected one of"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, p=torch.zeros(3)), "p: expected a real tensor of shape \\[G\\]"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, p=torch.full((2,), 1.5)), "p: expected values in"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, p="mean"), "p: expected one of"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, clip=-1.0), "clip: expected None, a number >= 0"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, clip=(3.0,)), "clip: expected None, a number >= 0"),
    (lambda: ob.bon_rlb(torch.zeros(2, 3), n_bon=2, eps=0.0), "eps: expected a float in"),
    (lambda: ob.bon_sft(torch.zeros(3), torch.zeros(2, 3), n_bon=2), "expert_scores: expected a real tensor"),
    (lambda: ob.bon_sft(torch.tensor([0.0, float("nan")]), torch.zeros(2, 3), n_bon=2),
     "expert_scores: expected finite values"),
    (lambda: ob.bon_sft(torch.zeros(2), None, n_bon=2), "scores \\(or rewards"),
    (lambda: ob.bon_sft(torch.zeros(2), torch.zeros(2, 3), n_bon=2, form="x"), "form: expected"),
    (lambda: ob.bon_sft(torch.zeros(2), torch.zeros(2, 3), n_bon=2, form="variational", lam=-1.0), "lam: expected"),
    (lambda: ob.bon_sft(torch.zeros(2), torch.full((2, 3), 0.5), n_bon=2, p=torch.zeros(2)),
     "scores: expected binary"),
    (lambda: ob.bon_sft(torch.zeros(2), torch.zeros(2, 3), n_bon=2, cdf=(torch.full((2,), 0.2), torch.full((2,), 0.5))),
     "F_minus <= F"),
    (lambda: ob.weights("bon_rl", torch.zeros(2, 3), n_bon=1), "method: expected one of"),
    (lambda: ob.weights("bon_sft", torch.zeros(2, 3), n_bon=1), "needs expert_scores"),
    (lambda: ob.pick_probability(torch.tensor([3]), torch.tensor([1]), k=2, n=4), "a \\+ e \\+ 1: expected at most n"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_raises_value_error(case):
    fn, match, *exc = BAD[case]
    with pytest.raises(exc[0] if exc else ValueError, match=match):
        fn()


def test_weights_dispatch_every_name():
    gen = torch.Generator().manual_seed(5)
    R = torch.randint(0, 2, (3, 6), generator=gen).to(torch.float64)
    s = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    e = torch.randn(3, generator=gen, dtype=torch.float64)
    direct = {
        "sft": lambda: ob.sft(e, s),
        "bon_sft": lambda: ob.bon_sft(e, s, n_bon=4),
        "rl": lambda: ob.rl(R, n_bon=1),
        "rl_v": lambda: ob.rl(R, n_bon=1, scores=s, target="scores"),
        "bon_rl_v": lambda: ob.bon_rl_v(R, n_bon=4, scores=s),
        "bon_rl_s": lambda: ob.bon_rl_s(R, n_bon=4),
        "bon_rlb": lambda: ob.bon_rlb(R, n_bon=4),
        "bon_rlb_p": lambda: ob.bon_rlb_p(R, n_bon=4),
        "pass_at_k": lambda: ob.pass_at_k(R, n_bon=4),
    }
    assert set(direct) == set(ob.METHODS)
    for name in ob.METHODS:
        kw = {"scores": s} if name in ("bon_rl_v", "rl_v", "sft", "bon_sft") else {}
        if name in ("sft", "bon_sft"):
            kw["expert_scores"] = e
        got = ob.weights(name, R, n_bon=1 if name in ("rl", "rl_v", "sft") else 4, **kw)
        want = direct[name]()
        if isinstance(want, tuple):
            for a, b in zip(got, want):
                assert torch.equal(a, b) and a.dtype == torch.float64
        else:
            assert torch.equal(got, want) and got.dtype == torch.float64 and got.shape == R.shape


def test_inputs_of_any_real_dtype_give_float64():
    R = torch.tensor([[True, False, True]])
    for dt in [torch.bool, torch.int64, torch.float32]:
        w = ob.pass_at_k(R.to(dt), n_bon=2)
        assert w.dtype == torch.float64
        torch.testing.assert_close(w, ob.pass_at_k(R.to(torch.float64), n_bon=2))


@pytest.mark.cuda
def test_no_host_sync_on_cuda():
    dev = torch.device("cuda")
    R = torch.randint(0, 2, (16, 8), device=dev).to(torch.float64)
    s = torch.randn(16, 8, device=dev, dtype=torch.float64)
    e = torch.randn(16, device=dev, dtype=torch.float64)
    calls = [lambda: ob.pass_at_k(R, n_bon=4, check_values=False),
             lambda: ob.bon_rl_s(R, n_bon=4, check_values=False),
             lambda: ob.bon_rl_v(R, n_bon=4, scores=s, check_values=False),
             lambda: ob.bon_rl_v(R, n_bon=4, scores=s, credit="winner", check_values=False),
             lambda: ob.bon_rlb(R, n_bon=4, check_values=False),
             lambda: ob.bon_rlb_p(R, n_bon=4, check_values=False),
             lambda: ob.rl(R, n_bon=1, check_values=False),
             lambda: ob.bon_sft(e, s, n_bon=4, check_values=False),
             lambda: ob.bon_sft(e, s, n_bon=4, form="variational", check_values=False)]
    for call in calls:
        call()  # warm the cached count tables (a one-time host-to-device copy)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for call in calls:
            assert call().device.type == "cuda"
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ------------------------------------------------------------------------------------------------------------------
# Published variants reachable from the registry (TrainConfig fields <method>_<option>)
# ------------------------------------------------------------------------------------------------------------------


def test_bon_rl_s_winner_is_bon_rl_v_winner_with_the_reward_as_verifier():
    gen = torch.Generator().manual_seed(3)
    R = torch.randint(0, 3, (5, 8), generator=gen).to(torch.float64) / 2
    for baseline in ("mean", "none"):
        got = ob.bon_rl_s(R, n_bon=4, credit="winner", baseline=baseline)
        torch.testing.assert_close(got, ob.bon_rl_v(R, n_bon=4, scores=R, credit="winner", baseline=baseline))
    assert torch.equal(ob.bon_rl_s(R, n_bon=4), ob.bon_rl_s(R, n_bon=4, credit="exact", baseline="loo"))
    with pytest.raises(ValueError, match="baseline"):
        ob.bon_rl_s(R, n_bon=4, credit="winner", baseline="loo")


def test_bon_rl_v_verifier_reward_is_bon_rl_s_on_the_scores():
    gen = torch.Generator().manual_seed(5)
    R = torch.randint(0, 2, (5, 8), generator=gen).to(torch.float64)
    s = torch.randint(0, 4, (5, 8), generator=gen).to(torch.float64) / 3  # continuous-ish, with ties
    for credit, baselines in (("exact", BASELINES), ("winner", ("mean", "none"))):
        for b in baselines:
            got = ob.bon_rl_v(R, n_bon=4, scores=s, credit=credit, baseline=b, reward="verifier")
            assert torch.equal(got, ob.bon_rl_v(1 - R, n_bon=4, scores=s, credit=credit, baseline=b,
                                                reward="verifier"))  # the task reward is not used
            torch.testing.assert_close(got, ob.bon_rl_s(s, n_bon=4, credit=credit, baseline=b), rtol=1e-12,
                                       atol=1e-14)
    assert torch.equal(ob.bon_rl_v(R, n_bon=4, scores=s), ob.bon_rl_v(R, n_bon=4, scores=s, reward="task"))
    with pytest.raises(ValueError, match=r"reward: expected one of \['task', 'verifier'\]"):
        ob.bon_rl_v(R, n_bon=4, scores=s, reward="oracle")
    with pytest.raises(ValueError, match="scores"):
        ob.bon_rl_v(R, n_bon=4, reward="verifier")


def test_p_estimator_option_equals_the_p_string():
    gen = torch.Generator().manual_seed(4)
    R = torch.randint(0, 2, (6, 8), generator=gen).to(torch.float64)
    for est in ("loo", "group"):
        assert torch.equal(ob.bon_rlb(R, n_bon=4, p_estimator=est), ob.bon_rlb(R, n_bon=4, p=est))
        assert torch.equal(ob.bon_rlb_p(R, n_bon=4, p_estimator=est), ob.bon_rlb_p(R, n_bon=4, p=est))
    assert not torch.equal(ob.bon_rlb(R, n_bon=4, p_estimator="group"), ob.bon_rlb(R, n_bon=4))
    with pytest.raises(ValueError, match="p_estimator"):
        ob.bon_rlb_p(R, n_bon=4, p_estimator="true")


@pytest.mark.parametrize("n_bon", [1, 2, 3, 8, 32])
def test_descends_flags_exactly_the_settings_with_a_negative_scale(n_bon):
    p = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    for sign in (-1, 1):
        for source in ("bon", "policy_group"):
            scale = ob.bon_rlb_scale(p, n_bon=n_bon, negative_sign=sign, sample_source=source)
            flagged = ob.OBJECTIVES["bon_rlb"].descends(n_bon, {"negative_sign": sign, "sample_source": source,
                                                                "clip": 3.0, "p_estimator": "loo"})
            assert (flagged is not None) == bool((scale < 0).all()), (sign, source)
            assert flagged is not None or bool((scale > 0).all())


def test_published_variants_are_train_flags_and_descending_settings_are_refused():
    from bonfast.cli import build_parser, config_from_args
    from bonfast.config import TrainConfig

    def cfg(*flags):
        return config_from_args(build_parser().parse_args(["train", *flags]))

    c = cfg("--method", "bon_sft", "--bon_sft_form", "variational", "--bon_sft_lam", "9").validate()
    assert c.objective_kwargs() == {"form": "variational", "lam": 9.0}
    assert TrainConfig(method="bon_sft").objective_kwargs() == {"form": "exact", "lam": None}  # lam None: N' - 1
    assert cfg("--method", "bon_rl_s", "--bon_rl_s_credit", "winner").validate().objective_kwargs() == {
        "credit": "winner"}
    assert cfg("--method", "bon_rl_v", "--bon_rl_v_reward", "verifier").validate().objective_kwargs() == {
        "credit": "exact", "reward": "verifier"}
    with pytest.raises(ValueError, match="TrainConfig.bon_rl_v_reward"):
        TrainConfig(method="bon_rl_v", bon_rl_v_reward="oracle").validate()
    c = cfg("--method", "bon_rlb", "--bon_rlb_negative_sign", "1", "--bon_rlb_clip", "0",
            "--bon_rlb_p_estimator", "group").validate()
    assert c.objective_kwargs() == {"negative_sign": 1, "sample_source": "bon", "clip": 0.0, "p_estimator": "group"}
    assert cfg("--method", "bon_rlb_p", "--bon_rlb_p_p_estimator", "group").validate().objective_kwargs()[
        "p_estimator"] == "group"
    with pytest.raises(ValueError, match=r"TrainConfig.bon_rlb_negative_sign: expected -1 when sample_source is "
                                         r"'policy_group' and n_bon >= 2.*descend"):
        TrainConfig(method="bon_rlb", bon_rlb_negative_sign=1, bon_rlb_sample_source="policy_group").validate()
    TrainConfig(method="bon_rlb", bon_rlb_negative_sign=1, bon_rlb_sample_source="policy_group", n_bon=1).validate()
    with pytest.raises(ValueError, match="TrainConfig.bon_sft_lam: expected a number >= 0"):
        TrainConfig(method="bon_sft", bon_sft_lam=-1.0).validate()
    with pytest.raises(ValueError, match="TrainConfig.bon_sft_form"):
        TrainConfig(method="bon_sft", bon_sft_form="tilted").validate()
