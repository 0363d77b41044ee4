r"""Fused linear + log-softmax + gather: per-token log-probs (and entropy, lse) without the [T, V] logits.

Forward, with z_{tv} = x_t . w_v / tau (tau = temperature), accumulated in fp32 tile by tile:

    lse_t  = log sum_v exp(z_tv)                    (online max / sum-exp over vocabulary tiles)
    logp_t = z_{t, y_t} - lse_t                     (target logit picked from the same tile, so logp <= 0)
    H_t    = lse_t - sum_v softmax(z_t)_v z_tv      (= log s - a / s with s = sum e^{z-m}, a = sum e^{z-m}(z-m))

The vocabulary is split across programs (`num_splits`); each (token tile, split) program writes its partial
(m, s, a, z_y) and a tiny O(splits * T) merge gives lse, logp, H. Programs are ordered in groups of GROUP_T
token tiles per vocabulary split, so weight tiles read by one program are reused from L2 by its neighbours.

Backward, for upstream gradients g^logp, g^H, g^lse (rows with y_t = ignore_index get none):

    dL/dz_tv = g^logp_t (1[v = y_t] - p_tv) - g^H_t p_tv (log p_tv + H_t) + g^lse_t p_tv,   p = softmax(z_t)
    dX = (dL/dz / tau) W,    dW = (dL/dz / tau)^T X

Two deterministic kernels (no atomics) recompute the logit tiles: one over token tiles looping over the
vocabulary (dX), one over vocabulary tiles looping over tokens (dW); each accumulates into the fp32 rows it owns.
Cost: 2TDV forward, 8TDV backward; extra memory: fp32 dX / dW accumulators and O(splits * T).

fp32 inputs use exact fp32 products (no TF32); 16-bit tiles feed tl.dot directly with fp32 accumulation. Under
TRITON_INTERPRET=1 (CPU tests) bf16 tiles are upcast to fp32 right after loading (bf16 arithmetic is broken in the
interpreter; fp16 is not, so fp16 tests run the 16-bit path) and one large-block config is used.

A target outside [0, V) that is not ignore_index gives logp = NaN for its row (never a plausible number such as
-lse), and NaN gradients through that row; entropy and lse do not depend on the target and stay finite. The
check runs on the device (no host sync). Offsets into X, W, dX and dW are int64 (T * D or V * D may pass 2^31).
The autotuner keys on (D, V, a power-of-two bucket of T, HAS_ENTROPY), so the config chosen at one T is not
reused at a very different T.
"""
import os

import torch
import triton
import triton.language as tl

from bonfast.kernels._launch import on_device
from bonfast.kernels.logprob_gemm import grad_vectors, merge_stats

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(cfgs_16bit):
    """Autotune configs: the 16-bit tensor-core tiles, then the fp32 ones (`_by_dtype` keeps one group)."""
    if _INTERPRET:  # autotuning benchmarks through the driver, which the interpreter does not have
        return [triton.Config(_INTERPRET_CFG, num_warps=1)]
    return [triton.Config(c, num_warps=w, num_stages=s) for c, w, s in cfgs_16bit + _FP32_CFGS]


def _by_dtype(configs, named_args, **kwargs):
    """early_config_prune: 16-bit inputs tune over the tensor-core tiles, fp32 (UPCAST) over the small fp32 ones."""
    if len(configs) == 1:
        return configs
    n32 = len(_FP32_CFGS)
    return configs[-n32:] if kwargs.get("UPCAST", named_args.get("UPCAST")) else configs[:-n32]


# 16-bit tiles, checked spill-free on sm_80 / sm_90 by the ahead-of-time compile check (benches/README.md). The
# backward kernels keep a logit tile, its gradient, a W (or X) tile and the dX (dW) rows live at once: the
# tiles below stay under ~200 of the 255 registers a thread may have; 64-wide D steps, 128 x 128 logit tiles or
# 4 warps spilled 8-168 bytes on sm_80 (some with entropy on sm_90 too).
_FWD_CFGS = [
    ({"BLOCK_T": 64, "BLOCK_V": 128, "BLOCK_D": 64}, 4, 3),
    ({"BLOCK_T": 128, "BLOCK_V": 128, "BLOCK_D": 64}, 8, 3),
    ({"BLOCK_T": 128, "BLOCK_V": 64, "BLOCK_D": 64}, 4, 4),
    ({"BLOCK_T": 64, "BLOCK_V": 256, "BLOCK_D": 32}, 8, 3),
]
_BWD_CFGS = [
    ({"BLOCK_T": 64, "BLOCK_V": 128, "BLOCK_D": 32}, 8, 3),
    ({"BLOCK_T": 128, "BLOCK_V": 64, "BLOCK_D": 32}, 8, 3),
    ({"BLOCK_T": 64, "BLOCK_V": 128, "BLOCK_D": 32}, 8, 4),
    ({"BLOCK_T": 128, "BLOCK_V": 64, "BLOCK_D": 32}, 8, 4),
]
# exact fp32 products run on FMA units: small tiles (large ones spilled kilobytes and took ptxas ~40 s each)
_FP32_CFGS = [
    ({"BLOCK_T": 32, "BLOCK_V": 64, "BLOCK_D": 32}, 4, 2),
    ({"BLOCK_T": 64, "BLOCK_V": 64, "BLOCK_D": 16}, 8, 2),
]
_INTERPRET_CFG = {"BLOCK_T": 16, "BLOCK_V": 128, "BLOCK_D": 32}
_KEY = ["D", "V", "T_BUCKET", "HAS_ENTROPY"]
_T_BUCKET_CAP = 1 << 16  # beyond ~64k tokens the token tiles fill any GPU many times over: one bucket


def _t_bucket(T):
    """The autotune bucket of T: the next power of two, capped (an int argument the kernels never read)."""
    return min(triton.next_power_of_2(max(T, 1)), _T_BUCKET_CAP)


@triton.jit
def _logit_tile(X_ptr, W_ptr, offs_t, offs_v, mask_t, mask_v, D, stride_xt, stride_xd, stride_wv, stride_wd,
                inv_temp, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """z = X[offs_t] @ W[offs_v].T * inv_temp in fp32, shape (BLOCK_T, BLOCK_V)."""
    acc = tl.zeros((BLOCK_T, BLOCK_V), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        x = tl.load(X_ptr + offs_t[:, None] * stride_xt + offs_d[None, :] * stride_xd,
                    mask=mask_t[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(W_ptr + offs_v[:, None] * stride_wv + offs_d[None, :] * stride_wd,
                    mask=mask_v[:, None] & mask_d[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    return acc * inv_temp


@triton.autotune(configs=_configs(_FWD_CFGS), key=_KEY, prune_configs_by={"early_config_prune": _by_dtype})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _linear_logprobs_fwd_kernel(
        X_ptr, W_ptr, Y_ptr, M_ptr, S_ptr, A_ptr, ZY_ptr,
        T, V, D, T_BUCKET, stride_xt, stride_xd, stride_wv, stride_wd, inv_temp, num_splits,
        HAS_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, GROUP_T: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    # grouped order: GROUP_T consecutive token tiles walk the same vocabulary split together
    pid = tl.program_id(0).to(tl.int64)
    num_t_tiles = tl.cdiv(T, BLOCK_T)
    per_group = GROUP_T * num_splits
    first_t = (pid // per_group) * GROUP_T
    group_size = tl.minimum(num_t_tiles - first_t, GROUP_T)
    pid_t = first_t + (pid % per_group) % group_size
    pid_v = (pid % per_group) // group_size

    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    y = tl.load(Y_ptr + offs_t, mask=mask_t, other=-1)
    v_per_split = tl.cdiv(tl.cdiv(V, num_splits), BLOCK_V) * BLOCK_V
    v_lo = pid_v * v_per_split
    v_hi = tl.minimum(V, v_lo + v_per_split)

    m = tl.full((BLOCK_T,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_T,), dtype=tl.float32)
    a = tl.zeros((BLOCK_T,), dtype=tl.float32)
    zy = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for v0 in range(v_lo, v_hi, BLOCK_V):
        offs_v = v0 + tl.arange(0, BLOCK_V)
        mask_v = offs_v < v_hi
        z = _logit_tile(X_ptr, W_ptr, offs_t, offs_v, mask_t, mask_v, D, stride_xt, stride_xd, stride_wv,
                        stride_wd, inv_temp, BLOCK_T, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
        zy += tl.sum(tl.where(offs_v[None, :] == y[:, None], z, 0.0), axis=1)
        z = tl.where(mask_v[None, :], z, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])  # masked lanes: exp(-inf) = 0
        if HAS_ENTROPY:
            # a = sum e^{z-m} (z-m), re-centred on the new max; s == 0 only before the first tile
            a = alpha * (a + s * tl.where(s > 0, m - m_new, 0.0))
            a += tl.sum(e * tl.where(mask_v[None, :], z - m_new[:, None], 0.0), axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        m = m_new

    out = pid_v * T + offs_t
    tl.store(M_ptr + out, m, mask=mask_t)
    tl.store(S_ptr + out, s, mask=mask_t)
    tl.store(ZY_ptr + out, zy, mask=mask_t)
    if HAS_ENTROPY:
        tl.store(A_ptr + out, a, mask=mask_t)


@triton.jit
def _row_stats(Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr, offs_t, mask_t, HAS_ENTROPY: tl.constexpr):
    """Per-token forward statistics and upstream gradients of a token tile, for the backward kernels."""
    y = tl.load(Y_ptr + offs_t, mask=mask_t, other=-1)
    m = tl.load(M_ptr + offs_t, mask=mask_t, other=0.0)
    logs = tl.load(LOGS_ptr + offs_t, mask=mask_t, other=0.0)
    g_logp = tl.load(GL_ptr + offs_t, mask=mask_t, other=0.0)
    g_lse = tl.load(GS_ptr + offs_t, mask=mask_t, other=0.0)
    ent = g_lse  # placeholders, unused without entropy
    g_ent = g_lse
    if HAS_ENTROPY:
        ent = tl.load(ENT_ptr + offs_t, mask=mask_t, other=0.0)
        g_ent = tl.load(GH_ptr + offs_t, mask=mask_t, other=0.0)
    return y, m, logs, ent, g_logp, g_ent, g_lse


@triton.jit
def _dlogits_tile(z, offs_v, mask_v, y, m, logs, ent, g_logp, g_ent, g_lse, inv_temp,
                  HAS_ENTROPY: tl.constexpr):
    """dL/d(x.w) for a (BLOCK_T, BLOCK_V) tile of scaled logits z; zero on masked vocabulary lanes.

    log p = (z - m) - log s, not z - lse: lse is rounded at the magnitude of the logits."""
    logq = (z - m[:, None]) - logs[:, None]
    p = tl.where(mask_v[None, :], tl.exp(logq), 0.0)
    dz = p * (g_lse - g_logp)[:, None]
    if HAS_ENTROPY:
        dz -= g_ent[:, None] * p * (logq + ent[:, None])
    dz += tl.where(offs_v[None, :] == y[:, None], g_logp[:, None], 0.0)
    return dz * inv_temp


@triton.autotune(configs=_configs(_BWD_CFGS), key=_KEY, reset_to_zero=["DX_ptr"],
                 prune_configs_by={"early_config_prune": _by_dtype})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _linear_logprobs_bwd_dx_kernel(
        X_ptr, W_ptr, Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr, DX_ptr,
        T, V, D, T_BUCKET, stride_xt, stride_xd, stride_wv, stride_wd, stride_dxt, inv_temp,
        HAS_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per token tile; every program walks the vocabulary in the same order (W tiles shared in L2)
    pid_t = tl.program_id(0).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < T
    y, m, logs, ent, g_logp, g_ent, g_lse = _row_stats(Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr,
                                                       offs_t, mask_t, HAS_ENTROPY)
    for v0 in range(0, V, BLOCK_V):
        offs_v = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)  # offs_v * stride_wv may pass 2^31
        mask_v = offs_v < V
        z = _logit_tile(X_ptr, W_ptr, offs_t, offs_v, mask_t, mask_v, D, stride_xt, stride_xd, stride_wv,
                        stride_wd, inv_temp, BLOCK_T, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
        dz = _dlogits_tile(z, offs_v, mask_v, y, m, logs, ent, g_logp, g_ent, g_lse, inv_temp, HAS_ENTROPY)
        if not UPCAST:
            dz = dz.to(W_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            w = tl.load(W_ptr + offs_v[:, None] * stride_wv + offs_d[None, :] * stride_wd,
                        mask=mask_v[:, None] & mask_d[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            dx_ptrs = DX_ptr + offs_t[:, None] * stride_dxt + offs_d[None, :]
            dx_mask = mask_t[:, None] & mask_d[None, :]
            dx = tl.load(dx_ptrs, mask=dx_mask, other=0.0)  # fp32 rows owned by this program
            dx = tl.dot(dz, w, dx, input_precision=PRECISION)
            tl.store(dx_ptrs, dx, mask=dx_mask)


@triton.autotune(configs=_configs(_BWD_CFGS), key=_KEY, reset_to_zero=["DW_ptr"],
                 prune_configs_by={"early_config_prune": _by_dtype})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _linear_logprobs_bwd_dw_kernel(
        X_ptr, W_ptr, Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr, GS_ptr, DW_ptr,
        T, V, D, T_BUCKET, stride_xt, stride_xd, stride_wv, stride_wd, stride_dwv, inv_temp,
        HAS_ENTROPY: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr):
    # one program per vocabulary tile; every program walks the tokens in the same order (X tiles shared in L2)
    pid_v = tl.program_id(0).to(tl.int64)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    mask_v = offs_v < V
    for t0 in range(0, T, BLOCK_T):
        offs_t = (t0 + tl.arange(0, BLOCK_T)).to(tl.int64)  # offs_t * stride_xt may pass 2^31
        mask_t = offs_t < T
        y, m, logs, ent, g_logp, g_ent, g_lse = _row_stats(Y_ptr, M_ptr, LOGS_ptr, ENT_ptr, GL_ptr, GH_ptr,
                                                           GS_ptr, offs_t, mask_t, HAS_ENTROPY)
        z = _logit_tile(X_ptr, W_ptr, offs_t, offs_v, mask_t, mask_v, D, stride_xt, stride_xd, stride_wv,
                        stride_wd, inv_temp, BLOCK_T, BLOCK_V, BLOCK_D, UPCAST, PRECISION)
        dz = _dlogits_tile(z, offs_v, mask_v, y, m, logs, ent, g_logp, g_ent, g_lse, inv_temp, HAS_ENTROPY)
        if not UPCAST:
            dz = dz.to(X_ptr.dtype.element_ty)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            x = tl.load(X_ptr + offs_t[:, None] * stride_xt + offs_d[None, :] * stride_xd,
                        mask=mask_t[:, None] & mask_d[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
            dw_ptrs = DW_ptr + offs_v[:, None] * stride_dwv + offs_d[None, :]
            dw_mask = mask_v[:, None] & mask_d[None, :]
            dw = tl.load(dw_ptrs, mask=dw_mask, other=0.0)  # fp32 rows owned by this program
            dw = tl.dot(tl.trans(dz), x, dw, input_precision=PRECISION)
            tl.store(dw_ptrs, dw, mask=dw_mask)


# ----------------------------------------------------------------------------------------------------------
# launchers


def _kernel_flags(x):
    upcast = x.dtype == torch.float32 or (_INTERPRET and x.dtype == torch.bfloat16)
    return upcast, "ieee"  # fp32 tiles: exact fp32 products (no TF32); 16-bit tiles ignore the precision flag


def _num_splits(T, V, device):
    """Vocabulary splits: enough (token tile, split) programs to fill the GPU twice over."""
    if _INTERPRET or device.type != "cuda":
        return 2 if V > 2 * _INTERPRET_CFG["BLOCK_V"] else 1  # two splits exercise the merge in tests
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    t_tiles = triton.cdiv(T, 128)
    return max(1, min(triton.cdiv(2 * sms, t_tiles), triton.cdiv(V, 4096)))


def linear_logprobs_fwd(x, w, y, temperature, ignore_index, want_entropy):
    """Launch the forward. Returns fp32 (logp [T], entropy [T] or None, lse [T], stats [2, T]).

    Ignored rows give 0 in logp, entropy and lse; a target outside [0, V) (not ignore_index) gives NaN logp;
    stats = (row max, log sum-exp around it) for the backward.
    """
    T, D = x.shape
    V = w.shape[0]
    splits = _num_splits(T, V, x.device)
    part = torch.empty((4 if want_entropy else 3, splits, T), dtype=torch.float32, device=x.device)
    m, s, zy = part[0], part[1], part[2]
    a = part[3] if want_entropy else s
    upcast, precision = _kernel_flags(x)
    grid = lambda meta: (triton.cdiv(T, meta["BLOCK_T"]) * splits,)  # noqa: E731
    with on_device(x):
        _linear_logprobs_fwd_kernel[grid](
            x, w, y, m, s, a, zy, T, V, D, _t_bucket(T), x.stride(0), x.stride(1), w.stride(0), w.stride(1),
            1.0 / temperature, splits, HAS_ENTROPY=want_entropy, UPCAST=upcast, PRECISION=precision, GROUP_T=8)
    return merge_stats(part, y, V, ignore_index, want_entropy)  # O(splits * T) merge of the partials


def linear_logprobs_bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, temperature, ignore_index,
                        need_dx=True, need_dw=True):
    """Launch the backward kernels. g_* are [T] upstream gradients (None = zero). Returns (dX, dW)."""
    T, D = x.shape
    V = w.shape[0]
    gl, gh, gs = grad_vectors(y, V, ignore_index, g_logp, g_entropy, g_lse)  # bad targets: NaN gradients
    has_entropy = gh is not None
    zeros = torch.zeros(T, dtype=torch.float32, device=x.device)
    gh = gh if has_entropy else zeros
    ent = entropy if has_entropy else zeros
    upcast, precision = _kernel_flags(x)
    args = (x, w, y, stats[0], stats[1], ent, gl, gh, gs)
    dims = (T, V, D, _t_bucket(T), x.stride(0), x.stride(1), w.stride(0), w.stride(1))
    flags = dict(HAS_ENTROPY=has_entropy, UPCAST=upcast, PRECISION=precision)
    dx = dw = None
    if need_dx:
        dx32 = torch.zeros((T, D), dtype=torch.float32, device=x.device)
        with on_device(x):
            _linear_logprobs_bwd_dx_kernel[lambda meta: (triton.cdiv(T, meta["BLOCK_T"]),)](
                *args, dx32, *dims, dx32.stride(0), 1.0 / temperature, **flags)
        dx = dx32.to(x.dtype)
    if need_dw:
        dw32 = torch.zeros((V, D), dtype=torch.float32, device=x.device)
        with on_device(x):
            _linear_logprobs_bwd_dw_kernel[lambda meta: (triton.cdiv(V, meta["BLOCK_V"]),)](
                *args, dw32, *dims, dw32.stride(0), 1.0 / temperature, **flags)
        dw = dw32.to(w.dtype)
    return dx, dw


class _LinearLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, y, temperature, ignore_index, want_entropy):
        logp, entropy, lse, stats = linear_logprobs_fwd(x, w, y, temperature, ignore_index, want_entropy)
        if entropy is None:
            entropy = torch.zeros_like(logp)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(x, w, y, stats, entropy)
        ctx.temperature, ctx.ignore_index = temperature, ignore_index
        ctx.set_materialize_grads(False)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, g_logp, g_entropy, g_lse):
        x, w, y, stats, entropy = ctx.saved_tensors
        dx, dw = linear_logprobs_bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, ctx.temperature,
                                     ctx.ignore_index, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dx, dw, None, None, None, None


def linear_logprobs(x, w, y, *, temperature=1.0, ignore_index=-100, return_entropy=False):
    """Triton path on validated inputs x [T, D], w [V, D], y [T] int64 -> (logp, entropy, lse), fp32 [T].

    `entropy` is zeros (and not differentiable) unless return_entropy. Validation lives in `bonfast.ops`.
    """
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    return _LinearLogprobsFunction.apply(x, w, y.contiguous(), float(temperature), int(ignore_index),
                                         bool(return_entropy))




def compile_cases():
    """Ahead-of-time compile cases, checked by `python -m bonfast.kernels_aot` (a test runs it).

    T, V, D are runtime ints: the compiled code depends only on whether they equal 1 or are multiples of 16
    (and unit strides become constants), not on their size. So one aligned shape (T = 4096, D = 4096,
    V = 128256; the D = 896..8192 and V = 32k..256k of real models are multiples of 16) stands for every
    model, a ragged one (T = 777, D = 896, V = 50257) for unaligned token counts and vocabularies, and T = 1
    for a single token. bf16, the CUDA compute dtype, compiles every autotune config of every kernel and must
    not spill; fp16 tiles have bf16's size and layout (only the MMA type differs): one config per kernel; fp32
    (exact fp32 products on FMA units) is recorded. The ragged and T = 1 shapes also have unaligned [T] vectors
    (rows 1.. of the [3 or 4, splits, T] partials and of the [2, T] stats start at a multiple of T * 4 bytes).
    Only the second fp32 config runs with `--full` only.
    """
    f32, i64 = torch.float32, torch.int64
    shapes = ((4096, 128256, 4096), (777, 50257, 896), (1, 151936, 896))
    cases = []
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (f32, "fp32")):
        for T, V, D in shapes:
            for entropy in (False, True):
                aligned = T == 4096
                if not aligned and (entropy or dtype != torch.bfloat16):
                    continue
                head, dims = (dtype, dtype, i64), (T, V, D, _t_bucket(T), D, 1, D, 1)
                vec = f32 if aligned else (f32, "unaligned")  # the [T] rows after the first of a [k, T] buffer
                flags = dict(HAS_ENTROPY=entropy, UPCAST=dtype == f32, PRECISION="ieee")
                for kernel, args, extra in (
                        (_linear_logprobs_fwd_kernel, head + (f32,) + (vec,) * 3 + dims + (1.0, 9), dict(GROUP_T=8)),
                        (_linear_logprobs_bwd_dx_kernel, head + (f32, vec) + (f32,) * 5 + dims + (D, 1.0), {}),
                        (_linear_logprobs_bwd_dw_kernel, head + (f32, vec) + (f32,) * 5 + dims + (D, 1.0), {})):
                    base = dict(kernel=kernel, label=f"{name} T={T} D={D} V={V}" + (" entropy" if entropy else ""),
                                args=args, constexprs=dict(flags, **extra), tensor_cores=dtype != f32,
                                no_spills=dtype != f32)
                    if dtype == torch.bfloat16:
                        cases.append(dict(base, configs=None if aligned else [0]))
                    elif dtype == f32:
                        cases += [dict(base, configs=[0], full=False), dict(base, configs=[1], full=True)]
                    else:
                        cases.append(dict(base, configs=[0]))
    return cases
