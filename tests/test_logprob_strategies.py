"""The two strategies of the log-prob head ("gemm": token chunks + cuBLAS + an in-place dz pass; "fused":
vocabulary chunks + a recompute/dz kernel + tensor-core GEMMs) against float64, with the three-way precision
rule of tests/precision.py. Tensors live on the `kernel_device` fixture's device (CUDA with compiled kernels,
the CPU under the Triton interpreter). Chunks are forced small so every case crosses several of them.
"""
import math

import pytest
import torch
from precision import DTYPES, assert_three_way, naive_head, outputs_and_grads

import bonfast.kernels.logprob_fused as fused
import bonfast.kernels.logprob_gemm as gemm
from bonfast.reference import bon_loss_ref, linear_logprobs_ref

STRATEGIES = {"gemm": gemm.linear_logprobs_gemm, "fused": fused.linear_logprobs_fused}
LOSSES = {"gemm": gemm.fused_bon_loss_sum_gemm, "fused": fused.fused_bon_loss_sum_fused}
TINY = 1  # a memory budget of 1 byte: the smallest chunks (set below) whatever the shape


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch):
    """Token chunks of 16 rows (gemm) and vocabulary chunks of 128 columns (fused); split-K from K = 16."""
    monkeypatch.setattr(gemm, "_MIN_ROWS", 16)
    monkeypatch.setattr(fused, "_MIN_COLS", 128)
    monkeypatch.setattr(fused, "_SPLIT_MIN_K", 16)




def _inputs(T, D, V, dtype, device, ignored=0.25):
    x = torch.randn(T, D).to(device, dtype)
    w = (torch.randn(V, D) / D ** 0.5).to(device, dtype)
    y = torch.randint(0, V, (T,))
    if T > 2:
        y[torch.randperm(T)[: int(T * ignored)]] = -100  # ragged ignored rows
    return x, w, y.to(device)


# (strategy, T, D, V, temperature): n = 1, primes, several token chunks (gemm: 16 rows), V above one stats
# block (gemm: 1024 under the interpreter) or several vocabulary chunks (fused: 128 columns), ragged last ones
CASES = [("gemm", 1, 33, 521, 1.0), ("gemm", 41, 67, 1031, 0.5), ("fused", 1, 33, 521, 1.0),
         ("fused", 41, 67, 389, 0.5)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("strategy,T,D,V,temperature", CASES)
def test_three_way(strategy, dtype, T, D, V, temperature, kernel_device):
    x, w, y = _inputs(T, D, V, dtype, kernel_device)
    grads = [torch.randn(T, dtype=torch.float64, device=kernel_device) for _ in range(3)]
    fn = STRATEGIES[strategy]
    out = outputs_and_grads(lambda a, b: fn(a, b, y, temperature=temperature, return_entropy=True, memory_budget=TINY),
                            x, w, grads)
    pt = outputs_and_grads(lambda a, b: naive_head(a, b, y, temperature), x, w, grads)
    gt = outputs_and_grads(lambda a, b: linear_logprobs_ref(a, b, y, temperature=temperature),
                           x.double(), w.double(), grads)
    for name, o, p, g in zip(["logp", "entropy", "lse", "dX", "dW"], out, pt, gt):
        assert_three_way(o, p, g, dtype, name=f"{strategy} {name}")
    assert out[0].dtype == torch.float32 and out[3].dtype == dtype and out[4].dtype == dtype
    assert (out[0][y == -100] == 0).all() and (out[2][y == -100] == 0).all()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_all_ignored_rows_and_bad_targets(strategy, kernel_device):
    """All-ignored rows: zeros and no gradient. A target outside [0, V): NaN logp and NaN gradients through
    its row only; entropy and lse stay finite. Same semantics as the current kernels."""
    T, D, V = 6, 16, 300
    x, w, _ = _inputs(T, D, V, torch.float32, kernel_device)
    x.requires_grad_()
    w.requires_grad_()
    y = torch.full((T,), -100, device=kernel_device)
    logp, ent, lse = STRATEGIES[strategy](x, w, y, return_entropy=True, memory_budget=TINY)
    dx, dw = torch.autograd.grad((logp + ent + lse).sum(), (x, w))
    assert not logp.any() and not ent.any() and not lse.any() and not dx.any() and not dw.any()

    y = torch.tensor([3, V, 7, -100, 9, -5], device=kernel_device)
    logp, ent, lse = STRATEGIES[strategy](x, w, y, return_entropy=True, memory_budget=TINY)
    assert logp[[1, 5]].isnan().all() and not logp[[0, 2, 3, 4]].isnan().any()
    assert ent.isfinite().all() and lse.isfinite().all()
    (dx,) = torch.autograd.grad(logp.sum(), x, retain_graph=True)
    assert dx[[1, 5]].isnan().all() and dx[[0, 2, 3, 4]].isfinite().all()
    (dx,) = torch.autograd.grad((ent + lse).sum(), x)  # no g_logp: the bad rows' gradients stay finite
    assert dx.isfinite().all()


FORMS = {
    "plain": lambda old, ref: {},
    "clipped_k3": lambda old, ref: dict(old_logp=old, clip_eps=(0.1, 0.3), ref_logp=ref, kl_coef=0.3),
}


@pytest.mark.parametrize("strategy", list(LOSSES))
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_bon_loss(strategy, form, dtype, kernel_device):
    """Three-way on the loss head (value, dX, dW), with a grad_output != 1 (the gemm strategy's backward only
    scales the gradients it computed in the forward)."""
    T, D, V, tau, scale = 37, 33, 301, 0.7, 3.0
    x, W, y = _inputs(T, D, V, dtype, kernel_device, ignored=0.2)
    x = (0.3 * x.float()).to(dtype)
    si = torch.randint(-1, 6, (T,), device=kernel_device)
    wts = torch.randn(6, dtype=torch.float64, device=kernel_device)
    lp_now = linear_logprobs_ref(x.double(), W.double(), y, temperature=tau)[0]
    old, ref = (lp_now + 0.3 * torch.randn_like(lp_now)).float(), (lp_now + 0.3 * torch.randn_like(lp_now)).float()
    kw = FORMS[form](old, ref)
    si_eff = torch.where(y == -100, -1, si)
    eps = (0.1, 0.3) if "old_logp" in kw else None
    kl = kw.get("kl_coef", 0.0)

    def run(fn, a, b):
        a, b = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        loss = fn(a, b)
        return [loss.detach(), *torch.autograd.grad(loss * scale, (a, b))]

    out = run(lambda a, b: LOSSES[strategy](a, b, y, si_eff, wts, temperature=tau, old_logp=kw.get("old_logp"),
                                            ref_logp=kw.get("ref_logp"), clip_eps=eps, kl_coef=kl,
                                            memory_budget=TINY), x, W)

    def naive(a, b):
        lp = torch.log_softmax((a @ b.T).float() / tau, -1).gather(-1, y.clamp(min=0)[:, None])[:, 0]
        return bon_loss_ref(lp, si_eff, wts.float(), normaliser=1.0, **kw)

    pt = run(naive, x, W)
    gt = run(lambda a, b: bon_loss_ref(linear_logprobs_ref(a, b, y, temperature=tau)[0], si_eff, wts,
                                       normaliser=1.0, **kw), x.double(), W.double())
    for name, o, p, g in zip(["loss", "dX", "dW"], out, pt, gt):
        assert_three_way(o, p, g, dtype, name=f"{strategy} {form} {name}")
    assert out[1].dtype == dtype and out[2].dtype == dtype


def test_gemm_loss_second_backward_raises_and_no_grad_skips_work(kernel_device, monkeypatch):
    x, W, y = _inputs(8, 16, 140, torch.float32, kernel_device)
    x.requires_grad_()
    args = (x, W, y, torch.zeros(8, dtype=torch.int64, device=kernel_device), torch.ones(1, device=kernel_device))
    loss = gemm.fused_bon_loss_sum_gemm(*args)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already used"):
        loss.backward()
    calls = []
    monkeypatch.setattr(gemm, "chunk_backward", lambda *a, **k: calls.append(1))
    with torch.no_grad():
        torch.testing.assert_close(gemm.fused_bon_loss_sum_gemm(*args), loss.detach())
    assert not calls  # the forward computes gradients only when autograd will ask for them


@pytest.mark.parametrize("splits", [None, 3])
def test_dz_and_stats_kernels_equal_torch(splits, kernel_device, monkeypatch):
    """The gemm strategy's Triton passes == their torch twins (used on CPU without the interpreter); with
    3 vocabulary splits the stats pass has a ragged and an empty split to merge."""
    if splits is not None:
        monkeypatch.setattr(gemm, "_splits", lambda C, V, device: splits)
    C, V, tau = 19, 1500, 0.8
    z = torch.randn(C, V, device=kernel_device) * 3
    y = torch.randint(0, V, (C,), device=kernel_device)
    y[2], y[5] = -100, 1400  # an ignored row; a target in the last split
    for want_entropy in (False, True):
        got = gemm.merge_stats(gemm.logit_stats(z, y, tau, want_entropy), y, V, -100, want_entropy)
        exp = gemm.merge_stats(gemm.logit_stats_torch(z.cpu(), y.cpu(), tau, want_entropy), y.cpu(), V, -100,
                               want_entropy)
        for g, e in zip(got, exp):
            if e is not None:
                torch.testing.assert_close(g.cpu(), e, rtol=1e-5, atol=1e-5)
    stats, ent = got[3], got[1]
    gl, gh, gs = gemm.grad_vectors(y, V, -100, *(torch.randn(C, device=kernel_device) for _ in range(3)))
    for dtype in (torch.float32, torch.bfloat16):  # dz in the input dtype; fp32 inputs overwrite z in place
        zc = z.clone()
        dz = zc if dtype == torch.float32 else torch.empty(C, V, dtype=dtype, device=kernel_device)
        out = gemm.dz_from_logits(zc, dz, y, stats, ent, gl, gh, gs, tau)
        exp = gemm.dz_torch(z.clone(), torch.empty(C, V, dtype=dtype, device=kernel_device), y, stats, ent, gl, gh,
                            gs, tau)
        assert out.data_ptr() == dz.data_ptr() and out.dtype == dtype
        torch.testing.assert_close(out.float(), exp.float(), rtol=1e-5 if dtype == torch.float32 else 1e-2,
                                   atol=1e-6)


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_matmul_into_split_k(accumulate, dtype, kernel_device):
    """The fused strategy's GEMM: a transposed operand, ragged tiles, the split-K path and accumulation."""
    M, K, N = 70, 150, 45
    a = torch.randn(K, M, device=kernel_device).to(dtype).T  # [M, K], column-major
    b = torch.randn(K, N, device=kernel_device).to(dtype)
    c0 = torch.randn(M, N, device=kernel_device)
    expect = a.double() @ b.double() + (c0.double() if accumulate else 0)
    for split_min in (16, 10 ** 9):  # split K, then one range
        fused._SPLIT_MIN_K = split_min
        c = fused.matmul_into(c0.clone(), a, b, accumulate=accumulate)
        torch.testing.assert_close(c.double(), expect, rtol=1e-5, atol=1e-4)


def test_fused_backward_is_deterministic(kernel_device):
    x, w, y = _inputs(23, 40, 400, torch.bfloat16, kernel_device)
    ones = [torch.ones(23, dtype=torch.float64, device=kernel_device)] * 3
    runs = [outputs_and_grads(
        lambda a, b: fused.linear_logprobs_fused(a, b, y, return_entropy=True, memory_budget=TINY), x, w, ones)
        for _ in range(2)]
    for r0, r1 in zip(*runs):
        assert torch.equal(r0, r1)


def test_memory_budget_model(monkeypatch):
    """Chunk sizes follow the budget (argument > env > default); auto picks gemm when it fits."""
    monkeypatch.setattr(gemm, "_MIN_ROWS", 128)
    monkeypatch.setattr(fused, "_MIN_COLS", 256)
    T, D, V, bf16 = 8192, 2048, 151936, torch.bfloat16
    acc = 4 * V * D  # the gemm strategy's fp32 dW accumulator
    row = V * (4 + 2)  # per token row: fp32 logits + bf16 dz (V is a multiple of 64: no padding)
    assert gemm.chunk_rows(T, D, V, bf16, acc + 1024 * row) == 1024
    assert gemm.chunk_rows(T, D, V, bf16, 1) == 128 and gemm.chunk_rows(100, D, V, bf16, 1) == 100
    assert gemm.chunk_rows(T, D, V, torch.float32, 10 * V * 4 * 128) == 1280  # fp32: dz in place, no accumulator
    assert gemm.pick_strategy(T, D, V, bf16, acc + 512 * row) == "gemm"
    assert gemm.pick_strategy(T, D, V, bf16, acc + 500 * row) == "fused"
    assert gemm.chunk_rows(T, D, V, bf16) == 896 and gemm.pick_strategy(T, D, V, bf16) == "gemm"  # the default
    assert gemm.padded_cols(50257) == 50304 and gemm.row_bytes(50257, torch.float32) == 50304 * 4
    cols = fused.chunk_cols(T, D, V, bf16)  # default: 15% of dX + dW
    floor = (T + V) * D * 2
    assert fused.fused_extra_bytes(T, D, V, bf16, cols) <= 0.15 * floor
    assert fused.chunk_cols(T, D, V, bf16, 1) == 256 and fused.chunk_cols(T, D, V, bf16, 10 ** 12) == V
    monkeypatch.setenv("BONFAST_LOGPROB_MEMORY", str(acc + 2048 * row))
    assert gemm.chunk_rows(T, D, V, bf16) == 2048 and gemm.pick_strategy(T, D, V, bf16) == "gemm"
    monkeypatch.setenv("BONFAST_LOGPROB_MEMORY", "lots")
    with pytest.raises(ValueError, match="BONFAST_LOGPROB_MEMORY: expected a number of bytes, got 'lots'"):
        gemm.chunk_rows(T, D, V, bf16)


def test_work_model_in_headers():
    """The documented work per strategy (the acceptance numbers) stays in the kernel files' headers."""
    assert "linear_logprobs  forward 2 TDV + backward 6 TDV" in gemm.__doc__
    assert "fused_bon_loss   forward 6 TDV" in gemm.__doc__ and "= 6 TDV" in gemm.__doc__
    assert "= 8 TDV" in fused.__doc__ and not math.isnan(fused.FLOOR_FRACTION)


@pytest.mark.parametrize("strategy", ["gemm", "fused", "tiles"])
def test_ops_strategies_agree(strategy, kernel_device):
    """bonfast.ops dispatches `strategy` to the same results as its torch path."""
    from bonfast.ops import fused_bon_loss, linear_logprobs
    T, D, V = 9, 16, 200
    x, w, y = _inputs(T, D, V, torch.float32, kernel_device)
    si = torch.randint(-1, 3, (T,), device=kernel_device)
    wts = torch.randn(3, device=kernel_device)

    def run(**kw):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        logp, ent = linear_logprobs(a, b, y, temperature=0.8, return_entropy=True, **kw)
        loss = fused_bon_loss(a, b, y, si, wts, normaliser=7.0, temperature=0.8, **kw)
        return [logp, ent, loss, *torch.autograd.grad(logp.sum() + ent.sum() + loss, (a, b))]

    for got, exp in zip(run(impl="triton", strategy=strategy, memory_budget=TINY), run(impl="torch")):
        torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)


def test_ops_auto_strategy_follows_the_budget():
    from bonfast.ops import _triton_head
    x = torch.empty(4096, 1024, dtype=torch.bfloat16)
    need = gemm.gemm_extra_bytes(4096, 1024, 50000, torch.bfloat16, 512)
    assert _triton_head("auto", need, x, 50000) == "gemm" and _triton_head("auto", need - 1, x, 50000) == "fused"
    assert _triton_head("tiles", None, x, 50000) == "tiles"


def test_ops_strategy_validation():
    from bonfast.ops import linear_logprobs
    x, w, y = torch.randn(3, 8), torch.randn(20, 8), torch.randint(0, 20, (3,))
    with pytest.raises(ValueError, match=r"strategy: expected one of \['auto', 'gemm', 'fused', 'tiles'\], "
                                         r"got 'fast'"):
        linear_logprobs(x, w, y, strategy="fast")
    with pytest.raises(TypeError, match="memory_budget: expected an int >= 0, got 1.5"):
        linear_logprobs(x, w, y, memory_budget=1.5)
    with pytest.raises(ValueError, match="memory_budget: expected an int >= 0"):
        linear_logprobs(x, w, y, memory_budget=-1)
    # the torch path ignores the Triton strategies
    torch.testing.assert_close(linear_logprobs(x, w, y, impl="torch", strategy="fused"),
                               linear_logprobs(x, w, y, impl="torch"))
