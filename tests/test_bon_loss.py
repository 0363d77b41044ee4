"""bon_loss and fused_bon_loss == bon_loss_ref(linear_logprobs_ref(...)) in value and gradients, both impls.

The Triton cases run on the `device` fixture's device: compiled kernels on CUDA, the interpreter on CPU."""
import re

import pytest
import torch
from precision import assert_three_way, impl_name

from bonfast.ops import bon_loss, fused_bon_loss, linear_logprobs
from bonfast.reference import bon_loss_ref, linear_logprobs_ref

IMPLS = ["torch", "triton"]
FORMS = {
    "plain": lambda old, ref: {},
    "clipped": lambda old, ref: dict(old_logp=old),
    "k3": lambda old, ref: dict(ref_logp=ref, kl_coef=0.1),
    "clipped_pair_k3": lambda old, ref: dict(old_logp=old, clip_eps=(0.1, 0.3), ref_logp=ref, kl_coef=0.3),
}


def _tokens(T, S, dtype=torch.float32, device="cpu"):
    """(logp, sample_index, weights, old_logp, ref_logp) on `device`, drawn on the CPU (same values anywhere)."""
    logp = -torch.rand(T, dtype=torch.float64) * 4
    sample_index = torch.randint(-1, S, (T,))  # -1: padding
    weights = torch.randn(S, dtype=torch.float64)  # objectives hand weights over as float64
    old = logp + 0.3 * torch.randn(T, dtype=torch.float64)  # ratios on both sides of the clip range
    ref = logp + 0.3 * torch.randn(T, dtype=torch.float64)
    return tuple(t.to(device) for t in (logp.to(dtype), sample_index, weights, old.to(dtype), ref.to(dtype)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("form", list(FORMS))
def test_bon_loss_matches_reference(impl, form, device):
    T, S = 2500, 12  # three kernel blocks
    logp, si, w, old, ref = _tokens(T, S, device=device)
    kw = FORMS[form](old, ref)
    lp = logp.clone().requires_grad_()
    loss = bon_loss(lp, si, w.reshape(3, 4), normaliser=torch.tensor(3.0 * 900, device=device), impl=impl, **kw)
    (g,) = torch.autograd.grad(loss, lp)
    lp64 = logp.double().requires_grad_()
    kw64 = {k: (v.double() if torch.is_tensor(v) else v) for k, v in kw.items()}
    expect = bon_loss_ref(lp64, si, w, normaliser=3.0 * 900, **kw64)
    (g64,) = torch.autograd.grad(expect, lp64)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expect, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g.double(), g64, rtol=1e-5, atol=1e-9)
    assert (g[si < 0] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_bon_loss_float64(impl, device):
    logp, si, w, old, ref = _tokens(50, 5, torch.float64, device)
    out = bon_loss(logp, si, w, normaliser=10.0, old_logp=old, ref_logp=ref, kl_coef=0.2, impl=impl)
    expect = bon_loss_ref(logp, si, w, normaliser=10.0, old_logp=old, ref_logp=ref, kl_coef=0.2)
    assert out.dtype == torch.float64
    tol = 1e-12 if impl == "torch" else 1e-7  # the kernel takes kl_coef and clip_eps as fp32 scalars
    torch.testing.assert_close(out, expect, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_clipped_gradient_at_ratio_one_equals_plain(impl, device):
    logp, si, w, _, _ = _tokens(40, 4, device=device)
    lp = logp.clone().requires_grad_()
    (g_plain,) = torch.autograd.grad(bon_loss(lp, si, w, normaliser=8.0, impl=impl), lp)
    (g_clip,) = torch.autograd.grad(bon_loss(lp, si, w, normaliser=8.0, old_logp=logp, impl=impl), lp)
    torch.testing.assert_close(g_clip, g_plain, rtol=1e-6, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_padding_is_inert(impl, device):
    """Garbage (NaN) at padded positions never reaches the loss or the gradient."""
    logp, si, w, old, ref = _tokens(30, 3, device=device)
    si[::4] = -1
    logp[si < 0] = float("nan")
    old[si < 0] = float("nan")
    lp = logp.clone().requires_grad_()
    loss = bon_loss(lp, si, w, normaliser=30.0, old_logp=old, ref_logp=ref, kl_coef=0.1, impl=impl)
    (g,) = torch.autograd.grad(loss, lp)
    assert torch.isfinite(loss) and torch.isfinite(g).all() and (g[si < 0] == 0).all()


@pytest.mark.parametrize("impl", IMPLS + ["torch-tiled"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("form", list(FORMS))
def test_fused_matches_reference(impl, dtype, form, device):
    """Three-way: fused op vs naive torch in dtype vs float64 reference, value and dX, dW."""
    T, D, V, tau = 37, 33, 301, 0.7
    x = (0.3 * torch.randn(2, T, D)).to(dtype)
    W = torch.randn(V, D).to(dtype)
    y = torch.randint(0, V, (2, T))
    y[0, ::5] = -100
    si = torch.randint(-1, 6, (2, T))
    w = torch.randn(2, 3, dtype=torch.float64)
    lp_now = linear_logprobs_ref(x.reshape(-1, D), W, y.reshape(-1), temperature=tau)[0].reshape(2, T)
    old, ref = (lp_now + 0.3 * torch.randn(2, T)).float(), (lp_now + 0.3 * torch.randn(2, T)).float()
    x, W, y, si, w, old, ref = (t.to(device) for t in (x, W, y, si, w, old, ref))
    kw = FORMS[form](old, ref)
    flat = {k: (v.reshape(-1) if torch.is_tensor(v) else v) for k, v in kw.items()}
    si_eff = torch.where(y.reshape(-1) == -100, -1, si.reshape(-1))

    def run(fn, a, b):
        a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        loss = fn(a, b)
        return [loss.detach(), *torch.autograd.grad(loss, (a, b))]

    out = run(lambda a, b: fused_bon_loss(a, b, y, si, w, normaliser=74.0, temperature=tau,
                                          impl=impl_name(impl), **kw), x, W)

    def naive(a, b):
        logq = torch.log_softmax((a.reshape(-1, D) @ b.T).float() / tau, -1)
        lp = logq.gather(-1, y.reshape(-1, 1).clamp(min=0))[:, 0]
        return bon_loss_ref(lp, si_eff, w.float(), normaliser=74.0, **flat)

    pt = run(naive, x, W)
    gt = run(lambda a, b: bon_loss_ref(linear_logprobs_ref(a.reshape(-1, D), b, y.reshape(-1), temperature=tau)[0],
                                       si_eff, w, normaliser=74.0, **flat), x.double(), W.double())
    for name, o, p, g in zip(["loss", "dX", "dW"], out, pt, gt):
        assert_three_way(o, p, g, dtype, name=f"{impl} {form} {name}")
    assert out[1].dtype == dtype and out[2].dtype == dtype


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_all_padding(impl, device):
    x = torch.randn(5, 16).to(device).requires_grad_()
    W = torch.randn(140, 16).to(device).requires_grad_()
    y = torch.randint(0, 140, (5,)).to(device)
    loss = fused_bon_loss(x, W, y, torch.full((5,), -1, device=device), torch.ones(2, device=device),
                          normaliser=5.0, impl=impl)
    dx, dw = torch.autograd.grad(loss, (x, W))
    assert loss == 0 and not dx.any() and not dw.any()


@pytest.mark.parametrize("impl", IMPLS)
def test_fused_out_of_range_target_is_nan(impl, device):
    """A target outside [0, V) (not ignore_index) makes the loss NaN, never a plausible number."""
    x, W = torch.randn(6, 16).to(device), torch.randn(140, 16).to(device)
    y = torch.tensor([3, 140, 7, -100, 9, 1]).to(device)
    loss = fused_bon_loss(x, W, y, torch.zeros(6, dtype=torch.int64, device=device), torch.ones(2, device=device),
                          normaliser=6.0, impl=impl)
    assert loss.isnan()


def _naive_expr(fn):
    return re.search(r"Naive equivalent: `([^`]+)`", fn.__doc__).group(1)


def test_docstring_naive_equivalents():
    """The sentences in the docstrings are the truth: evaluate them and compare."""
    logp, sample_index, weights, _, _ = _tokens(60, 7, torch.float64)
    env = dict(logp=logp, sample_index=sample_index, weights=weights, normaliser=21.0)
    naive = eval(_naive_expr(bon_loss), {"torch": torch}, env)
    torch.testing.assert_close(bon_loss(logp, sample_index, weights, normaliser=21.0), naive)

    hidden, weight = torch.randn(3, 8, 11, dtype=torch.float64), torch.randn(50, 11, dtype=torch.float64)
    targets = torch.randint(0, 50, (3, 8))
    targets[1, 2:] = -100
    sample_index = torch.randint(-1, 4, (3, 8))
    env = dict(hidden=hidden, weight=weight, targets=targets, sample_index=sample_index,
               weights=weights[:4], normaliser=24.0, temperature=1.3, ignore_index=-100)
    naive = eval(_naive_expr(fused_bon_loss), {"torch": torch, "bon_loss": bon_loss,
                                               "linear_logprobs": linear_logprobs}, env)
    got = fused_bon_loss(hidden, weight, targets, sample_index, weights[:4], normaliser=24.0, temperature=1.3)
    torch.testing.assert_close(got, naive)


def _loss_args(T=6):
    return dict(logp=torch.randn(T), sample_index=torch.zeros(T, dtype=torch.int64), weights=torch.ones(2),
                normaliser=4.0)


@pytest.mark.parametrize("bad, match", [
    (dict(logp=torch.ones(6, dtype=torch.int64)), r"logp must be a float tensor of shape \[T\]"),
    (dict(sample_index=torch.zeros(5, dtype=torch.int64)), r"sample_index must have the shape of logp \(6,\)"),
    (dict(sample_index=torch.zeros(6)), r"sample_index must be int64 or int32"),
    (dict(weights=torch.ones(0)), r"weights must be a non-empty float tensor"),
    (dict(normaliser=0.0), r"normaliser must be a finite number > 0"),
    (dict(normaliser=torch.ones(2)), r"normaliser must be a python number or a 0-d tensor"),
    (dict(old_logp=torch.randn(5)), r"old_logp must have the shape of logp \(6,\)"),
    (dict(clip_eps=0.2), r"clip_eps needs old_logp"),
    (dict(old_logp=torch.randn(6), clip_eps=1.5), r"clip_eps must be a float \(or pair\)"),
    (dict(kl_coef=0.1), r"kl_coef = 0.1 needs ref_logp of shape \(6,\)"),
    (dict(impl="fast"), r"impl must be one of"),
])
def test_bon_loss_validation(bad, match):
    args = {**_loss_args(), **bad}
    with pytest.raises(ValueError, match=match):
        bon_loss(args.pop("logp"), args.pop("sample_index"), args.pop("weights"), **args)


def test_fused_validation():
    x, W, y = torch.randn(2, 3, 8), torch.randn(10, 8), torch.zeros(2, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"sample_index must have the shape of targets \(2, 3\)"):
        fused_bon_loss(x, W, y, torch.zeros(6, dtype=torch.int64), torch.ones(2), normaliser=1.0)
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 3\)"):
        fused_bon_loss(x, W, y[0], torch.zeros(3, dtype=torch.int64), torch.ones(2), normaliser=1.0)
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        fused_bon_loss(x, W, y, torch.zeros(2, 3, dtype=torch.int64), torch.ones(2), normaliser=1.0,
                       temperature=-1.0)


@pytest.mark.cuda
@pytest.mark.parametrize("form", list(FORMS))
def test_fused_cuda_bf16(form):
    dev, T, D, V, tau = "cuda", 2048, 896, 151936, 0.9
    x = (torch.randn(T, D, device=dev) / 4).to(torch.bfloat16)
    W = (torch.randn(V, D, device=dev) / D ** 0.5).to(torch.bfloat16)
    y = torch.randint(0, V, (T,), device=dev)
    si = torch.randint(-1, 16, (T,), device=dev)
    w = torch.randn(16, dtype=torch.float64, device=dev)
    old = ref = torch.full((T,), -11.0, device=dev)
    kw = FORMS[form](old, ref)
    a, b = x.clone().requires_grad_(), W.clone().requires_grad_()
    loss = fused_bon_loss(a, b, y, si, w, normaliser=float(T), temperature=tau, impl="triton", **kw)
    dx, dw = torch.autograd.grad(loss, (a, b))
    a, b = x.clone().requires_grad_(), W.clone().requires_grad_()
    loss_t = fused_bon_loss(a, b, y, si, w, normaliser=float(T), temperature=tau, impl="torch", **kw)
    dx_t, dw_t = torch.autograd.grad(loss_t, (a, b))
    torch.testing.assert_close(loss, loss_t, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(dx.float(), dx_t.float(), rtol=2e-2, atol=1e-5)
    torch.testing.assert_close(dw.float(), dw_t.float(), rtol=2e-2, atol=1e-5)
