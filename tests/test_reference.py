"""The oracles themselves: agreement with the naive expressions, and float64 gradchecks."""
import math

import pytest
import torch

from bonfast.reference import bon_loss_ref, linear_logprobs_ref


def _head(T=7, D=5, V=11, dtype=torch.float64):
    x = torch.randn(T, D, dtype=dtype)
    w = torch.randn(V, D, dtype=dtype)
    y = torch.randint(0, V, (T,))
    return x, w, y


@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_linear_logprobs_ref_equals_naive(temperature):
    x, w, y = _head()
    y[2] = -100
    logp, entropy, lse = linear_logprobs_ref(x, w, y, temperature=temperature)
    z = x @ w.T / temperature
    logq = torch.log_softmax(z, dim=-1)
    keep = y != -100
    torch.testing.assert_close(logp[keep], logq[keep].gather(-1, y[keep, None])[:, 0], rtol=0, atol=1e-12)
    torch.testing.assert_close(entropy[keep], -(logq.exp() * logq).sum(-1)[keep], rtol=0, atol=1e-12)
    torch.testing.assert_close(lse[keep], torch.logsumexp(z, -1)[keep], rtol=0, atol=1e-12)
    assert logp[2] == 0 and entropy[2] == 0 and lse[2] == 0
    assert (logp <= 0).all() and (entropy >= 0).all()


def test_linear_logprobs_ref_compute_dtype():
    x, w, y = _head(dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in linear_logprobs_ref(x, w, y))
    x, w, y = _head()
    assert all(t.dtype == torch.float64 for t in linear_logprobs_ref(x, w, y))


def test_linear_logprobs_ref_gradcheck():
    x, w, y = _head(T=4, D=3, V=5)
    y[1] = -100
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: linear_logprobs_ref(a, b, y, temperature=1.3), (x, w))


def _loss_inputs(T=13, S=4):
    logp = -torch.rand(T, dtype=torch.float64) * 3
    sample_index = torch.randint(-1, S, (T,))
    weights = torch.randn(S, dtype=torch.float64)
    return logp, sample_index, weights


def test_bon_loss_ref_plain_equals_loop():
    logp, si, w = _loss_inputs()
    expect = -sum(float(w[s]) * float(lp) for lp, s in zip(logp, si) if s >= 0) / 20.0
    assert abs(float(bon_loss_ref(logp, si, w, normaliser=20.0)) - expect) < 1e-12


def test_bon_loss_ref_clipped_and_k3_equal_loop():
    logp, si, w = _loss_inputs()
    old = logp + 0.4 * torch.randn_like(logp)
    ref = logp + 0.4 * torch.randn_like(logp)
    lo, hi = 0.1, 0.3
    expect = 0.0
    for t in range(len(logp)):
        if si[t] < 0:
            continue
        r = math.exp(float(logp[t] - old[t]))
        ws = float(w[si[t]])
        expect -= min(r * ws, min(max(r, 1 - lo), 1 + hi) * ws)
        d = float(ref[t] - logp[t])
        expect += 0.05 * (math.exp(d) - d - 1)
    got = bon_loss_ref(logp, si, w, normaliser=1.0, old_logp=old, clip_eps=(lo, hi), ref_logp=ref, kl_coef=0.05)
    assert abs(float(got) - expect) < 1e-12


def test_bon_loss_ref_clipped_gradient_at_ratio_one_equals_plain():
    logp, si, w = _loss_inputs()
    logp.requires_grad_()
    (g_plain,) = torch.autograd.grad(bon_loss_ref(logp, si, w, normaliser=7.0), logp)
    (g_clip,) = torch.autograd.grad(bon_loss_ref(logp, si, w, normaliser=7.0, old_logp=logp.detach()), logp)
    torch.testing.assert_close(g_clip, g_plain, rtol=0, atol=1e-15)


def test_bon_loss_ref_padding_is_inert():
    logp, si, w = _loss_inputs()
    si[:3] = -1
    logp[:3] = float("nan")
    old = logp.clone()
    logp.requires_grad_()
    loss = bon_loss_ref(logp, si, w, normaliser=5.0, old_logp=old.nan_to_num(), ref_logp=old, kl_coef=0.1)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and (g[:3] == 0).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("form", ["plain", "clipped", "k3"])
def test_bon_loss_ref_gradcheck(form):
    logp, si, w = _loss_inputs(T=9)
    kw = {}
    if form == "clipped":  # ratios well inside and well outside the clip range, away from the kinks
        kw = dict(old_logp=logp + torch.tensor([0.0, 0.5, -0.5, 0.05, -0.05, 1.0, -1.0, 0.02, 0.3],
                                               dtype=torch.float64), clip_eps=0.2)
    if form == "k3":
        kw = dict(ref_logp=logp + 0.3 * torch.randn_like(logp), kl_coef=0.5)
    logp.requires_grad_()
    assert torch.autograd.gradcheck(lambda lp: bon_loss_ref(lp, si, w, normaliser=3.0, **kw), (logp,))
