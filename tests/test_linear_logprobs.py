"""linear_logprobs: both fast paths (chunked torch, Triton) against float64. The Triton cases run on the
`device` fixture's device: compiled kernels on CUDA, the interpreter on CPU (skipped when neither is there).

Three-way precision (tests/precision.py): float64 reference = truth, naive PyTorch in the tested dtype = the
bar, for logp, entropy, lse, dX and dW with random upstream gradients on all three outputs.
"""
import re

import pytest
import torch
from precision import ATOL, DTYPES, assert_three_way, naive_head, outputs_and_grads
from precision import impl_name as _impl

import bonfast.ops as ops
from bonfast.ops import linear_logprobs
from bonfast.reference import linear_logprobs_ref

# "torch-tiled" (tests/conftest.py): the torch path with 7 x 64 tiles, so every shape below crosses several
# token chunks and vocabulary blocks (the online softmax across blocks, a ragged last block)
IMPLS = ["torch", "torch-tiled", "triton"]

# (T, D, V, temperature): T = 1, D odd, V prime and above one vocabulary tile (two vocabulary splits)
SHAPES = [(1, 33, 521, 1.0), (40, 67, 509, 0.5), (23, 64, 300, 1.7)]




def _assert_three_way(out, pt, gt, dtype, name):
    """`assert_three_way`, reduced where the tensors live: on CUDA only a failing comparison is copied to the host
    (for its message), not the ~1 GB float64 gradients of a large case."""
    if out.is_cuda:
        o, p, g = (t.detach().to(out.device, torch.float64) for t in (out, pt, gt))
        if not bool(((o - g).abs() > 2.0 * (p - g).abs() + ATOL[dtype] * (1 + g.abs())).any()):
            return
    assert_three_way(out, pt, gt, dtype, name=name)


def _check_three_way(impl, x, w, y, temperature, dtype, ignore_index=-100):
    T = y.shape[0]
    grads = [torch.randn(T, dtype=torch.float64, device=y.device) for _ in range(3)]
    out = outputs_and_grads(
        lambda a, b: linear_logprobs(a, b, y, temperature=temperature, ignore_index=ignore_index, return_entropy=True,
                                     return_lse=True, impl=_impl(impl)), x, w, grads)
    pt = outputs_and_grads(lambda a, b: naive_head(a, b, y, temperature, ignore_index), x, w, grads)
    gt = outputs_and_grads(
        lambda a, b: linear_logprobs_ref(a, b, y, temperature=temperature, ignore_index=ignore_index),
        x.double(), w.double(), grads)
    for name, o, p, g in zip(["logp", "entropy", "lse", "dX", "dW"], out, pt, gt):
        _assert_three_way(o, p, g, dtype, name=f"{impl} {name}")
    return out


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("T,D,V,temperature", SHAPES)
def test_three_way(impl, dtype, T, D, V, temperature, device):
    x = torch.randn(T, D).to(device, dtype)
    w = (torch.randn(V, D) / D ** 0.5).to(device, dtype)
    y = torch.randint(0, V, (T,))
    if T > 2:
        y[torch.randperm(T)[: T // 4]] = -100  # ragged ignored rows
    y = y.to(device)
    out = _check_three_way(impl, x, w, y, temperature, dtype)
    assert out[0].dtype == torch.float32 and (out[0] <= 0).all()
    assert (out[0][y == -100] == 0).all() and (out[1][y == -100] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_all_negative_logits(impl, device):
    """Every logit far below zero (the verl #7439 case): the online max must start at -inf, not 0."""
    T, D, V = 9, 35, 263
    x = (torch.rand(T, D) + 0.5).to(device)
    w = (-(torch.rand(V, D) + 0.5)).to(device)
    y = torch.randint(0, V, (T,)).to(device)
    _check_three_way(impl, x, w, y, 0.5, torch.float32)


def test_triton_many_token_tiles(kernel_device):
    """More token tiles than one launch group (GROUP_T) and two vocabulary splits: the grouped order covers all."""
    T, D, V = 150, 20, 300
    x, w = torch.randn(T, D).to(kernel_device), (torch.randn(V, D) / 4).to(kernel_device)
    y = torch.randint(0, V, (T,)).to(kernel_device)
    _check_three_way("triton", x, w, y, 1.0, torch.float32)


@pytest.mark.parametrize("impl", IMPLS)
def test_ignore_index_inside_vocabulary(impl, device):
    """ignore_index may be a real token id: its rows are ignored, no one-hot term leaks into the gradient."""
    T, D, V = 11, 17, 300
    x, w = torch.randn(T, D).to(device), (torch.randn(V, D) / 4).to(device)
    y = torch.randint(0, V, (T,))
    y[::3] = 5
    y = y.to(device)
    _check_three_way(impl, x, w, y, 1.0, torch.float32, ignore_index=5)


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored(impl, device):
    T, D, V = 6, 19, 280
    x = torch.randn(T, D).to(device).requires_grad_()
    w = torch.randn(V, D).to(device).requires_grad_()
    y = torch.full((T,), -100, device=device)
    logp, entropy, lse = linear_logprobs(x, w, y, return_entropy=True, return_lse=True, impl=_impl(impl))
    assert not logp.any() and not entropy.any() and not lse.any()
    dx, dw = torch.autograd.grad((logp + entropy + lse).sum(), (x, w))
    assert not dx.any() and not dw.any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter multiplies NaN
def test_out_of_range_target_is_nan(impl, device):
    """A target outside [0, V) that is not ignore_index: NaN logp for its row (never -lse or another plausible
    number) and NaN gradients through it; entropy, lse and the other rows are unaffected."""
    T, D, V = 8, 16, 150
    x = torch.randn(T, D).to(device).requires_grad_()
    w = (torch.randn(V, D) / 4).to(device).requires_grad_()
    y = torch.randint(0, V, (T,))
    y[2], y[4], y[5] = V, -3, -100
    bad = torch.zeros(T, dtype=torch.bool)
    bad[[2, 4]] = True
    y, bad = y.to(device), bad.to(device)
    logp, entropy, lse = linear_logprobs(x, w, y, return_entropy=True, return_lse=True, impl=_impl(impl))
    assert logp[bad].isnan().all() and torch.isfinite(logp[~bad]).all()
    assert torch.isfinite(entropy).all() and torch.isfinite(lse).all()
    ref = linear_logprobs_ref(x.detach().double(), w.detach().double(), torch.where(bad, -100, y))
    torch.testing.assert_close(logp[~bad].double(), ref[0][~bad], rtol=1e-5, atol=1e-5)
    dx, dw = torch.autograd.grad(logp.sum(), (x, w), retain_graph=True)
    assert dx[bad].isnan().all() and torch.isfinite(dx[~bad]).all() and dw.isnan().any()
    (dx_h,) = torch.autograd.grad((entropy + lse).sum(), (x,))  # no logp gradient: the target plays no part
    assert torch.isfinite(dx_h).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_leading_dims_and_return_order(impl, device):
    x = torch.randn(2, 3, 21).to(device)
    w = torch.randn(130, 21).to(device)
    y = torch.randint(0, 130, (2, 3)).to(device)
    logp = linear_logprobs(x, w, y, impl=_impl(impl))
    assert logp.shape == (2, 3)
    logp2, lse = linear_logprobs(x, w, y, return_lse=True, impl=_impl(impl))
    ref = linear_logprobs_ref(x.reshape(6, 21), w, y.reshape(6))
    torch.testing.assert_close(logp2.reshape(6), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse.reshape(6), ref[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logp, logp2)


@pytest.mark.parametrize("impl", IMPLS)
def test_only_hidden_needs_grad(impl, device):
    x = torch.randn(5, 16).to(device).requires_grad_()
    w = torch.randn(140, 16).to(device)
    y = torch.randint(0, 140, (5,)).to(device)
    (dx,) = torch.autograd.grad(linear_logprobs(x, w, y, impl=_impl(impl)).sum(), (x,))
    x64 = x.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(linear_logprobs_ref(x64, w.double(), y)[0].sum(), (x64,))
    torch.testing.assert_close(dx.double(), ref, rtol=1e-5, atol=1e-5)


def test_docstring_naive_equivalent():
    """The sentence in the docstring is the truth: evaluate it and compare."""
    expr = re.search(r"Naive equivalent: `([^`]+)`", linear_logprobs.__doc__).group(1)
    hidden, weight = torch.randn(2, 5, 13, dtype=torch.float64), torch.randn(97, 13, dtype=torch.float64)
    targets, temperature = torch.randint(0, 97, (2, 5)), 0.8
    naive = eval(expr, {"torch": torch}, dict(hidden=hidden, weight=weight, targets=targets,
                                               temperature=temperature))
    torch.testing.assert_close(linear_logprobs(hidden, weight, targets, temperature=temperature), naive)


def test_torch_path_memory_does_not_grow_with_T(monkeypatch):
    """The tiled path never holds more than rows x cols logits, forward or backward, whatever T is."""
    seen = []
    real = ops._chunk_logits

    def spy(x, w, temperature):
        z = real(x, w, temperature)
        seen.append(tuple(z.shape))
        return z

    monkeypatch.setattr(ops, "_chunk_logits", spy)
    V, D, rows, cols = 150, 12, 4, 64
    w = torch.randn(V, D, requires_grad=True)
    for T in (9, 57):
        x = torch.randn(T, D, requires_grad=True)
        y = torch.randint(0, V, (T,))
        seen.clear()
        logp, entropy, lse = ops._linear_logprobs_torch(x, w, y, 1.0, -100, True, chunk_size=rows,
                                                        chunk_cols=cols)
        (logp + entropy).sum().backward()
        assert max(r for r, _ in seen) == rows and max(c for _, c in seen) == cols
        assert len(seen) == 2 * -(-T // rows) * -(-V // cols)  # every tile once forward, once backward
        ref = linear_logprobs_ref(x.detach(), w.detach(), y)
        torch.testing.assert_close(logp, ref[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(entropy, ref[1], rtol=1e-5, atol=1e-5)


def test_default_tiles():
    """Large V: _TORCH_MAX_ROWS rows beside vocabulary blocks; small V: one block, the tile filled with rows."""
    budget, rows = ops._TORCH_CHUNK_ELEMENTS, ops._TORCH_MAX_ROWS
    assert ops._tiles(10 ** 6, 50257) == (rows, budget // rows)
    assert ops._tiles(10 ** 6, 300) == (budget // 300, 300)
    assert ops._tiles(3, 50257) == (3, 50257)


@pytest.mark.parametrize("bad, match", [
    (dict(hidden=torch.randn(4, 7)), r"hidden must have shape \[\.\.\., D\] with D = weight.shape\[1\] = 8"),
    (dict(targets=torch.zeros(5, dtype=torch.int64)), r"targets must have shape \(4,\)"),
    (dict(targets=torch.zeros(4, dtype=torch.int32)), r"targets must be int64"),
    (dict(weight=torch.randn(10, 8, dtype=torch.float64)), r"weight must have the dtype of hidden"),
    (dict(weight=torch.randn(10)), r"weight must have shape \[V, D\]"),
    (dict(temperature=0.0), r"temperature must be a finite number > 0"),
    (dict(impl="cuda"), r"impl must be one of"),
    (dict(hidden=torch.randn(4, 8, dtype=torch.float64), weight=torch.randn(10, 8, dtype=torch.float64),
          impl="triton"), r"impl='triton' needs hidden in float16, bfloat16 or float32"),
])
def test_validation(bad, match):
    args = dict(hidden=torch.randn(4, 8), weight=torch.randn(10, 8), targets=torch.zeros(4, dtype=torch.int64))
    kw = dict(temperature=1.0, impl="torch")
    for k, v in bad.items():
        (args if k in args else kw)[k] = v
    with pytest.raises(ValueError, match=match):
        linear_logprobs(args["hidden"], args["weight"], args["targets"], **kw)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("T,D,V", [(1024, 896, 151936), (777, 1536, 129920), (2048, 2304, 32003)])
def test_three_way_cuda_large(dtype, T, D, V):
    dev = "cuda"
    x = torch.randn(T, D, device=dev).to(dtype)
    w = (torch.randn(V, D, device=dev) / D ** 0.5).to(dtype)
    y = torch.randint(0, V, (T,), device=dev)
    y[::7] = -100
    out = _check_three_way("triton", x, w, y, 0.7, dtype)
    assert out[0].is_cuda and (out[0] <= 0).all()


def test_tile_override_from_environment():
    """BONFAST_TORCH_TILE sets (rows, elements) at import; a malformed value fails naming the variable."""
    from bonfast import ops
    assert ops.parse_torch_tile("16,4096") == (16, 4096)
    assert ops.parse_torch_tile(None) == (2048, 1 << 21)
    with pytest.raises(ValueError, match="BONFAST_TORCH_TILE must be 'rows,elements'"):
        ops.parse_torch_tile("big")
