"""Shared-prefix decode attention: Triton kernel == PyTorch path == naive attention over concat([prefix; suffix])
with a float64 truth; GQA / MQA, ragged lengths, t = 0, n = 1, empty parts, strides. The Triton cases run on the
`kernel_device` fixture's device (compiled kernels on CUDA, the interpreter on CPU); references on the CPU."""
import math

import pytest
import torch
from precision import DTYPES, assert_three_way

from bonfast.kernels.prefix_attention import prefix_attention_fwd
from bonfast.ops import prefix_attention, prefix_attention_torch

# (G, n, Hq, Hkv, Dh, P, t): GQA with odd sizes, MHA, MQA with n = 1, no suffix yet (t = 0), a big group
CASES = [
    (2, 3, 4, 2, 24, 37, 5),
    (3, 2, 3, 3, 16, 19, 7),
    (2, 1, 6, 1, 32, 70, 3),
    (2, 5, 4, 2, 16, 23, 0),
    (1, 4, 8, 1, 20, 9, 11),
]


def naive_concat_attention(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens, scale=None):
    """softmax(scale * q @ cat([prefix_k, suffix_k]).T) @ cat([prefix_v, suffix_v]), computed in q's dtype."""
    G, n, Hq, Dh = q.shape
    Hkv, P, t = prefix_k.shape[1], prefix_k.shape[2], suffix_k.shape[3]
    scale = 1.0 / math.sqrt(Dh) if scale is None else scale
    k = torch.cat([prefix_k[:, None].expand(G, n, Hkv, P, Dh), suffix_k], dim=3)  # (G, n, Hkv, P+t, Dh)
    v = torch.cat([prefix_v[:, None].expand(G, n, Hkv, P, Dh), suffix_v], dim=3)
    k, v = (x.repeat_interleave(Hq // Hkv, dim=2) for x in (k, v))                 # (G, n, Hq, P+t, Dh)
    lens = suffix_lens if suffix_lens is not None else torch.full((G, n), t)
    valid = torch.cat([(torch.arange(P) < prefix_lens[:, None])[:, None].expand(G, n, P),
                       torch.arange(t) < lens[..., None]], dim=-1)                   # (G, n, P+t)
    s = torch.einsum("gnhd,gnhkd->gnhk", q, k) * scale
    s = s.masked_fill(~valid[:, :, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)                                     # all-masked rows -> 0
    return torch.einsum("gnhk,gnhkd->gnhd", p, v)


def make_inputs(G, n, Hq, Hkv, Dh, P, t, dtype, *, ragged=True):
    q = torch.randn(G, n, Hq, Dh)
    pk, pv = torch.randn(G, Hkv, P, Dh), torch.randn(G, Hkv, P, Dh)
    sk, sv = torch.randn(G, n, Hkv, t, Dh), torch.randn(G, n, Hkv, t, Dh)
    prefix_lens = torch.randint(1, P + 1, (G,)) if ragged else torch.full((G,), P)
    prefix_lens[0] = P
    suffix_lens = torch.randint(0, t + 1, (G, n)) if ragged else None
    if suffix_lens is not None:
        suffix_lens[0, 0] = t
    return [x.to(dtype) for x in (q, pk, pv)], prefix_lens, [x.to(dtype) for x in (sk, sv)], suffix_lens


def _on(device, *tensors):
    return [None if x is None else x.to(device) for x in tensors]


def three_way(case, dtype, impl, ragged=True, device="cpu"):
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(*case, dtype, ragged=ragged)
    out = prefix_attention(*_on(device, q, pk, pv, pl, sk, sv, sl), impl=impl).cpu()
    pt = naive_concat_attention(q, pk, pv, pl, sk, sv, sl)
    gt = naive_concat_attention(*(x.double() for x in (q, pk, pv)), pl, *(x.double() for x in (sk, sv)), sl)
    assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
    assert_three_way(out, pt, gt, dtype, name=f"prefix_attention[{impl}]")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_torch_path_three_way(case, dtype):
    three_way(case, dtype, "torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_triton_kernel_three_way(case, dtype, kernel_device):
    three_way(case, dtype, "triton", device=kernel_device)


@pytest.mark.parametrize("case", CASES[:3])
def test_common_suffix_length(case, kernel_device):
    three_way(case, torch.float32, "triton", ragged=False, device=kernel_device)
    three_way(case, torch.float32, "torch", ragged=False)


def test_triton_equals_torch_path_fp32(kernel_device):
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(2, 3, 4, 2, 24, 37, 5, torch.float32)
    a = prefix_attention(*_on(kernel_device, q, pk, pv, pl, sk, sv, sl), impl="triton").cpu()
    b = prefix_attention(q, pk, pv, pl, sk, sv, sl, impl="torch")
    torch.testing.assert_close(a, b, rtol=0, atol=2e-6)


@pytest.mark.parametrize("num_splits", [2, 3, 5])
def test_split_prefix_merge(num_splits, kernel_device):
    """Splitting the prefix over programs (flash-decoding style) and merging partials changes nothing."""
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(2, 3, 4, 2, 16, 70, 4, torch.float32)
    pl[1] = 9  # most splits of prompt 1 are empty
    ref = prefix_attention_torch(q, pk, pv, pl, sk, sv, sl)
    out = prefix_attention_fwd(*_on(kernel_device, q, pk, pv, pl, sk, sv, sl), num_splits=num_splits,
                               block_n=16).cpu()
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_strided_cache_views_and_scale(impl, device):
    """The engine passes views of preallocated caches ([..., :t, :]) and transposed prefix buffers."""
    G, n, Hq, Hkv, Dh, P, t = 2, 3, 4, 2, 16, 13, 4
    q = torch.randn(G, Hq, n, Dh).to(device).transpose(1, 2)                       # non-contiguous q
    pk = torch.randn(G, P + 3, Hkv, Dh).to(device).transpose(1, 2)[:, :, :P]       # (G, Hkv, P, Dh), strided
    pv = torch.randn(G, P + 3, Hkv, Dh).to(device).transpose(1, 2)[:, :, :P]
    sk = torch.randn(G, n, Hkv, t + 6, Dh).to(device)[:, :, :, :t]                 # preallocated buffer, first t
    sv = torch.randn(G, n, Hkv, t + 6, Dh).to(device)[:, :, :, :t]
    pl = torch.tensor([P, 5])
    out = prefix_attention(q, pk, pv, pl.to(device), sk, sv, None, scale=0.3, impl=impl).cpu()
    ref = naive_concat_attention(*(x.double().cpu() for x in (q, pk, pv)), pl, *(x.double().cpu() for x in (sk, sv)),
                                 None, scale=0.3)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_empty_parts(impl, device):
    """prefix_lens = 0 uses only the suffix; both parts empty gives 0 (not NaN)."""
    (q, pk, pv), _, (sk, sv), _ = make_inputs(2, 2, 2, 1, 16, 8, 3, torch.float32)
    pl = torch.tensor([0, 8])
    sl = torch.tensor([[2, 0], [0, 3]])
    out = prefix_attention(*_on(device, q, pk, pv, pl, sk, sv, sl), impl=impl).cpu()
    ref = naive_concat_attention(q.double(), pk.double(), pv.double(), pl, sk.double(), sv.double(), sl)
    assert torch.isfinite(out).all()
    assert out[0, 1].abs().max() == 0
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=2e-6)


def test_docstring_names_the_naive_expression():
    sentence = "softmax(scale * q @ cat([prefix_k, suffix_k]).T) @ cat([prefix_v, suffix_v])"
    assert sentence in prefix_attention.__doc__
    assert sentence in naive_concat_attention.__doc__


def test_float64_torch_path_exact():
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(2, 3, 4, 2, 16, 11, 6, torch.float64)
    out = prefix_attention(q, pk, pv, pl, sk, sv, sl)
    ref = naive_concat_attention(q, pk, pv, pl, sk, sv, sl)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_validation_errors():
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(2, 3, 4, 2, 16, 11, 6, torch.float32)
    args = dict(q=q, prefix_k=pk, prefix_v=pv, prefix_lens=pl, suffix_k=sk, suffix_v=sv, suffix_lens=sl)
    bad = {
        "q": q[0],
        "prefix_k": pk[:1],
        "prefix_v": pv[..., :8],
        "prefix_lens": pl.float(),
        "suffix_k": sk[:, :2],
        "suffix_v": sv.double(),
        "suffix_lens": sl[:, :1],
    }
    for name, value in bad.items():
        with pytest.raises(ValueError, match=name):
            prefix_attention(**{**args, name: value})
    with pytest.raises(ValueError, match="divide"):
        prefix_attention(q, pk[:, :1].expand(2, 3, 11, 16), pv[:, :1].expand(2, 3, 11, 16), pl,
                         torch.randn(2, 3, 3, 6, 16), torch.randn(2, 3, 3, 6, 16), sl)
    with pytest.raises(ValueError, match="impl"):
        prefix_attention(**args, impl="cuda")
    with pytest.raises(ValueError, match="float32"):
        prefix_attention(*(x.double() for x in (q, pk, pv)), pl, *(x.double() for x in (sk, sv)), sl, impl="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_kernel_three_way(dtype):
    G, n, Hq, Hkv, Dh, P, t = 3, 16, 8, 2, 128, 1000, 37
    (q, pk, pv), pl, (sk, sv), sl = make_inputs(G, n, Hq, Hkv, Dh, P, t, dtype)
    dev = [x.cuda() for x in (q, pk, pv, pl, sk, sv, sl)]
    out = prefix_attention(*dev, impl="auto")
    pt = naive_concat_attention(q, pk, pv, pl, sk, sv, sl)
    gt = naive_concat_attention(*(x.double() for x in (q, pk, pv)), pl, *(x.double() for x in (sk, sv)), sl)
    assert_three_way(out.cpu(), pt, gt, dtype, name="prefix_attention[cuda]")
