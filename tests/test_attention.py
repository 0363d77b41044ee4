"""Every attention backend == SDPA == a float64 naive softmax reference (GQA, masks, bottom-right causal)."""
import math

import pytest
import torch
from precision import DTYPES, assert_three_way

from bonfast.attention import (
    CausalAttention,
    attention,
    available_backends,
    causal_mask,
    force_backend,
    resolve_backend,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def naive_attention(q, k, v, mask=None, causal=False):
    """softmax(q k^T / sqrt(Dh) + log visible) v per head, rows without a visible key -> 0."""
    B, Tq, Hq, Dh = q.shape
    Tk, Hkv = k.shape[1], k.shape[2]
    rep = Hq // Hkv
    k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(Dh)
    vis = torch.ones(1, 1, Tq, Tk, dtype=torch.bool, device=q.device)
    if mask is not None:
        vis = vis & mask
    if causal:
        vis = vis & causal_mask(Tq, Tk, q.device)
    p = torch.softmax(s.masked_fill(~vis, float("-inf")), -1).nan_to_num(0.0)
    return torch.einsum("bhts,bshd->bthd", p, v)


def _inputs(B=2, Tq=5, Tk=13, Hq=6, Hkv=2, Dh=8, dtype=torch.float64, device="cpu"):
    q = torch.randn(B, Tq, Hq, Dh, dtype=dtype, device=device)
    k = torch.randn(B, Tk, Hkv, Dh, dtype=dtype, device=device)
    v = torch.randn(B, Tk, Hkv, Dh, dtype=dtype, device=device)
    return q, k, v


def _mask(B, Tq, Tk, device="cpu"):
    m = torch.rand(B, 1, Tq, Tk, device=device) > 0.4
    m[0, 0, 1] = False  # one query with no visible key at all
    return m


CASES = [  # (Tq, Tk, causal, mask kind)
    (13, 13, True, None), (5, 13, True, None), (1, 9, True, None), (7, 11, False, None),
    (5, 13, False, "full"), (5, 13, True, "full"), (13, 13, True, "bcast"),
]


@pytest.mark.parametrize("Tq,Tk,causal,mkind", CASES)
@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_backend_matches_naive_float64(backend, Tq, Tk, causal, mkind):
    q, k, v = _inputs(Tq=Tq, Tk=Tk)
    mask = None if mkind is None else _mask(2 if mkind == "full" else 1, Tq, Tk)
    if mkind == "bcast":
        mask[0, 0, 0] = True
    gt = naive_attention(q, k, v, mask, causal)
    with torch.no_grad():
        out = attention(q, k, v, mask=mask, causal=causal, backend=backend)
    torch.testing.assert_close(out, gt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("Tq,Tk,causal,mkind", CASES)
def test_sdpa_gradients_match_naive(Tq, Tk, causal, mkind):
    q, k, v = (x.requires_grad_() for x in _inputs(Tq=Tq, Tk=Tk))
    mask = None if mkind is None else _mask(2 if mkind == "full" else 1, Tq, Tk)
    up = torch.randn(2, Tq, 6, 8, dtype=torch.float64)
    g1 = torch.autograd.grad((attention(q, k, v, mask=mask, causal=causal, backend="sdpa") * up).sum(), (q, k, v))
    g2 = torch.autograd.grad((naive_attention(q, k, v, mask, causal) * up).sum(), (q, k, v))
    for a, b, name in zip(g1, g2, "qkv"):
        assert torch.isfinite(a).all(), f"d{name} not finite"
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sdpa_three_way_precision(dtype):
    q, k, v = _inputs(Tq=11, Tk=11, Hq=4, Hkv=2, Dh=16)
    mask = _mask(2, 11, 11)
    gt = naive_attention(q, k, v, mask, True)
    low = [x.to(dtype) for x in (q, k, v)]
    pt = naive_attention(*low, mask, True)
    out = attention(*low, mask=mask, causal=True, backend="sdpa")
    assert out.dtype == dtype
    assert_three_way(out, pt, gt, dtype, name="sdpa attention")


def test_causal_attention_key_padding():
    q, k, v = _inputs(Tq=9, Tk=9)
    kpm = torch.ones(2, 9, dtype=torch.bool)
    kpm[1, 6:] = False  # right padding
    out = CausalAttention(key_padding_mask=kpm)(0, q, k, v)
    gt = naive_attention(q, k, v, kpm[:, None, None, :].expand(2, 1, 9, 9), True)
    torch.testing.assert_close(out, gt, rtol=1e-12, atol=1e-12)


def test_force_backend_overrides_auto():
    q, k, v = _inputs()
    assert resolve_backend("auto", q, has_mask=False) == "sdpa"
    with force_backend("flex"):
        assert resolve_backend("auto", q, has_mask=False) == "flex"
        with torch.no_grad():
            out = CausalAttention()(0, q, k[:, :5], v[:, :5])
        assert resolve_backend("sdpa", q, has_mask=False) == "sdpa"  # explicit names win
    assert resolve_backend("auto", q, has_mask=False) == "sdpa"
    torch.testing.assert_close(out, naive_attention(q, k[:, :5], v[:, :5], None, True))


def test_unavailable_or_unknown_backend_errors():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="force_backend: name must be one of"):
        with force_backend("cudnn"):
            pass
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        attention(q, k, v, backend="nope")
    if not torch.cuda.is_available():
        with force_backend("flash"), pytest.raises(ValueError, match="'flash' is not available"):
            attention(q, k, v)


def test_flex_backward_on_cpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("CPU-only limitation")
    q, k, v = (x.requires_grad_() for x in _inputs())
    with pytest.raises(ValueError, match="no backward on CPU"):
        attention(q, k, v, causal=True, backend="flex")


@pytest.mark.parametrize("args,match", [
    (dict(q=(2, 5, 6), k=(2, 5, 2, 8), v=(2, 5, 2, 8)), r"q, k, v must be 4-D"),
    (dict(q=(2, 5, 6, 8), k=(2, 5, 4, 8), v=(2, 5, 4, 8)), r"query heads \(6\) must be a multiple"),
    (dict(q=(2, 5, 6, 8), k=(2, 5, 2, 8), v=(2, 4, 2, 8)), r"k and v must both be \[2, Tk, Hkv, 8\]"),
    (dict(q=(2, 9, 6, 8), k=(2, 5, 2, 8), v=(2, 5, 2, 8), causal=True), r"causal attention needs Tq <= Tk"),
    (dict(q=(2, 5, 6, 8), k=(2, 7, 2, 8), v=(2, 7, 2, 8), mask=(2, 1, 5, 5)),
     r"mask must be a bool tensor of shape \[2 or 1, 1, 5, 7\]"),
])
def test_input_errors(args, match):
    q, k, v = (torch.randn(*args[n]) for n in "qkv")
    mask = torch.ones(*args["mask"], dtype=torch.bool) if "mask" in args else None
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, mask=mask, causal=args.get("causal", False))


def test_flex_fn_is_compiled_with_dynamic_shapes(monkeypatch):
    """CUDA flex is compiled with automatic dynamic shapes: dynamic=False recompiled for every new length."""
    from bonfast import attention as attention_module
    seen = {}
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: seen.update(kw) or fn)
    attention_module._flex_fn.cache_clear()
    try:
        attention_module._flex_fn("cuda")
    finally:
        attention_module._flex_fn.cache_clear()
    assert seen.get("dynamic", None) is None


@pytest.mark.cuda
def test_cuda_flex_small_head_dim_is_a_clear_error():
    q, k, v = _inputs(Dh=8, dtype=torch.bfloat16, device="cuda")
    with pytest.raises(ValueError, match=r"'flex' on CUDA needs a head dim Dh >= 16.*got Dh=8"):
        attention(q, k, v, causal=True, backend="flex")


@pytest.mark.cuda
def test_cuda_flex_new_lengths_do_not_recompile_each_time():
    from torch._dynamo.utils import counters
    counters.clear()
    for T in (33, 47, 61, 75):
        q, k, v = _inputs(Tq=T, Tk=T, Dh=16, dtype=torch.bfloat16, device="cuda")
        torch.testing.assert_close(attention(q, k, v, causal=True, backend="flex").float(),
                                   attention(q, k, v, causal=True, backend="sdpa").float(), rtol=2e-2, atol=2e-2)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])  # static, then one dynamic graph


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["flex", "flash", "xformers"])
@pytest.mark.parametrize("Tq,Tk,causal,mkind", CASES)
def test_cuda_backend_matches_sdpa(backend, Tq, Tk, causal, mkind):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    if backend == "flash" and mkind is not None:
        pytest.skip("flash takes no bool mask")
    Dh = 16  # the compiled CUDA flex kernel needs Dh >= 16
    q, k, v = (x.requires_grad_() for x in _inputs(Tq=Tq, Tk=Tk, Dh=Dh, dtype=torch.bfloat16, device="cuda"))
    mask = None if mkind is None else _mask(2 if mkind == "full" else 1, Tq, Tk, "cuda")
    up = torch.randn(2, Tq, 6, Dh, device="cuda", dtype=torch.bfloat16)
    outs, grads = [], []
    for name in ("sdpa", backend):
        o = attention(q, k, v, mask=mask, causal=causal, backend=name)
        outs.append(o.float())
        grads.append(torch.autograd.grad((o * up).sum(), (q, k, v)))
    torch.testing.assert_close(outs[1], outs[0], rtol=2e-2, atol=2e-2)
    for a, b in zip(grads[1], grads[0]):
        torch.testing.assert_close(a.float(), b.float(), rtol=5e-2, atol=5e-2)
