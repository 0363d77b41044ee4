r"""The "gemm" strategy of the fused log-prob head: token chunks, logits by cuBLAS, one Triton pass per chunk.

Same outputs and gradients as `bonfast.kernels.linear_logprobs` (z_tv = x_t . w_v / tau, p = softmax(z_t)):

    lse_t = log sum_v e^{z_tv},   logp_t = z_{t,y_t} - lse_t,   H_t = lse_t - sum_v p_tv z_tv
    dL/dz_tv = g^logp_t (1[v = y_t] - p_tv) - g^H_t p_tv (log p_tv + H_t) + g^lse_t p_tv
    dX = (dL/dz / tau) W,   dW = (dL/dz / tau)^T X

Per chunk of C tokens (X_c [C, D]):
    forward:  Z = X_c W^T            cuBLAS, fp32 output (16-bit inputs: fp32 accumulation, never rounded to 16
                                     bits), into one reused fp32 [C, V] buffer
              row statistics         `_logit_stats_kernel`: online max / sum-exp / entropy sum / target logit
    backward: Z = X_c W^T            recomputed (the upstream gradient is unknown at forward time)
              dZ = dL/dZ             `_dz_kernel`, from the forward's saved (max, log sum-exp), into a [C, V]
                                     buffer in the input dtype (fp32 inputs: in place over Z)
              dX_c = dZ W            cuBLAS, straight into the rows of dX
              dW += dZ^T X_c         cuBLAS with an fp32 accumulator across chunks (16-bit inputs)
The fused BoN loss knows dL/dlogp_t = u_t in the forward (the loss is token-wise in logp), so it runs the
backward steps inside the forward on the logits it has just computed (no recompute: one logits GEMM per chunk)
and its backward only scales dX, dW by the scalar grad_output.

fp32 logits: the engine's sampler scores tokens with fp32 logits of the same 16-bit X and W
(`bonfast.precision.Precision.lm_head`); logits rounded to bf16 would move a log-prob by up to |z| 2^-9 (0.05
nat at a logit of 25), so the trainer's log-probs would no longer be the sampler's. Both buffers' rows are padded
to a multiple of 64 elements, so an odd V (50257) still gives every row an aligned start.

Work in units of TDV = T * D * V flops (one [T, D] x [D, V] GEMM = 2 TDV):
    linear_logprobs  forward 2 TDV + backward 6 TDV (recompute, dX, dW)      = 8 TDV
    fused_bon_loss   forward 6 TDV (logits, dX, dW)  + backward O(TD + VD)    = 6 TDV
HBM traffic beyond the GEMM operands (b = bytes per input element, n = T / C chunks):
    forward: fp32 logits written by the GEMM and read by the stats pass, 8 T V;
    backward: fp32 logits written by the GEMM and read by the dz pass, dz written and read by the two GEMMs,
    8 T V + 3 T V b; the fp32 dW accumulator read and written by each chunk's dW GEMM, 8 n V D.
At T = 8192, D = 2048, V = 151936, bf16 and the default budget (C = 896, n = 10): 10 + 17.4 + 24.9 = ~52 GB,
of which the stats and dz passes (~12.5 GB, ~3.3 ms at 80% of 4.8 TB/s) are not inside a GEMM (the fused BoN
loss skips the recompute: ~10 GB less).
Extra memory: the fp32 [C, V] logits buffer (4 C V), for 16-bit inputs a [C, V] dz buffer (C V b) and the fp32
dW accumulator (4 V D); for fp32 weights dz overwrites the logits and the accumulator is the returned gradient.
C comes from a byte budget (`chunk_rows`); `auto` (`pick_strategy`) takes this strategy when it fits the
budget with C >= min(T, 512).

dW accumulation in fp32: torch >= 2.11 has `torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)` for
16-bit a, b on CUDA (cublasGemmEx with an fp32 C, beta = 1); it is probed once per device and dtype on a
small product (one host sync) and, where it raises or differs, replaced by the Triton GEMM of
`bonfast.kernels.logprob_fused` (fp32 tile accumulators, C read once per call). On CPU (tests) the
accumulation upcasts the chunk. cuBLAS runs 16-bit GEMMs with fp32 accumulation (for long reductions torch
may allow reduced-precision split-K; dW's cross-chunk sum is always fp32).

Predicted, not measured (no GPU was available; roofline with assumed efficiencies: cuBLAS at 75% of 989
TFLOP/s, the stats and dz passes at 80% of 4.8 TB/s), T = 8192, D = 2048, V = 151936, bf16 on an H200:
linear_logprobs full step 8 TDV ~27.5 ms + ~3.3 ms of passes + ~5 ms of dW accumulator traffic = ~36 ms ->
~570 TFLOP/s at the 8 TDV count; fused_bon_loss 6 TDV ~20.6 ms + ~2 ms + ~5 ms = ~28 ms -> ~740 TFLOP/s
"effective" at the 8 TDV count. (Before fp32 logits the estimate was ~30 / ~23 ms with C = 2944; a larger
`memory_budget` buys back the dW traffic: C = 2944 needs ~3.9 GB.)

Grid fill: the stats pass runs C / 4 row blocks x vocabulary splits (at least 2 x SMs programs), the dz pass
C / 4 x V / 1024 programs; the GEMMs are cuBLAS's.

Under TRITON_INTERPRET=1 (CPU tests) the kernels run in the interpreter (bf16 upcast after loading, as in
every kernel here); on CPU without the interpreter `dz_torch` / `logit_stats_torch` do the same steps.
"""
import math
import os

import torch
import triton
import triton.language as tl

from bonfast.kernels._launch import on_device
from bonfast.kernels._strategy_function import apply as strategy_apply

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_BLOCK_R, _BLOCK_V = (16, 1024) if _INTERPRET else (4, 1024)  # rows x vocabulary entries per program


@triton.jit
def _logit_stats_kernel(Z_ptr, Y_ptr, P_ptr, C, V, stride_z, inv_temp, v_per_split, num_splits,
                        HAS_ENTROPY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """Partial (max m, sum e^{z-m}, sum e^{z-m}(z-m), target logit) of BLOCK_R rows over one vocabulary split."""
    pid_r = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < C
    y = tl.load(Y_ptr + rows, mask=mask_r, other=-1)
    v_lo = split * v_per_split
    v_hi = tl.minimum(V, v_lo + v_per_split)
    m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_R,), dtype=tl.float32)
    a = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        mask = mask_r[:, None] & (offs_v < v_hi)[None, :]
        z = tl.load(Z_ptr + rows[:, None] * stride_z + offs_v[None, :], mask=mask, other=float("-inf"))
        z = z.to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows past C: keep exp() finite
        e = tl.exp(z - m_safe[:, None])  # masked lanes: exp(-inf) = 0
        alpha = tl.exp(m - m_safe)
        if HAS_ENTROPY:  # a = sum e^{z-m} (z-m), re-centred on the new max; s == 0 only before the first block
            a = alpha * (a + s * tl.where(s > 0, m - m_safe, 0.0))
            a += tl.sum(tl.where(mask, e * (z - m_safe[:, None]), 0.0), axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new
    inside = mask_r & (y >= v_lo) & (y < v_hi)
    zy = tl.load(Z_ptr + rows * stride_z + y, mask=inside, other=0.0).to(tl.float32) * inv_temp
    out = P_ptr + split * C + rows
    step = num_splits * C
    tl.store(out, m, mask=mask_r)
    tl.store(out + step, s, mask=mask_r)
    tl.store(out + 2 * step, zy, mask=mask_r)
    if HAS_ENTROPY:
        tl.store(out + 3 * step, a, mask=mask_r)


@triton.jit
def _dz_kernel(Z_ptr, DZ_ptr, Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr, C, V, stride_z, stride_dz,
               inv_temp, HAS_ENTROPY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr):
    """dL/d(x.w) of a [BLOCK_R, BLOCK_V] tile of raw logits x.w, stored in DZ's dtype (DZ may be Z itself)."""
    pid_r = tl.program_id(0).to(tl.int64)
    pid_v = tl.program_id(1).to(tl.int64)
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_r = rows < C
    mask = mask_r[:, None] & (offs_v < V)[None, :]
    y = tl.load(Y_ptr + rows, mask=mask_r, other=-1)
    m = tl.load(M_ptr + rows, mask=mask_r, other=0.0)
    logs = tl.load(LOGS_ptr + rows, mask=mask_r, other=0.0)
    g_logp = tl.load(GL_ptr + rows, mask=mask_r, other=0.0)
    g_lse = tl.load(GS_ptr + rows, mask=mask_r, other=0.0)
    z = tl.load(Z_ptr + rows[:, None] * stride_z + offs_v[None, :], mask=mask, other=0.0).to(tl.float32) * inv_temp
    logq = (z - m[:, None]) - logs[:, None]  # log p from (max, log sum-exp): lse itself is rounded at |z|
    p = tl.where(mask, tl.exp(logq), 0.0)
    dz = p * (g_lse - g_logp)[:, None]
    if HAS_ENTROPY:
        ent = tl.load(ENT_ptr + rows, mask=mask_r, other=0.0)
        g_ent = tl.load(GH_ptr + rows, mask=mask_r, other=0.0)
        dz -= g_ent[:, None] * p * (logq + ent[:, None])
    dz += tl.where(offs_v[None, :] == y[:, None], g_logp[:, None], 0.0)
    tl.store(DZ_ptr + rows[:, None] * stride_dz + offs_v[None, :], (dz * inv_temp).to(DZ_ptr.dtype.element_ty),
             mask=mask)


# ----------------------------------------------------------------------------------------------------------
# host side: shared helpers (also used by the fused strategy)


def use_kernels(x):
    """Triton kernels for CUDA tensors or under the interpreter; the torch steps otherwise."""
    return x.is_cuda or _INTERPRET


def num_sms(device):
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def bad_targets(y, V, ignore_index):
    """Rows whose target is neither ignore_index nor in [0, V): NaN logp and NaN gradients through them."""
    return (y != ignore_index) & ((y < 0) | (y >= V))


def grad_vectors(y, V, ignore_index, g_logp, g_entropy, g_lse):
    """fp32 [T] upstream gradients with ignored rows zeroed (None -> zeros; bad targets -> NaN g_logp)."""
    valid = y != ignore_index
    zeros = torch.zeros(y.shape[0], dtype=torch.float32, device=y.device)
    gl = zeros
    if g_logp is not None:  # rows with an out-of-range target have NaN logp: NaN gradients through them
        gl = torch.where(valid, g_logp.float(), 0.0).masked_fill_(bad_targets(y, V, ignore_index), math.nan)
    gs = zeros if g_lse is None else torch.where(valid, g_lse.float(), 0.0)
    gh = None if g_entropy is None else torch.where(valid, g_entropy.float(), 0.0)
    return gl, gh, gs


def merge_stats(part, y, V, ignore_index, want_entropy):
    """Merge per-split partials [3 or 4, splits, C] -> (logp, entropy or None, lse, stats [2, C] = (max, log s))."""
    m, s, zy = part[0], part[1], part[2]
    mx = m.amax(0)
    scale = torch.exp(m - mx)  # empty splits: m = -inf -> 0
    s_tot = (s * scale).sum(0)
    log_s = torch.log(s_tot)
    valid = y != ignore_index
    logp = torch.where(valid, (zy.sum(0) - mx) - log_s, 0.0).masked_fill_(bad_targets(y, V, ignore_index), math.nan)
    entropy = None
    if want_entropy:
        a_tot = torch.where(s > 0, scale * (part[3] + s * (m - mx)), 0.0).sum(0)
        entropy = torch.where(valid, log_s - a_tot / s_tot, 0.0)
    return logp, entropy, torch.where(valid, mx + log_s, 0.0), torch.stack((mx, log_s))


_MIN_ROWS = 128  # smallest token chunk, whatever the budget
DEFAULT_MEMORY_BUDGET = 2 << 30  # bytes of extra memory (beyond inputs and returned gradients) the head may use


def budget_bytes(memory_budget, default=DEFAULT_MEMORY_BUDGET):
    """The memory budget in bytes: the argument, else env BONFAST_LOGPROB_MEMORY, else `default`."""
    env = os.environ.get("BONFAST_LOGPROB_MEMORY")
    if memory_budget is None and env:
        try:
            memory_budget = int(env)
        except ValueError:
            raise ValueError(f"BONFAST_LOGPROB_MEMORY: expected a number of bytes, got {env!r}") from None
    return default if memory_budget is None else int(memory_budget)


_ROW_ALIGN = 64  # elements: the chunk buffers' row stride is a multiple of this (256-byte fp32 rows)


def padded_cols(V):
    """Row stride of the [C, V] chunk buffers: V rounded up to a multiple of _ROW_ALIGN."""
    return triton.cdiv(V, _ROW_ALIGN) * _ROW_ALIGN


def row_bytes(V, dtype):
    """Bytes per token row of the chunk buffers: fp32 logits, plus a 16-bit dz row for 16-bit inputs."""
    item = torch.finfo(dtype).bits // 8
    return padded_cols(V) * (4 + (item if item < 4 else 0))


def gemm_extra_bytes(T, D, V, dtype, rows):
    """Extra memory of the gemm strategy with chunks of `rows` tokens: chunk buffers + fp32 dW accumulator."""
    return rows * row_bytes(V, dtype) + (0 if dtype == torch.float32 else 4 * V * D)


def pick_strategy(T, D, V, dtype, memory_budget=None):
    """"gemm" when its extra memory with chunks of min(T, 512) rows fits the budget, else "fused"."""
    return "gemm" if gemm_extra_bytes(T, D, V, dtype, min(T, 512)) <= budget_bytes(memory_budget) else "fused"


def chunk_rows(T, D, V, dtype, memory_budget=None):
    """Tokens per chunk: the most rows whose chunk buffers fit the budget beside the fp32 dW accumulator,
    a multiple of 128 (at least _MIN_ROWS, at most T). Budget: the argument, else env BONFAST_LOGPROB_MEMORY
    (bytes), else DEFAULT_MEMORY_BUDGET."""
    free = budget_bytes(memory_budget) - gemm_extra_bytes(T, D, V, dtype, 0)
    rows = max(_MIN_ROWS, free // row_bytes(V, dtype) // 128 * 128)
    return int(min(T, rows))


# ----------------------------------------------------------------------------------------------------------
# host side: the per-chunk steps


def _splits(C, V, device):
    """Vocabulary splits of the stats pass, so that at least 2 x SMs programs run."""
    row_blocks = triton.cdiv(C, _BLOCK_R)
    return max(1, min(triton.cdiv(2 * num_sms(device), row_blocks), triton.cdiv(V, 4 * _BLOCK_V)))


def logit_stats_torch(z, y, temperature, want_entropy):
    """Torch twin of `_logit_stats_kernel` with one split: partials [3 or 4, 1, C]."""
    zf = z.float() / temperature  # (C, V)
    m = zf.amax(-1)
    e = torch.exp(zf - m[:, None])
    inside = (y >= 0) & (y < z.shape[1])
    zy = torch.where(inside, zf.gather(-1, y.clamp(0, z.shape[1] - 1)[:, None])[:, 0], 0.0)
    parts = [m, e.sum(-1), zy] + ([(e * (zf - m[:, None])).sum(-1)] if want_entropy else [])
    return torch.stack(parts)[:, None]


def logit_stats(z, y, temperature, want_entropy):
    """Partial statistics [3 or 4, splits, C] of raw logits z [C, V] (see `merge_stats`)."""
    if not use_kernels(z):
        return logit_stats_torch(z, y, temperature, want_entropy)
    C, V = z.shape
    splits = _splits(C, V, z.device)
    part = torch.empty((4 if want_entropy else 3, splits, C), dtype=torch.float32, device=z.device)
    v_per_split = triton.cdiv(triton.cdiv(V, splits), _BLOCK_V) * _BLOCK_V
    with on_device(z):
        _logit_stats_kernel[(triton.cdiv(C, _BLOCK_R), splits)](
            z, y, part, C, V, z.stride(0), 1.0 / temperature, v_per_split, splits, HAS_ENTROPY=want_entropy,
            BLOCK_R=_BLOCK_R, BLOCK_V=_BLOCK_V, num_warps=4)
    return part


def dz_torch(z, out, y, stats, entropy, gl, gh, gs, temperature):
    """Torch twin of `_dz_kernel`: z [C, V] raw logits -> dL/d(x.w) into out (fp32 math; out may be z)."""
    logq = z.float().div_(temperature).sub_(stats[0][:, None]).sub_(stats[1][:, None])
    p = torch.exp(logq)
    dz = p * (gs - gl)[:, None]
    if gh is not None:
        dz -= gh[:, None] * p * (logq + entropy[:, None])
    inside = (y >= 0) & (y < z.shape[1])
    dz.scatter_add_(-1, y.clamp(0, z.shape[1] - 1)[:, None], torch.where(inside, gl, 0.0)[:, None])
    return out.copy_(dz.div_(temperature))


def dz_from_logits(z, out, y, stats, entropy, gl, gh, gs, temperature):
    """dL/d(x.w) of raw fp32 logits z [C, V] into out [C, V] (the input dtype; may be z itself), from stats [2, C]
    and fp32 [C] gradient vectors. Returns out."""
    if not use_kernels(z):
        return dz_torch(z, out, y, stats, entropy, gl, gh, gs, temperature)
    C, V = z.shape
    has_entropy = gh is not None
    with on_device(z):
        _dz_kernel[(triton.cdiv(C, _BLOCK_R), triton.cdiv(V, _BLOCK_V))](
            z, out, y, stats[0], stats[1], entropy if has_entropy else gl, gl, gh if has_entropy else gl, gs, C, V,
            z.stride(0), out.stride(0), 1.0 / temperature, HAS_ENTROPY=has_entropy, BLOCK_R=_BLOCK_R,
            BLOCK_V=_BLOCK_V, num_warps=4)
    return out


_OUT_DTYPE_MM = {}  # (op, device, dtype) -> whether torch's fp32-output (add)mm with out= works there


def _addmm_out_dtype_works(device, dtype, op="addmm"):
    """Probe once per (op, device, dtype): does torch.addmm(c, a, b, out_dtype=fp32, out=c) (op "addmm") or
    torch.mm(a, b, out_dtype=fp32, out=c) (op "mm") run and give (c +) a @ b?"""
    key = (op, device, dtype)
    if key not in _OUT_DTYPE_MM:
        g = torch.Generator(device="cpu").manual_seed(0)
        a, b, c = (torch.randn(s, generator=g).to(device) for s in ((64, 48), (48, 32), (64, 32)))
        expect = (c if op == "addmm" else 0) + a.to(dtype).float() @ b.to(dtype).float()
        try:
            if op == "addmm":
                torch.addmm(c, a.to(dtype), b.to(dtype), out_dtype=torch.float32, out=c)
            else:
                torch.mm(a.to(dtype), b.to(dtype), out_dtype=torch.float32, out=c)
            # one host sync per (op, device, dtype) per process, never again on this path
            _OUT_DTYPE_MM[key] = bool(torch.allclose(c, expect, rtol=1e-3, atol=1e-3))
        except (RuntimeError, NotImplementedError, TypeError):
            _OUT_DTYPE_MM[key] = False
    return _OUT_DTYPE_MM[key]


def chunk_buffers(rows, V, dtype, device, with_dz):
    """(z, dz): the fp32 logits buffer [rows, V] and, when with_dz, the dz buffer [rows, V] in `dtype` (z itself
    for fp32 inputs; None without with_dz). Rows padded to `padded_cols(V)` elements."""
    ld = padded_cols(V)
    z = torch.empty((rows, ld), dtype=torch.float32, device=device)[:, :V]
    if not with_dz:
        return z, None
    return z, (z if dtype == torch.float32 else torch.empty((rows, ld), dtype=dtype, device=device)[:, :V])


def logits_into(z, x_c, w):
    """z[:C] = x_c @ w.T in fp32 for x_c [C, D], w [V, D]: 16-bit inputs multiplied exactly, summed in fp32 and
    never rounded to 16 bits (cuBLAS with an fp32 output, else the Triton GEMM). Returns z[:C]."""
    out = z[: x_c.shape[0]]
    if x_c.dtype == torch.float32:
        return torch.mm(x_c, w.T, out=out)
    if not out.is_cuda:  # CPU (tests): the exact 16-bit values in an fp32 product
        return torch.mm(x_c.float(), w.T.float(), out=out)
    if _addmm_out_dtype_works(out.device, x_c.dtype, "mm"):
        return torch.mm(x_c, w.T, out_dtype=torch.float32, out=out)
    from bonfast.kernels.logprob_fused import matmul_into
    return matmul_into(out, x_c, w.T)


def accumulate_mm(acc, a, b):
    """acc += a @ b with an fp32 accumulator acc and 16-bit (or fp32) a, b."""
    if acc.dtype == a.dtype:
        acc.addmm_(a, b)
    elif not acc.is_cuda:  # CPU (tests): upcast the chunk
        acc.addmm_(a.float(), b.float())
    elif _addmm_out_dtype_works(acc.device, a.dtype):
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
    else:
        from bonfast.kernels.logprob_fused import matmul_into
        matmul_into(acc, a, b, accumulate=True)


def chunk_backward(x_c, w, y_c, stats_c, ent_c, gl, gh, gs, temperature, z_buf, dz_buf, dx_c, dw32,
                   recompute=True):
    """One chunk of the backward: fp32 logits into z_buf (unless they are there already: recompute=False), dz into
    dz_buf, dX_c = dz W (into dx_c), dW32 += dz^T X_c."""
    C = x_c.shape[0]
    z = logits_into(z_buf, x_c, w) if recompute else z_buf[:C]  # (C, V) fp32
    dz = dz_from_logits(z, dz_buf[:C], y_c, stats_c, ent_c, gl, gh, gs, temperature)
    if dx_c is not None:
        torch.mm(dz, w, out=dx_c)
    if dw32 is not None:
        accumulate_mm(dw32, dz.T, x_c)


# ----------------------------------------------------------------------------------------------------------
# launchers and autograd


def gemm_fwd(x, w, y, temperature, ignore_index, want_entropy, rows):
    """Chunked forward. Returns fp32 (logp [T], entropy [T] or None, lse [T], stats [2, T] = (max, log s))."""
    T, V = x.shape[0], w.shape[0]
    logp = torch.empty(T, dtype=torch.float32, device=x.device)
    lse = torch.empty_like(logp)
    entropy = torch.empty_like(logp) if want_entropy else None
    stats = torch.empty((2, T), dtype=torch.float32, device=x.device)
    buf, _ = chunk_buffers(min(rows, T), V, x.dtype, x.device, with_dz=False)  # (C, V) fp32: the one buffer
    for s in range(0, T, rows):
        e = min(T, s + rows)
        z = logits_into(buf, x[s:e], w)
        part = logit_stats(z, y[s:e], temperature, want_entropy)
        logp[s:e], ent, lse[s:e], stats[:, s:e] = merge_stats(part, y[s:e], V, ignore_index, want_entropy)
        if want_entropy:
            entropy[s:e] = ent
    return logp, entropy, lse, stats


def gemm_bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, temperature, ignore_index, need_dx, need_dw,
             rows):
    """Chunked recomputing backward; g_* are [T] upstream gradients (None = zero). Returns (dX, dW)."""
    T, D = x.shape
    V = w.shape[0]
    gl, gh, gs = grad_vectors(y, V, ignore_index, g_logp, g_entropy, g_lse)
    dx = torch.empty_like(x) if need_dx else None
    dw32 = torch.zeros((V, D), dtype=torch.float32, device=x.device) if need_dw else None
    z_buf, dz_buf = chunk_buffers(min(rows, T), V, x.dtype, x.device, with_dz=True)
    for s in range(0, T, rows):
        e = min(T, s + rows)
        chunk_backward(x[s:e], w, y[s:e], stats[:, s:e], None if gh is None else entropy[s:e], gl[s:e],
                       None if gh is None else gh[s:e], gs[s:e], temperature, z_buf, dz_buf,
                       dx[s:e] if need_dx else None, dw32)
    del z_buf, dz_buf  # free the chunk buffers before dW is cast out of its fp32 accumulator
    return dx, (dw32.to(w.dtype) if need_dw else None)


def linear_logprobs_gemm(x, w, y, *, temperature=1.0, ignore_index=-100, return_entropy=False,
                         memory_budget=None):
    """gemm strategy on validated x [T, D], w [V, D], y [T] int64 -> (logp, entropy, lse), fp32 [T].

    `entropy` is zeros (not differentiable) unless return_entropy; memory_budget: see `chunk_rows`."""
    rows = chunk_rows(x.shape[0], x.shape[1], w.shape[0], x.dtype, memory_budget)
    return strategy_apply(x, w, y, temperature, ignore_index, return_entropy, gemm_fwd, gemm_bwd, rows)


class _GemmBonLossFunction(torch.autograd.Function):
    """Forward = loss + both gradients (dL/dlogp_t = u_t is token-wise, known per chunk); backward scales."""

    @staticmethod
    def forward(ctx, x, w, y, sample_index, weights, temperature, ignore_index, old_logp, ref_logp, clip_eps,
                kl_coef, rows, grad_enabled):
        from bonfast.kernels.bon_loss import bon_loss_fwd
        T, D = x.shape
        V = w.shape[0]
        # needs_input_grad is set under torch.no_grad() too: without grad mode no gradient work is done
        need_dx, need_dw = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        need = need_dx or need_dw
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = torch.empty_like(x) if need_dx else None
        dw32 = torch.zeros((V, D), dtype=torch.float32, device=x.device) if need_dw else None
        z_buf, dz_buf = chunk_buffers(min(rows, T), V, x.dtype, x.device, with_dz=need)
        for s in range(0, T, rows):
            e = min(T, s + rows)
            z = logits_into(z_buf, x[s:e], w)  # (C, V) fp32: the chunk's only logits GEMM
            y_c = y[s:e]
            logp, _, _, stats = merge_stats(logit_stats(z, y_c, temperature, False), y_c, V, ignore_index, False)
            part, u = bon_loss_fwd(logp, sample_index[s:e], weights, None if old_logp is None else old_logp[s:e],
                                   None if ref_logp is None else ref_logp[s:e], clip_eps, kl_coef, store_grad=need)
            total += part
            if need:
                gl = u.float().masked_fill_(bad_targets(y_c, V, ignore_index), math.nan)
                chunk_backward(x[s:e], w, y_c, stats, None, gl, None, torch.zeros_like(gl), temperature, z_buf,
                               dz_buf, dx[s:e] if need_dx else None, dw32, recompute=False)
        del z_buf, dz_buf  # free the chunk buffers before dW is cast out of its fp32 accumulator
        ctx.grads = (dx, None if dw32 is None else dw32.to(w.dtype))
        return total

    @staticmethod
    def backward(ctx, g):
        if ctx.grads is None:
            raise RuntimeError("fused_bon_loss (strategy='gemm') computes its gradients in the forward; they "
                               "were already used by an earlier backward through this graph")
        dx, dw = ctx.grads
        ctx.grads = None  # the gradients are handed out once; their memory goes with them
        dx = None if dx is None else dx.mul_(g.to(dx.dtype))
        dw = None if dw is None else dw.mul_(g.to(dw.dtype))
        return dx, dw, None, None, None, None, None, None, None, None, None, None, None


def fused_bon_loss_sum_gemm(x, w, y, sample_index, weights, *, temperature=1.0, ignore_index=-100, old_logp=None,
                            ref_logp=None, clip_eps=None, kl_coef=0.0, memory_budget=None):
    """Unnormalised fused BoN loss, gemm strategy, on validated inputs (sample_index already -1 on ignored
    targets). Differentiable w.r.t. x and w; a second backward through the same graph raises."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    rows = chunk_rows(x.shape[0], x.shape[1], w.shape[0], x.dtype, memory_budget)
    return _GemmBonLossFunction.apply(x, w, y.contiguous(), sample_index.contiguous(), weights,
                                      float(temperature), int(ignore_index), old_logp, ref_logp, clip_eps,
                                      float(kl_coef), rows, torch.is_grad_enabled())


def compile_cases():
    """Ahead-of-time compile cases, checked by `python -m bonfast.kernels_aot`: the two memory-bound passes over
    a [C, V] chunk (no dot products). The logits are always fp32; dz is stored in each input dtype (fp32: in
    place). C and V are runtime ints (a multiple of 16 or not: an aligned chunk and a ragged last chunk of an
    odd vocabulary); the row strides are always multiples of 64 (`padded_cols`) and every pointer a launcher
    passes starts a row-aligned chunk buffer or a [T] vector at a multiple of 128 rows, so no unaligned-pointer
    variant exists. The stats pass's split count is 1 (a constant) for full chunks and > 1 for short ones.
    16-bit cases must not spill; fp32 spills are recorded."""
    f32, i64 = torch.float32, torch.int64
    cases = []
    for C, V, splits in ((2944, 151936, 1), (777, 50257, 7)):
        ld = padded_cols(V)
        for entropy in (False, True):
            label = f"fp32 logits C={C} V={V} splits={splits}" + (" entropy" if entropy else "")
            blocks = dict(HAS_ENTROPY=entropy, BLOCK_R=_BLOCK_R, BLOCK_V=_BLOCK_V, num_warps=4)
            cases.append(dict(kernel=_logit_stats_kernel, label=label, tensor_cores=False, no_spills=True,
                              args=(f32, i64, f32, C, V, ld, 1.0, triton.cdiv(V, splits * _BLOCK_V) * _BLOCK_V,
                                    splits), constexprs=blocks))
            for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (f32, "fp32")):
                cases.append(dict(kernel=_dz_kernel, label=f"{name} dz C={C} V={V}" + (" entropy" if entropy else ""),
                                  tensor_cores=False, no_spills=dtype != f32,
                                  args=(f32, dtype, i64) + (f32,) * 6 + (C, V, ld, ld, 1.0), constexprs=blocks))
    return cases
