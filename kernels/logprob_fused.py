r"""The "fused" strategy of the log-prob head's backward: memory near the floor, one recompute per logit tile.

Gradients as in `bonfast.kernels.linear_logprobs` (dL/dz from the saved row max and log sum-exp, the three
upstream gradients g^logp, g^H, g^lse; dX = (dL/dz / tau) W, dW = (dL/dz / tau)^T X). The forward is that
module's kernel (2 TDV, O(T) outputs). The backward walks the vocabulary in chunks of Vc columns:

    phase 1  `_fused_dz_kernel`, grid (token tiles x vocabulary tiles of the chunk): recompute the logit tile
             z = X_t W_v^T / tau on the tensor cores (fp32 accumulator over D), turn it into dL/dz on chip and
             store it once, in the input dtype, into a [T, Vc] workspace;
    phase 2  `_mm_kernel`, a tensor-core GEMM whose fp32 accumulator stays on chip over its whole reduction:
             dW[chunk] = dZ^T X   (reduction over all T: the chunk's dW rows are final, written once, in the
                                   weight dtype: no fp32 dW anywhere)
             dX32 += dZ W[chunk]  (reduction over Vc; the fp32 dX tile is read and written once per chunk)
    and dX = dX32 in the input dtype at the end.

Why this shape. A program cannot keep a [BLOCK_T, D] (or [BLOCK_V, D]) fp32 accumulator on chip for D in the
thousands, so a single kernel producing both contributions from one logit tile has to push them through global
memory per tile: fp32 read-modify-writes (what the recomputing kernels of `linear_logprobs` do, once per
vocabulary tile) or atomics (non-deterministic). Writing dz once in 16 bits and reducing it with ordinary GEMM
tiles keeps every fp32 accumulator on chip for a full reduction range, is deterministic (fixed reduction order,
no atomics), and runs all three steps as tensor-core GEMMs. The price is dz traffic (3 T V b bytes) and a
bounded workspace; chunking the vocabulary rather than the tokens makes dW final after each chunk, so the only
fp32 gradient buffer is dX32 (T x D), not a V x D accumulator.

Work: forward 2 TDV + backward 6 TDV (recompute 2, dW 2, dX 2) = 8 TDV, for linear_logprobs and fused_bon_loss
alike (dL/dz needs the full-row lse, so the forward cannot produce gradients without a second logit pass).
HBM traffic of the backward (b = bytes per input element, n = V / Vc chunks, GEMM operands counted once per
pass with L2 reuse by grouped tile order): dz 3 T V b, X 2 n T D b, W 2 V D b, dW V D b, dX32 8 n T D (+ the
final cast). T = 8192, D = 2048, V = 151936, bf16, default Vc = 3840 (n = 40): 7.5 + 2.7 + 1.2 + 0.6 + 5.4 =
~17 GB, ~4.5 ms at 80% of 4.8 TB/s beside 6 TDV = 15.5 ms of tensor-core work: compute-bound.
Extra memory beyond the returned gradients (floor = dX + dW in the input dtypes): dX32 (T D (4 - b) more than
dX) plus the larger of the workspace T Vc b (freed before the final cast) and dX itself during that cast, and
split-K partials only for GEMMs with fewer tiles than SMs (< SMs x 128 x 128 fp32, ~8.6 MB on 132 SMs). Vc
comes from the memory budget (`chunk_cols`); the default is 15% of the floor. At the shape above: 63 MB of
workspace + 34 MB for dX32 = 1.15x the floor (0.66 GB). dX32 is the limit of chunking the vocabulary: for
16-bit inputs the extra is about 4 T D bytes once T D b passes the workspace, so at V = 151936, D = 2048 the
ratio is 1.15x at T = 8192, 1.2x at 16384, 1.35x at 32768 and 1.6x at 65536 (still well below the "gemm"
strategy's 4 V D + C V b).

Grid fill: phase 1 has (T / BLOCK_T) x (Vc / BLOCK_V) programs; a phase-2 GEMM with fewer output tiles than
SMs splits its reduction (K) across programs into an fp32 partial buffer summed once (deterministic).

Predicted, not measured (no GPU was available; roofline with assumed efficiencies: Triton GEMM tiles at 60-65%
of 989 TFLOP/s, the `linear_logprobs` forward kernel at 55%), T = 8192, D = 2048, V = 151936, bf16 on an H200:
forward ~9.4 ms + backward ~24.5 ms (recompute+dz 8.7, dW 7.9, dX 7.9) = ~34 ms -> ~600 TFLOP/s at the 8 TDV
count (540-620 over that efficiency range); the same for fused_bon_loss.

fp32 inputs use exact fp32 products (no TF32); 16-bit tiles feed tl.dot directly with fp32 accumulation.
Under TRITON_INTERPRET=1 bf16 tiles are upcast after loading and each autotuner has one config.
"""
import os

import torch
import triton
import triton.language as tl

from bonfast.kernels._launch import on_device
from bonfast.kernels._strategy_function import apply as strategy_apply
from bonfast.kernels.logprob_gemm import budget_bytes, grad_vectors, num_sms

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(interpret_cfg, cfgs_16bit, cfgs_fp32):
    """Autotune configs: 16-bit tensor-core tiles, then fp32 ones (`_by_dtype` keeps the group of the call)."""
    if _INTERPRET:  # autotuning benchmarks through the driver, which the interpreter does not have
        return [triton.Config(interpret_cfg, num_warps=1)]
    return [triton.Config(c, num_warps=w, num_stages=s) for c, w, s in cfgs_16bit + cfgs_fp32]


def _pruner(n_fp32):
    def _by_dtype(configs, named_args, **kwargs):
        """early_config_prune: 16-bit inputs tune over the tensor-core tiles, fp32 (UPCAST) over the fp32 ones."""
        if len(configs) == 1:
            return configs
        return configs[-n_fp32:] if kwargs.get("UPCAST", named_args.get("UPCAST")) else configs[:-n_fp32]
    return {"early_config_prune": _by_dtype}


# 16-bit tiles (tensor cores); exact fp32 products run on FMA units, so fp32 gets small tiles
_DZ_CFGS = [
    ({"BLOCK_T": 128, "BLOCK_V": 128, "BLOCK_D": 64}, 8, 2),  # 3 stages spilled 264 B on sm_80 (ragged T)
    ({"BLOCK_T": 64, "BLOCK_V": 128, "BLOCK_D": 64}, 8, 4),
    ({"BLOCK_T": 128, "BLOCK_V": 64, "BLOCK_D": 64}, 8, 4),
]
_DZ_FP32_CFGS = [({"BLOCK_T": 32, "BLOCK_V": 64, "BLOCK_D": 32}, 4, 2)]
_MM_CFGS = [
    ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 3),
    ({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64}, 8, 4),
    ({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, 4, 4),
    ({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, 4, 4),
]
# (128 x 256 tiles spilled on sm_90 when the fp32 dX tile is added at the end: not offered)
_MM_FP32_CFGS = [({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16}, 4, 2)]
_DZ_INTERPRET = {"BLOCK_T": 32, "BLOCK_V": 128, "BLOCK_D": 32}
_MM_INTERPRET = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64}
_SPLIT_MIN_K = 512  # a split of a GEMM's reduction covers at least this many K
_MIN_COLS = 256  # smallest vocabulary chunk, whatever the budget
FLOOR_FRACTION = 0.15  # default extra memory of the fused backward, as a fraction of dX + dW


def _bucket(n):
    """Autotune bucket of a size that varies between calls (an int the kernels never read)."""
    return min(triton.next_power_of_2(max(int(n), 1)), 1 << 16)


@triton.autotune(configs=_configs(_DZ_INTERPRET, _DZ_CFGS, _DZ_FP32_CFGS),
                 key=["D", "VC_BUCKET", "T_BUCKET", "HAS_ENTROPY", "UPCAST"], prune_configs_by=_pruner(1))
@triton.jit(do_not_specialize=["VC_BUCKET", "T_BUCKET", "v0"])
def _fused_dz_kernel(
        X_ptr, W_ptr, Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr, DZ_ptr,
        T, VC, D, VC_BUCKET, T_BUCKET, v0, stride_xt, stride_wv, stride_dzt, inv_temp,
        HAS_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, GROUP_T: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    """dZ[t, v] = dL/d(x_t . w_{v0+v}) for one (token tile, vocabulary tile) of the chunk, from a recomputed tile."""
    pid = tl.program_id(0)
    num_t = tl.cdiv(T, BLOCK_T)
    num_v = tl.cdiv(VC, BLOCK_V)
    pid_t, pid_v = tl.swizzle2d(pid // num_v, pid % num_v, num_t, num_v, GROUP_T)
    offs_t = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_v = pid_v.to(tl.int64) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_t = offs_t < T
    mask_v = offs_v < VC
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(X_ptr + offs_t[:, None] * stride_xt + offs_d[None, :], mask=mask_t[:, None] & mask_d[None, :],
                    other=0.0)
        w = tl.load(W_ptr + offs_v[:, None] * stride_wv + offs_d[None, :], mask=mask_v[:, None] & mask_d[None, :],
                    other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    z = acc * inv_temp
    y = tl.load(Y_ptr + offs_t, mask=mask_t, other=-1) - v0  # target column inside this chunk
    m = tl.load(M_ptr + offs_t, mask=mask_t, other=0.0)
    logs = tl.load(LOGS_ptr + offs_t, mask=mask_t, other=0.0)
    g_logp = tl.load(GL_ptr + offs_t, mask=mask_t, other=0.0)
    g_lse = tl.load(GS_ptr + offs_t, mask=mask_t, other=0.0)
    logq = (z - m[:, None]) - logs[:, None]  # log p from (max, log sum-exp): lse itself is rounded at |z|
    p = tl.where(mask_v[None, :], tl.exp(logq), 0.0)
    dz = p * (g_lse - g_logp)[:, None]
    if HAS_ENTROPY:
        ent = tl.load(ENT_ptr + offs_t, mask=mask_t, other=0.0)
        g_ent = tl.load(GH_ptr + offs_t, mask=mask_t, other=0.0)
        dz -= g_ent[:, None] * p * (logq + ent[:, None])
    dz += tl.where(offs_v[None, :] == y[:, None], g_logp[:, None], 0.0)
    tl.store(DZ_ptr + offs_t[:, None] * stride_dzt + offs_v[None, :], (dz * inv_temp).to(DZ_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_v[None, :])


_C_SAVED: dict = {}  # the copy of C the autotuner's trial launches of an accumulating GEMM restore


def _save_c(nargs, reset_only=False):
    """Autotuner pre-hook of `_mm_kernel`: keep one copy of C per tuning, and only when the trial launches read
    it (ACCUMULATE without SPLIT_K). Triton's restore_value=["C_ptr"] cloned C before every trial launch even
    when C is only written (a 1.2 GB clone per launch for the fp32 dW accumulator at V = 151936, D = 2048)."""
    if reset_only:  # tuning is over: drop the copy
        _C_SAVED.clear()
    elif nargs.get("ACCUMULATE") and not nargs.get("SPLIT_K") and "c" not in _C_SAVED:
        _C_SAVED["c"] = nargs["C_ptr"].clone()


def _restore_c(nargs, exception=None):
    """Autotuner post-hook of `_mm_kernel`: undo a trial launch's accumulation into C."""
    saved = _C_SAVED.get("c")
    if saved is not None:
        nargs["C_ptr"].copy_(saved)


@triton.autotune(configs=_configs(_MM_INTERPRET, _MM_CFGS, _MM_FP32_CFGS),
                 key=["N", "M_BUCKET", "K_BUCKET", "SPLIT_K", "UPCAST"], pre_hook=_save_c, post_hook=_restore_c,
                 prune_configs_by=_pruner(1))
@triton.jit(do_not_specialize=["M_BUCKET", "K_BUCKET"])
def _mm_kernel(
        A_ptr, B_ptr, C_ptr, P_ptr, M, N, K, M_BUCKET, K_BUCKET, stride_am, stride_ak, stride_bk, stride_bn,
        stride_cm, k_per_split,
        ACCUMULATE: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
        GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C (+)= A @ B over one output tile and one K range, fp32 accumulator on chip for the whole range.

    SPLIT_K: write the fp32 partial to P[split] (reduced by the host); else store C once (adding C if ACCUMULATE)."""
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = tl.swizzle2d(pid // num_n, pid % num_n, num_m, num_n, GROUP_M)
    offs_m = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_lo = pid_k.to(tl.int64) * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        a = tl.load(A_ptr + offs_m[:, None] * stride_am + offs_k[None, :] * stride_ak,
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        b = tl.load(B_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT_K:
        tl.store(P_ptr + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)
    else:
        c_ptrs = C_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        if ACCUMULATE:
            acc += tl.load(c_ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(c_ptrs, acc.to(C_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------------------
# launchers


def kernel_flags(dtype):
    upcast = dtype == torch.float32 or (_INTERPRET and dtype == torch.bfloat16)
    return upcast, "ieee"  # fp32 tiles: exact fp32 products (no TF32); 16-bit tiles ignore the precision flag


def _split_k(M, N, K, device):
    """Reduction splits of a GEMM: enough programs for every SM when the output has fewer 128 x 128 tiles."""
    tiles = triton.cdiv(M, 128) * triton.cdiv(N, 128)
    sms = num_sms(device)
    if tiles >= sms:
        return 1
    return max(1, min(triton.cdiv(sms, tiles), K // _SPLIT_MIN_K))


def matmul_into(c, a, b, *, accumulate=False):
    """c = a @ b (c += a @ b if accumulate), fp32 accumulation; a [M, K], b [K, N] any strides, c row-major."""
    M, K = a.shape
    N = b.shape[1]
    assert c.stride(1) == 1 and c.shape == (M, N), "c must be row-major [M, N]"
    if M == 0 or N == 0:
        return c
    splits = _split_k(M, N, K, c.device)
    k_per_split = triton.cdiv(K, splits)
    part = torch.empty((splits, M, N), dtype=torch.float32, device=c.device) if splits > 1 else c
    upcast, precision = kernel_flags(a.dtype)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), splits)  # noqa: E731
    with on_device(c):
        _mm_kernel[grid](a, b, c, part, M, N, K, _bucket(M), _bucket(K), a.stride(0), a.stride(1), b.stride(0),
                         b.stride(1), c.stride(0), k_per_split, ACCUMULATE=accumulate, SPLIT_K=splits > 1,
                         UPCAST=upcast, PRECISION=precision, GROUP_M=8)
    if splits > 1:  # one deterministic reduction of the partials
        total = part.sum(0)
        if accumulate:
            total += c
        c.copy_(total)
    return c


def fused_extra_bytes(T, D, V, dtype, cols):
    """Extra memory of the fused backward with vocabulary chunks of `cols`: workspace + dX32 beyond dX."""
    item = torch.finfo(dtype).bits // 8
    return T * cols * item + T * D * (4 - item)


def chunk_cols(T, D, V, dtype, memory_budget=None):
    """Vocabulary entries per chunk: the most whose [T, cols] dz workspace fits the budget beside dX32, a
    multiple of 128, at least _MIN_COLS (the budget may then be exceeded), at most V. Budget: the argument,
    else env BONFAST_LOGPROB_MEMORY, else FLOOR_FRACTION of the gradients' own size (dX + dW)."""
    item = torch.finfo(dtype).bits // 8
    floor = (T + V) * D * item
    free = budget_bytes(memory_budget, int(FLOOR_FRACTION * floor)) - fused_extra_bytes(T, D, V, dtype, 0)
    cols = max(_MIN_COLS, free // (max(T, 1) * (torch.finfo(dtype).bits // 8)) // 128 * 128)
    return int(min(V, cols))


def fused_bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, temperature, ignore_index, need_dx, need_dw,
              memory_budget=None):
    """The fused backward; g_* are [T] upstream gradients (None = zero). Returns (dX, dW)."""
    T, D = x.shape
    V = w.shape[0]
    gl, gh, gs = grad_vectors(y, V, ignore_index, g_logp, g_entropy, g_lse)
    cols = chunk_cols(T, D, V, x.dtype, memory_budget)
    # (T, Vc) dz workspace; rows padded to a multiple of 64 elements so its stride is always 16-byte aligned
    ws = torch.empty((T, triton.cdiv(cols, 64) * 64), dtype=x.dtype, device=x.device)[:, :cols]
    dx32 = torch.empty((T, D), dtype=torch.float32, device=x.device) if need_dx else None
    dw = torch.empty_like(w) if need_dw else None
    upcast, precision = kernel_flags(x.dtype)
    has_entropy = gh is not None
    for v0 in range(0, V, cols):
        vc = min(cols, V - v0)
        w_c = w[v0:v0 + vc]
        dz = ws[:, :vc]
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]) * triton.cdiv(vc, meta["BLOCK_V"]),)  # noqa: E731
        with on_device(x):
            _fused_dz_kernel[grid](
                x, w_c, y, stats[0], stats[1], entropy if has_entropy else gl, gl, gh if has_entropy else gl, gs,
                dz, T, vc, D, _bucket(vc), _bucket(T), v0, x.stride(0), w.stride(0), ws.stride(0),
                1.0 / temperature, HAS_ENTROPY=has_entropy, UPCAST=upcast, PRECISION=precision, GROUP_T=8)
        if need_dw:
            matmul_into(dw[v0:v0 + vc], dz.T, x)  # final rows of dW: reduction over all T on chip
        if need_dx:
            matmul_into(dx32, dz, w_c, accumulate=v0 > 0)
    del ws, dz  # free the workspace before dX is cast out of dX32
    return (dx32.to(x.dtype) if need_dx else None), dw


def _fused_fwd(x, w, y, temperature, ignore_index, want_entropy, memory_budget):
    from bonfast.kernels.linear_logprobs import linear_logprobs_fwd
    return linear_logprobs_fwd(x, w, y, temperature, ignore_index, want_entropy)


def linear_logprobs_fused(x, w, y, *, temperature=1.0, ignore_index=-100, return_entropy=False,
                          memory_budget=None):
    """fused strategy on validated x [T, D], w [V, D], y [T] int64 -> (logp, entropy, lse), fp32 [T].

    `entropy` is zeros (not differentiable) unless return_entropy; memory_budget: see `chunk_cols`."""
    return strategy_apply(x, w, y, temperature, ignore_index, return_entropy, _fused_fwd, fused_bwd, memory_budget)


class _FusedBonLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, y, sample_index, weights, temperature, ignore_index, old_logp, ref_logp, clip_eps,
                kl_coef, memory_budget):
        from bonfast.kernels.bon_loss import bon_loss_fwd
        from bonfast.kernels.linear_logprobs import linear_logprobs_fwd
        logp, _, _, stats = linear_logprobs_fwd(x, w, y, temperature, ignore_index, False)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total, u = bon_loss_fwd(logp, sample_index, weights, old_logp, ref_logp, clip_eps, kl_coef,
                                store_grad=need_grad)
        ctx.save_for_backward(x, w, y, stats, u)
        ctx.temperature, ctx.ignore_index, ctx.memory_budget = temperature, ignore_index, memory_budget
        return total.float()

    @staticmethod
    def backward(ctx, g):
        x, w, y, stats, u = ctx.saved_tensors
        dx, dw = fused_bwd(x, w, y, stats, None, g * u, None, None, ctx.temperature, ctx.ignore_index,
                           ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.memory_budget)
        return dx, dw, None, None, None, None, None, None, None, None, None, None


def fused_bon_loss_sum_fused(x, w, y, sample_index, weights, *, temperature=1.0, ignore_index=-100,
                             old_logp=None, ref_logp=None, clip_eps=None, kl_coef=0.0, memory_budget=None):
    """Unnormalised fused BoN loss, fused strategy, on validated inputs (sample_index already -1 on ignored
    targets). Differentiable w.r.t. x and w."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    return _FusedBonLossFunction.apply(x, w, y.contiguous(), sample_index.contiguous(), weights,
                                       float(temperature), int(ignore_index), old_logp, ref_logp, clip_eps,
                                       float(kl_coef), memory_budget)


def compile_cases():
    """Ahead-of-time compile cases, checked by `python -m bonfast.kernels_aot` (sm_80 and sm_90, no GPU).

    Sizes are runtime ints (only 1 and multiples of 16 change the compiled code): an aligned shape (T = 4096,
    D = 4096, Vc = 3840) and a ragged one (T = 777, D = 896, Vc = 1000; the workspace stride is padded to
    1024). The GEMM is compiled as it is launched: dW (dz transposed: unit stride on M; output in the input
    dtype), dX (fp32 accumulate) and a split-K partial. bf16 compiles every config and must use tensor cores
    without spills; fp16 one config; fp32 (exact products on FMA) its own small tiles, spills recorded. At the
    ragged T the log-sum-exp row stats[1] of the [2, T] stats starts off a 16-byte boundary (T % 4 != 0).
    """
    f32, i64 = torch.float32, torch.int64
    cases = []
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (f32, "fp32")):
        flags = dict(UPCAST=dtype == f32, PRECISION="ieee")
        sixteen = dtype != f32
        for T, D, VC in ((4096, 4096, 3840), (777, 896, 1000)):
            if T != 4096 and dtype != torch.bfloat16:
                continue
            ld = triton.cdiv(VC, 64) * 64  # the workspace's padded row stride
            every = None if dtype != torch.float16 else [0]
            for entropy in (False, True):
                if entropy and T != 4096:
                    continue
                cases.append(dict(
                    kernel=_fused_dz_kernel, label=f"{name} T={T} D={D} Vc={VC}" + (" entropy" if entropy else ""),
                    args=(dtype, dtype, i64, f32, f32 if T % 4 == 0 else (f32, "unaligned")) + (f32,) * 4  # stats[1]
                    + (dtype, T, VC, D, _bucket(VC), _bucket(T), VC, D, D, ld, 1.0),
                    constexprs=dict(flags, HAS_ENTROPY=entropy, GROUP_T=8), configs=every, tensor_cores=sixteen,
                    no_spills=sixteen))
            for what, out, m, k, strides, acc, split in (
                    ("dW", dtype, VC, T, (1, ld, D, 1, D), False, False),
                    ("dX", f32, T, VC, (ld, 1, D, 1, D), True, False),
                    ("dX split-K", f32, T, VC, (ld, 1, D, 1, D), True, True)):
                if split and T != 4096:
                    continue
                cases.append(dict(
                    kernel=_mm_kernel, label=f"{name} {what} M={m} N={D} K={k}",
                    args=(dtype, dtype, out, f32, m, D, k, _bucket(m), _bucket(k)) + strides + (k,),
                    constexprs=dict(flags, ACCUMULATE=acc, SPLIT_K=split, GROUP_M=8), configs=every,
                    tensor_cores=sixteen, no_spills=sixteen))
    return cases
