"""Shared-prefix decode attention: one prompt prefix, n samples, one decode step.

For prompt g, sample s and query head h (kv head c = h // (Hq / Hkv)), with q = q[g, s, h] and the keys
of the prompt prefix K1 = prefix_k[g, c, :prefix_lens[g]] and of the sample's own suffix
K2 = suffix_k[g, s, c, :suffix_lens[g, s]] (values V1, V2 likewise), the output equals plain attention
over the concatenated keys:

    out[g, s, h] = softmax(scale * q @ [K1; K2].T) @ [V1; V2]

computed as two partial attentions merged by their log-sum-exp:

    s_i = logsumexp(scale * q @ K_i.T),   o_i = softmax(scale * q @ K_i.T) @ V_i        (i = 1, 2)
    out = (e^{s_1} o_1 + e^{s_2} o_2) / (e^{s_1} + e^{s_2})

The prefix part is the same keys for all n * (Hq / Hkv) queries of a (prompt, kv head), so it is one
[n * Hq/Hkv, Dh] x [Dh, P] matrix product instead of n matrix-vector products (the Hydragen / FlashInfer
cascade idea): the prefix K/V is stored once and read once per step, not n times.
Empty parts (prefix_lens = 0, or no suffix yet) have s_i = -inf and drop out; if both are empty the
output is 0.

Two Triton kernels: `_prefix_attention_fwd_kernel` (the prefix GEMM, split along P into `num_splits`
chunks for occupancy, writing fp32 partial outputs and log-sum-exps) and `_suffix_attention_merge_kernel`
(per sample: merges the prefix partials, then continues the online softmax over the sample's suffix
keys). The public entry point is `bonfast.ops.prefix_attention` (validation, impl dispatch); its plain
PyTorch path with the same semantics is `bonfast.ops.prefix_attention_torch` (CPU default). This module
holds the kernels and their launcher only. Inference only: neither path is meant for backward.

Precision: fp16 / bf16 q, K, V tiles feed `tl.dot` directly (tensor cores) with fp32 accumulation; the
softmax weights p are cast to V's dtype for the second product, as flash attention does; the online softmax
state is fp32. fp32 inputs use exact fp32 products. Under TRITON_INTERPRET=1 bf16 tiles are upcast to fp32
after loading (the interpreter's bf16 arithmetic is broken; fp16 runs the 16-bit path there too).

Shapes:
    q           [G, n, Hq, Dh]
    prefix_k/v  [G, Hkv, P, Dh]        prefix_lens [G]       (int, 0 <= prefix_lens <= P)
    suffix_k/v  [G, n, Hkv, t, Dh]     suffix_lens [G, n]    (int, 0 <= suffix_lens <= t) or None (all t)
    out         [G, n, Hq, Dh]         dtype of q
"""
import math
import os

import torch
import triton
import triton.language as tl

from bonfast.kernels._launch import on_device

_LOG2E = 1.4426950408889634
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # read when @triton.jit decorates, like triton does


@triton.jit
def _prefix_attention_fwd_kernel(
    Q_ptr, K_ptr, V_ptr, Lens_ptr, O_ptr, Lse_ptr,
    stride_qg, stride_qs, stride_qh, stride_qd,
    stride_kg, stride_kh, stride_kp, stride_kd,
    stride_vg, stride_vh, stride_vp, stride_vd,
    stride_ox, stride_og, stride_oh, stride_om,
    G, HKV, M, DH, CHUNK, qk_scale,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Partial attention of the M = n * GROUP queries of one (prompt, kv head) over one chunk of the prefix."""
    pid_gh = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    g = pid_gh // HKV
    c = pid_gh % HKV
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)   # row = sample * GROUP + head in group
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    mask_m = offs_m < M
    mask_d = offs_d < DH

    sample = offs_m // GROUP
    head = c * GROUP + offs_m % GROUP
    q_ptrs = (Q_ptr + g * stride_qg + sample[:, None] * stride_qs + head[:, None] * stride_qh
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    plen = tl.load(Lens_ptr + g).to(tl.int64)
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, plen)
    k_base = K_ptr + g * stride_kg + c * stride_kh
    v_base = V_ptr + g * stride_vg + c * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        keys = start + offs_n
        mask_n = keys < hi
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + keys[:, None] * stride_kp + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vp + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        # 16-bit tiles go to the tensor cores as they are, fp32 accumulation; scale * log2(e): base-2 softmax
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale   # (BLOCK_M, BLOCK_N)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)                # rows with no key yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = l_i > 0.0
    o = acc / tl.where(has_keys, l_i, 1.0)[:, None]
    lse = tl.where(has_keys, m_i + tl.log2(tl.where(has_keys, l_i, 1.0)), float("-inf"))  # base 2
    o_off = split * stride_ox + g * stride_og + c * stride_oh + offs_m * stride_om
    tl.store(O_ptr + o_off[:, None] + offs_d[None, :], o, mask=mask_m[:, None] & mask_d[None, :])
    tl.store(Lse_ptr + ((split * G + g) * HKV + c) * M + offs_m, lse, mask=mask_m)


@triton.jit
def _suffix_attention_merge_kernel(
    Q_ptr, K_ptr, V_ptr, Lens_ptr, Op_ptr, Lsep_ptr, Out_ptr,
    stride_qg, stride_qs, stride_qh, stride_qd,
    stride_kg, stride_ks, stride_kh, stride_kt, stride_kd,
    stride_vg, stride_vs, stride_vh, stride_vt, stride_vd,
    stride_ox, stride_og, stride_oh, stride_om,
    stride_outg, stride_outs, stride_outh, stride_outd,
    G, N, HKV, M, DH, T, NUM_SPLITS, qk_scale,
    GROUP: tl.constexpr, HAS_LENS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """Merge the prefix partials of one (prompt, sample, kv head), then attend to the sample's own suffix."""
    pid_gs = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1).to(tl.int64)
    g = pid_gs // N
    s_idx = pid_gs % N
    offs_j = tl.arange(0, BLOCK_M).to(tl.int64)          # head within the kv group
    offs_d = tl.arange(0, BLOCK_D).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N).to(tl.int64)
    mask_j = offs_j < GROUP
    mask_d = offs_d < DH
    mask_jd = mask_j[:, None] & mask_d[None, :]
    head = c * GROUP + offs_j

    # running state (base-2 max, sum, unnormalised output) initialised from the prefix partials
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    rows = s_idx * GROUP + offs_j
    for split in range(0, NUM_SPLITS):
        lse_p = tl.load(Lsep_ptr + ((split * G + g) * HKV + c) * M + rows, mask=mask_j, other=float("-inf"))
        o_off = split * stride_ox + g * stride_og + c * stride_oh + rows * stride_om
        o_p = tl.load(Op_ptr + o_off[:, None] + offs_d[None, :], mask=mask_jd, other=0.0)
        m_new = tl.maximum(m_i, lse_p)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        w = tl.exp2(lse_p - m_safe)
        l_i = l_i * alpha + w
        acc = acc * alpha[:, None] + o_p * w[:, None]
        m_i = m_new

    if HAS_LENS:
        slen = tl.load(Lens_ptr + g * N + s_idx).to(tl.int64)
    else:
        slen = T
    q_ptrs = (Q_ptr + g * stride_qg + s_idx * stride_qs + head[:, None] * stride_qh
              + offs_d[None, :] * stride_qd)
    q = tl.load(q_ptrs, mask=mask_jd, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K_ptr + g * stride_kg + s_idx * stride_ks + c * stride_kh
    v_base = V_ptr + g * stride_vg + s_idx * stride_vs + c * stride_vh
    for start in range(0, slen, BLOCK_N):
        keys = start + offs_n
        mask_n = keys < slen
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_base + keys[:, None] * stride_kt + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + keys[:, None] * stride_vt + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out_ptrs = (Out_ptr + g * stride_outg + s_idx * stride_outs + head[:, None] * stride_outh
                + offs_d[None, :] * stride_outd)
    tl.store(out_ptrs, out, mask=mask_jd)


def _num_splits(P: int, programs: int, device: torch.device) -> int:
    """Split the prefix along P until the GPU has ~2 programs per SM, keeping chunks >= 256 keys."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(2 * sms, max(programs, 1)), triton.cdiv(P, 256)))


def _blocks(M, group, Dh, block_n=None):
    """Block sizes of the prefix kernel (M = n * group query rows) and the merge kernel
    (one row per query head of a kv group); the ahead-of-time compile check uses the same choice."""
    BLOCK_D = max(16, triton.next_power_of_2(Dh))
    block_n = (64 if BLOCK_D <= 64 else 32) if block_n is None else block_n
    fwd = dict(BLOCK_M=min(64, max(16, triton.next_power_of_2(M))), BLOCK_N=block_n, BLOCK_D=BLOCK_D)
    merge = dict(BLOCK_M=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, BLOCK_D=BLOCK_D)
    return fwd, merge


def prefix_attention_fwd(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens=None, *,
                         scale=None, num_splits=None, block_n=None):
    """Triton launcher (inputs already validated; any strides). Returns out [G, n, Hq, Dh] in q's dtype.

    num_splits: prefix chunks per (prompt, kv head) (default: enough programs for the GPU; 1 on CPU).
    block_n: keys per tile (default 64, 32 for head dims above 64 to bound the fp32 tiles in registers).
    """
    G, n, Hq, Dh = q.shape
    Hkv, P = prefix_k.shape[1], prefix_k.shape[2]
    t = suffix_k.shape[3]
    group = Hq // Hkv
    M = n * group
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    qk_scale = scale * _LOG2E
    # fp32: exact fp32 products; 16-bit: tiles straight into tl.dot (the precision flag does not apply), except
    # bf16 under the interpreter, whose bf16 arithmetic is broken: upcast there
    upcast = q.dtype == torch.float32 or (_INTERPRET and q.dtype == torch.bfloat16)
    precision = "ieee"
    fwd_blocks, merge_blocks = _blocks(M, group, Dh, block_n)
    block_n = fwd_blocks["BLOCK_N"]
    m_blocks = triton.cdiv(M, fwd_blocks["BLOCK_M"])
    if num_splits is None:
        num_splits = _num_splits(P, G * Hkv * m_blocks, q.device)
    chunk = triton.cdiv(triton.cdiv(max(P, 1), num_splits), block_n) * block_n

    o_part = torch.empty((num_splits, G, Hkv, M, Dh), device=q.device, dtype=torch.float32)  # (X, G, Hkv, M, Dh)
    lse_part = torch.empty((num_splits, G, Hkv, M), device=q.device, dtype=torch.float32)
    prefix_lens = prefix_lens.to(device=q.device, dtype=torch.int32).contiguous()
    with on_device(q):
        _prefix_attention_fwd_kernel[(G * Hkv, m_blocks, num_splits)](
            q, prefix_k, prefix_v, prefix_lens, o_part, lse_part,
            *q.stride(), *prefix_k.stride(), *prefix_v.stride(), *o_part.stride()[:4],
            G, Hkv, M, Dh, chunk, qk_scale,
            GROUP=group, DOT_PRECISION=precision, UPCAST=upcast, **fwd_blocks,
        )

    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if t == 0:  # no suffix yet: point at q as a never-read dummy so no empty tensor reaches the kernel
        suffix_k = suffix_v = q.new_empty((1, 1, 1, 1, 1))
    has_lens = suffix_lens is not None
    lens = suffix_lens.to(device=q.device, dtype=torch.int32).contiguous() if has_lens else prefix_lens
    with on_device(q):
        _suffix_attention_merge_kernel[(G * n, Hkv)](
            q, suffix_k, suffix_v, lens, o_part, lse_part, out,
            *q.stride(), *suffix_k.stride(), *suffix_v.stride(), *o_part.stride()[:4], *out.stride(),
            G, n, Hkv, M, Dh, t, num_splits, qk_scale,
            GROUP=group, HAS_LENS=has_lens, DOT_PRECISION=precision, UPCAST=upcast, **merge_blocks,
        )
    return out


def compile_cases():
    """Ahead-of-time compile cases, checked by `python -m bonfast.kernels_aot`: the block sizes the launcher picks
    (`_blocks`) for real GQA layouts: Qwen2.5-0.5B (14 query / 2 kv heads, head_dim 64: group 7) and Llama-3-8B
    (32 / 8, head_dim 128: group 4), with n = 1, 8 and 64 samples (M = n * group query rows: 16-, 32- and
    64-row tiles). G, P, t, M are runtime ints: their size does not change the code (only 1 and multiples of
    16 specialise), so these cover every prompt and cache length; GROUP, the block sizes and the dtype do. bf16,
    the CUDA compute dtype, must lower to tensor cores without spills; fp16 is spot-checked at one layout; fp32
    (exact products, FMA) is recorded and runs with `--full` only (its spilling FMA code takes ptxas ~15 s per
    kernel: the one launcher choice the default check leaves out)."""
    f32, i32 = torch.float32, torch.int32
    cases = []
    layouts = (("Qwen2.5-0.5B", 14, 2, 64, (1, 8)), ("Llama-3-8B", 32, 8, 128, (1, 8, 64)))
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "fp16"), (f32, "fp32")):
        for model, Hq, Hkv, Dh, ns in layouts:
            if dtype != torch.bfloat16:
                if model != "Llama-3-8B":
                    continue
                ns = ns[-1:]
            group, G, t, X = Hq // Hkv, 4, 300, 3
            flags = dict(GROUP=group, DOT_PRECISION="ieee", UPCAST=dtype == f32)
            for n in ns:
                M = n * group
                fwd, merge = _blocks(M, group, Dh)
                q_strides = (n * Hq * Dh, Hq * Dh, Dh, 1)
                o_strides = (G * Hkv * M * Dh, Hkv * M * Dh, M * Dh, Dh)
                kv_strides = (Hkv * 2048 * Dh, 2048 * Dh, Dh, 1)  # a view of a preallocated 2048-token cache
                label = f"{name} {model} n={n} (M={M})"
                cases.append(dict(kernel=_prefix_attention_fwd_kernel, label=label, tensor_cores=dtype != f32,
                                  no_spills=dtype != f32, full=dtype == f32, constexprs=dict(flags, **fwd),
                                  args=(dtype, dtype, dtype, i32, f32, f32, *q_strides, *kv_strides, *kv_strides,
                                        *o_strides, G, Hkv, M, Dh, 336, 0.18)))
            sfx_strides = (n * Hkv * 512 * Dh, Hkv * 512 * Dh, 512 * Dh, Dh, 1)  # suffix buffers of 512 tokens
            cases.append(dict(kernel=_suffix_attention_merge_kernel, label=f"{name} {model} n={n}",
                              tensor_cores=dtype != f32, no_spills=dtype != f32, full=dtype == f32,
                              constexprs=dict(flags, HAS_LENS=True, **merge),
                              args=(dtype, dtype, dtype, i32, f32, f32, dtype, *q_strides, *sfx_strides,
                                    *sfx_strides, *o_strides, n * Hq * Dh, Hq * Dh, Dh, 1,
                                    G, n, Hkv, M, Dh, t, X, 0.18)))
    return cases
