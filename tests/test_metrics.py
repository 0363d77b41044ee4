"""bonfast.metrics against exact arithmetic (math.comb, fractions) and brute force over subsets and tie-breaks."""
import itertools
import math
from collections import Counter
from fractions import Fraction

import pytest
import torch

from bonfast import metrics as mt
from bonfast import objectives as ob


def test_pass_at_k_matches_math_comb_for_every_n_up_to_64():
    rows = [(n, c, k) for n in range(1, 65) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k = (torch.tensor(col) for col in zip(*rows))
    got = mt.pass_at_k(n, c, k)
    want = torch.tensor([float(1 - Fraction(math.comb(a - b, d), math.comb(a, d))) for a, b, d in rows],
                        dtype=torch.float64)
    assert got.dtype == torch.float64 and got.shape == want.shape
    err = (got - want).abs() / want.abs().clamp(min=1e-300)
    assert torch.all((err <= 1e-12) | ((got - want).abs() <= 1e-300)), f"max rel err {err.max():.3e}"
    assert torch.all(got[c == 0] == 0) and torch.all(got[(n - c) < k] == 1)


def test_pass_at_k_ints_broadcasting_and_float_counts():
    assert mt.pass_at_k(10, 3, 1) == pytest.approx(0.3, abs=1e-15)
    assert isinstance(mt.pass_at_k(10, 3, 2), float)
    out = mt.pass_at_k(torch.tensor([[5], [8]]), torch.tensor([0, 1, 2]), 2)  # (2, 1) x (3,) -> (2, 3)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[1, 2], torch.tensor(1 - 15 / 28, dtype=torch.float64))
    torch.testing.assert_close(mt.pass_at_k(torch.tensor([6.0]), torch.tensor([3.0]), 3),
                               torch.tensor([1 - 1 / 20], dtype=torch.float64))


def brute_bok(R, s, k):
    """Average over all k-subsets and all global tie-break orders of R at the subset's top-ranked sample."""
    n = len(R)
    blocks = [[i for i in range(n) if s[i] == v] for v in sorted(set(s))]
    total, count = Fraction(0), 0
    for order in itertools.product(*[itertools.permutations(b) for b in blocks]):
        rank = {i: r for r, i in enumerate(itertools.chain(*order))}
        for S in itertools.combinations(range(n), k):
            total += Fraction(R[max(S, key=rank.__getitem__)])
            count += 1
    return float(total / count)


@pytest.mark.parametrize("n", [1, 2, 4, 7, 10])
def test_bo_k_brute_force_with_ties(n):
    gen = torch.Generator().manual_seed(n)
    levels = max(2, n // 2 + 1)  # blocks of about two: every prompt has ties, brute force stays cheap
    s = torch.randint(0, levels, (3, n), generator=gen).to(torch.float64)
    R = torch.randint(-4, 9, (3, n), generator=gen).to(torch.float64) / 4
    for k in range(1, n + 1):
        got = mt.bo_k(s, R, k)
        want = torch.tensor([brute_bok(R[g].tolist(), s[g].tolist(), k) for g in range(3)], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)


def test_bo_k_identities():
    gen = torch.Generator().manual_seed(0)
    R = torch.randint(0, 2, (16, 12), generator=gen).to(torch.float64)
    s = torch.randn(16, 12, generator=gen, dtype=torch.float64)
    for k in range(1, 13):
        # BoN with the reward itself as the verifier is pass@k for binary rewards
        torch.testing.assert_close(mt.bo_k(R, R, k), mt.pass_at_k(12, R.sum(-1).long(), k), rtol=1e-12, atol=1e-14)
        # no ties (docs/method.md §7): Σ_{i>=k} C(i-1, k-1)/C(n, k) R_(i) in ascending verifier order
        order = s.argsort(-1)
        coef = torch.tensor([math.comb(i - 1, k - 1) / math.comb(12, k) for i in range(1, 13)], dtype=torch.float64)
        torch.testing.assert_close(mt.bo_k(s, R, k), (R.gather(-1, order) * coef).sum(-1), rtol=1e-12, atol=1e-14)
        # subset credits of the objectives add up to k × BoK
        torch.testing.assert_close(ob.subset_credit(R, s, k).sum(-1) / k, mt.bo_k(s, R, k), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mt.bo_k(s, R, 1), R.mean(-1))


def brute_majority(answers, correct, k):
    worth = {a: sum(c for b, c in zip(answers, correct) if b == a) / answers.count(a) for a in set(answers)}
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for S in subsets:
        votes = Counter(answers[i] for i in S)
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += sum(Fraction(worth[a]) for a in winners) / len(winners)
    return float(total / len(subsets))


def test_majority_at_k_exact_and_monte_carlo():
    answers = [["7", "7", "3", "7", "3", None, "5", "3", "1"], ["a", "b", "c", "d"], ["x"] * 5 + ["y"] * 4]
    correct = [[1, 1, 0, 1, 0, 0, 0, 0, 0], [0, 1, 0, 0], [0.0] * 5 + [1.0] * 4]
    for k in range(1, 5):
        got = mt.majority_at_k(answers, correct, k)
        want = torch.tensor([brute_majority(a, c, k) for a, c in zip(answers, correct)], dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-14)
        mc = mt.majority_at_k(answers, correct, k, max_subsets=1, n_mc=8000, seed=3)
        assert torch.all((mc - want).abs() <= 5 * 0.5 / math.sqrt(8000))
    assert torch.equal(mc, mt.majority_at_k(answers, correct, k, max_subsets=1, n_mc=8000, seed=3))
    # correctness as a [G, n] tensor; k = 1 is the mean correctness
    t = torch.tensor(correct[2])[None]
    torch.testing.assert_close(mt.majority_at_k(answers[2:], t, 1), t.mean(-1).to(torch.float64))


def test_curve_bootstrap_and_coscaling():
    R = torch.randint(0, 2, (5, 8)).to(torch.float64)
    s = torch.randn(5, 8, dtype=torch.float64)
    c = mt.curve(lambda k: mt.bo_k(s, R, k), range(1, 9))
    assert c.shape == (8, 5) and c.dtype == torch.float64
    assert torch.all(mt.curve(lambda k: mt.pass_at_k(8, 3, k), [1, 2, 4]).diff() >= 0)

    x = torch.rand(200, dtype=torch.float64)
    mean, lo, hi = mt.bootstrap_ci(x, n_boot=500, seed=1)
    assert lo < mean < hi and mean == pytest.approx(x.mean().item())
    assert (mean, lo, hi) == mt.bootstrap_ci(x, n_boot=500, seed=1)
    assert hi - lo == pytest.approx(2 * 1.96 * x.std().item() / math.sqrt(200), rel=0.25)
    assert mt.bootstrap_ci(torch.full((4,), 0.5)) == (0.5, 0.5, 0.5)

    ns = torch.tensor([1.0, 2, 4, 8, 16, 32], dtype=torch.float64)
    a, b = mt.fit_coscaling(ns, torch.exp(-1.3 * ns ** -0.4))
    assert a == pytest.approx(-1.3, rel=1e-12) and b == pytest.approx(-0.4, rel=1e-12)


BAD = [
    (lambda: mt.pass_at_k(4, 5, 1), "num_correct: expected values in"),
    (lambda: mt.pass_at_k(4, 2, 5), "k: expected values in"),
    (lambda: mt.pass_at_k(4, 2, 0), "k: expected values in"),
    (lambda: mt.pass_at_k(4.5, 2, 1), "num_samples: expected an int", TypeError),
    (lambda: mt.pass_at_k(torch.tensor([4.5]), 2, 1), "num_samples: expected integer values"),
    (lambda: mt.bo_k(torch.zeros(2, 3), torch.zeros(2, 4), 1), "scores: expected shape"),
    (lambda: mt.bo_k(torch.zeros(2, 3), torch.zeros(2, 3), 4), "k: expected an int in"),
    (lambda: mt.bo_k(torch.zeros(3), torch.zeros(3), 1), "rewards: expected shape"),
    (lambda: mt.bo_k(torch.full((1, 2), float("nan")), torch.zeros(1, 2), 1), "scores: expected finite values"),
    (lambda: mt.majority_at_k([["a"]], [[1], [0]], 1), "same length"),
    (lambda: mt.majority_at_k([["a", "b"]], [[1]], 1), "correct\\[0\\]: expected len"),
    (lambda: mt.majority_at_k([["a", "b"]], [[1, 0]], 3), "k: expected at most the number of samples"),
    (lambda: mt.curve(lambda k: k, []), "ks: expected at least one"),
    (lambda: mt.bootstrap_ci(torch.zeros(2, 2)), "per_prompt: expected a tensor of shape \\[G\\]"),
    (lambda: mt.bootstrap_ci(torch.zeros(3), alpha=1.5), "alpha: expected"),
    (lambda: mt.bootstrap_ci(torch.tensor([0.0, float("inf")])), "per_prompt: expected finite values"),
    (lambda: mt.fit_coscaling([1, 2], [0.5, 1.0]), "pass_at_n: expected values strictly inside"),
    (lambda: mt.fit_coscaling([2, 2], [0.5, 0.6]), "two distinct"),
    (lambda: mt.fit_coscaling([1, 2, 3], [0.5, 0.6]), "same length"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_raises_value_error(case):
    fn, match, *exc = BAD[case]
    with pytest.raises(exc[0] if exc else ValueError, match=match):
        fn()


# ---- seed-level statistics -------------------------------------------------------------------------------------


def test_hierarchical_bootstrap_without_seed_variance_is_the_prompt_bootstrap():
    row = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    same = row.expand(5, 40).clone()
    out = mt.hierarchical_bootstrap(same, n_boot=500, seed=3)
    mean, lo, hi = mt.bootstrap_ci(row, n_boot=500, seed=3)
    assert out["mean"] == pytest.approx(mean, abs=1e-12)
    assert out["lo"] == pytest.approx(lo, abs=1e-12) and out["hi"] == pytest.approx(hi, abs=1e-12)
    # paired difference: a constant shift per prompt cancels, whatever the seed
    shift = torch.randn(5, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    paired = mt.hierarchical_bootstrap(same + shift + 0.1, same + shift, n_boot=200)
    assert paired["lo"] == pytest.approx(0.1) and paired["hi"] == pytest.approx(0.1)
    assert paired["per_seed"] == [pytest.approx(0.1)] * 5 and paired["seeds"] == 5


def test_hierarchical_bootstrap_with_one_prompt_is_the_seed_bootstrap():
    per_seed = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.4, 0.3], dtype=torch.float64)
    out = mt.hierarchical_bootstrap(per_seed[:, None], n_boot=700, seed=5)
    mean, lo, hi = mt.bootstrap_ci(per_seed, n_boot=700, seed=6)
    assert (out["mean"], out["lo"], out["hi"]) == pytest.approx((mean, lo, hi), abs=1e-12)
    assert out["per_seed"] == pytest.approx(per_seed.tolist())


def test_hierarchical_bootstrap_unpaired_arms_and_p_value():
    gen = torch.Generator().manual_seed(0)
    a = 0.5 + 0.05 * torch.randn(8, 200, generator=gen, dtype=torch.float64)
    b = 0.2 + 0.05 * torch.randn(3, 200, generator=gen, dtype=torch.float64)
    out = mt.hierarchical_bootstrap(a, b, paired_seeds=False, n_boot=400)
    assert out["lo"] < out["mean"] < out["hi"] and out["lo"] > 0.25 and out["p"] == pytest.approx(1 / 401)
    null = mt.hierarchical_bootstrap(a - a.mean(), n_boot=400)
    assert null["lo"] < 0 < null["hi"] and null["p"] > 0.05
    with pytest.raises(ValueError, match="b: expected a tensor of shape"):
        mt.hierarchical_bootstrap(a, b)  # paired seeds need equal seed counts
    with pytest.raises(TypeError, match="a: expected a tensor"):
        mt.hierarchical_bootstrap([[1.0]])


def test_hierarchical_bootstrap_covers_with_training_noise_where_the_prompt_bootstrap_does_not():
    """Synthetic study: value[s, g] = mu + u_s (training noise) + v_g (prompt difficulty) + e_sg. The seed-level
    interval covers mu near the nominal rate; resampling prompts within seeds misses the training noise."""
    gen = torch.Generator().manual_seed(11)
    S, G, reps, mu = 8, 60, 150, 0.3
    hier = within = 0
    for _ in range(reps):
        x = (mu + 0.1 * torch.randn(S, 1, generator=gen, dtype=torch.float64)
             + 0.1 * torch.randn(1, G, generator=gen, dtype=torch.float64)
             + 0.1 * torch.randn(S, G, generator=gen, dtype=torch.float64))
        out = mt.hierarchical_bootstrap(x, n_boot=300, seed=int(torch.randint(0, 2**31, (1,), generator=gen)))
        hier += out["lo"] <= mu <= out["hi"]
        idx = torch.randint(0, G, (300, G), generator=gen)  # the earlier study's interval: prompts within seeds
        boots = torch.stack([x[s][idx].mean(-1) for s in range(S)]).mean(0)
        lo, hi = torch.quantile(boots, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        within += lo <= mu <= hi
    assert hier / reps >= 0.82, hier / reps  # S = 8 seeds: the bootstrap is a little short of 95%
    assert within / reps <= 0.6, within / reps


def test_holm():
    out = mt.holm([0.01, 0.04, 0.03, 0.2], alpha=0.05)
    assert out["adjusted"] == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert out["reject"] == [True, False, False, False]
    assert out["levels"] == pytest.approx([0.0125, 0.025, 0.01667, 0.05], abs=1e-4)
    assert mt.holm([0.001, 0.002], alpha=0.05)["reject"] == [True, True]
    assert mt.holm([])["adjusted"] == []
    with pytest.raises(ValueError, match="p_values"):
        mt.holm([1.5])
