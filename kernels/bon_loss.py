r"""BoN-weighted reduction of token log-probs to a scalar, and the fused loss head built on it.

For token t of sample s(t) (s(t) < 0: padding, contributes nothing), weight w = w_{s(t)}, the kernel sums

    v_t = -f_t + beta * k3_t,          u_t = dv_t / dlogp_t,

    plain:    f_t = w logp_t                                           df/dlogp = w
    clipped:  r_t = exp(logp_t - old_t),  f_t = min(r w, clip(r, 1 - eps_lo, 1 + eps_hi) w)
                                                                       df/dlogp = r w  if r w <= clip(r) w else 0
    k3:       d_t = ref_t - logp_t,  k3_t = e^d - d - 1                dk3/dlogp = 1 - e^d

and returns sum_t v_t (the caller divides by the constant normaliser). u_t does not depend on the upstream
gradient, so the forward writes it and the backward is dlogp = g * u: one pass over [T] vectors each way.

The fused head (`fused_bon_loss_sum`) chains the linear_logprobs forward (logp, lse; never [T, V]), this
reduction (u [T]), and in the backward the linear_logprobs backward kernels with g^logp = g * u, so the loss
head costs one forward and one backward pass and keeps only O(T) vectors between them.
"""
import torch
import triton
import triton.language as tl

from bonfast.kernels._launch import on_device
from bonfast.kernels.linear_logprobs import linear_logprobs_bwd, linear_logprobs_fwd

_BLOCK = 1024


@triton.jit
def _bon_loss_fwd_kernel(
        LP_ptr, SI_ptr, W_ptr, OLD_ptr, REF_ptr, U_ptr, PART_ptr, T, eps_lo, eps_hi, kl_coef,
        HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, STORE_GRAD: tl.constexpr, DTYPE: tl.constexpr,
        BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < T
    si = tl.load(SI_ptr + offs, mask=mask, other=-1).to(tl.int64)
    valid = mask & (si >= 0)
    lp = tl.load(LP_ptr + offs, mask=valid, other=0.0).to(DTYPE)
    w = tl.load(W_ptr + tl.maximum(si, 0), mask=valid, other=0.0).to(DTYPE)
    if HAS_OLD:
        old = tl.load(OLD_ptr + offs, mask=valid, other=0.0).to(DTYPE)
        ratio = tl.exp(lp - old)
        unclipped = ratio * w
        clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_lo), 1.0 + eps_hi) * w
        val = -tl.minimum(unclipped, clipped)
        dval = tl.where(unclipped <= clipped, -unclipped, 0.0)
    else:
        val = -w * lp
        dval = -w
    if HAS_REF:
        d = tl.load(REF_ptr + offs, mask=valid, other=0.0).to(DTYPE) - lp
        ed = tl.exp(d)
        val += kl_coef * (ed - d - 1.0)
        dval += kl_coef * (1.0 - ed)
    val = tl.where(valid, val, 0.0)
    tl.store(PART_ptr + pid, tl.sum(val, axis=0))
    if STORE_GRAD:
        tl.store(U_ptr + offs, tl.where(valid, dval, 0.0), mask=mask)


def bon_loss_fwd(logp, sample_index, weights, old_logp, ref_logp, clip_eps, kl_coef, store_grad=True):
    """Launch the reduction. Returns (sum_t v_t as a 0-d tensor, u [T] or None), in fp32 (fp64 for fp64 logp;
    the scalars kl_coef and clip_eps are still passed to the kernel as fp32)."""
    T = logp.shape[0]
    dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
    num_blocks = max(1, triton.cdiv(T, _BLOCK))
    part = torch.empty(num_blocks, dtype=dtype, device=logp.device)
    u = torch.empty(T, dtype=dtype, device=logp.device) if store_grad else part
    has_ref = ref_logp is not None and kl_coef != 0.0
    eps_lo, eps_hi = clip_eps if clip_eps is not None else (0.0, 0.0)
    with on_device(logp):
        _bon_loss_fwd_kernel[(num_blocks,)](
            logp.contiguous(), sample_index.contiguous(), weights.reshape(-1).contiguous(),
            old_logp.contiguous() if old_logp is not None else logp, ref_logp.contiguous() if has_ref else logp,
            u, part, T, float(eps_lo), float(eps_hi), float(kl_coef),
            HAS_OLD=old_logp is not None, HAS_REF=has_ref, STORE_GRAD=store_grad,
            DTYPE=tl.float64 if dtype == torch.float64 else tl.float32, BLOCK=_BLOCK)
    return part.sum(), (u if store_grad else None)


class _BonLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, sample_index, weights, old_logp, ref_logp, clip_eps, kl_coef):
        total, u = bon_loss_fwd(logp, sample_index, weights, old_logp, ref_logp, clip_eps, kl_coef,
                                store_grad=ctx.needs_input_grad[0])
        ctx.save_for_backward(u)
        ctx.logp_dtype = logp.dtype
        return total

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        return (g * u).to(ctx.logp_dtype), None, None, None, None, None, None


def bon_loss_sum(logp, sample_index, weights, *, old_logp=None, ref_logp=None, clip_eps=None, kl_coef=0.0):
    """Unnormalised BoN loss sum_t v_t on validated inputs (clip_eps: an (eps_lo, eps_hi) pair or None).

    Differentiable w.r.t. logp only (weights, old_logp and ref_logp are constants of the step).
    """
    return _BonLossFunction.apply(logp, sample_index, weights, old_logp, ref_logp, clip_eps, float(kl_coef))


class _FusedBonLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, y, sample_index, weights, temperature, ignore_index, old_logp, ref_logp, clip_eps,
                kl_coef):
        logp, _, _, stats = linear_logprobs_fwd(x, w, y, temperature, ignore_index, False)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total, u = bon_loss_fwd(logp, sample_index, weights, old_logp, ref_logp, clip_eps, kl_coef,
                                store_grad=need_grad)
        ctx.save_for_backward(x, w, y, stats, u)
        ctx.temperature, ctx.ignore_index = temperature, ignore_index
        return total.float()

    @staticmethod
    def backward(ctx, g):
        x, w, y, stats, u = ctx.saved_tensors
        dx, dw = linear_logprobs_bwd(x, w, y, stats, None, g * u, None, None, ctx.temperature, ctx.ignore_index,
                                     ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return dx, dw, None, None, None, None, None, None, None, None, None


def fused_bon_loss_sum(x, w, y, sample_index, weights, *, temperature=1.0, ignore_index=-100, old_logp=None,
                       ref_logp=None, clip_eps=None, kl_coef=0.0):
    """Unnormalised fused BoN loss on validated x [T, D], w [V, D], y [T]; sample_index already marks
    ignored targets as padding (-1). Differentiable w.r.t. x and w."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    return _FusedBonLossFunction.apply(x, w, y.contiguous(), sample_index.contiguous(), weights, float(temperature),
                                       int(ignore_index), old_logp, ref_logp, clip_eps, float(kl_coef))


def compile_cases():
    """Ahead-of-time compile cases, checked by `python -m bonfast.kernels_aot`: the reduction in fp32 (fp32 or
    bf16 log-probs, float64 weights) and in fp64, with every term on and with none. It has no dot products;
    T is a runtime int whose size does not change the compiled code. Every case is a variant a launcher picks."""
    f32, f64 = torch.float32, torch.float64
    cases = []
    for lp, acc, terms in ((f32, f32, True), (torch.bfloat16, f32, True), (f32, f32, False), (f64, f64, True)):
        label = f"logp {str(lp)[6:]}, {'clipped + k3' if terms else 'plain'}, sums in {str(acc)[6:]}"
        cases.append(dict(kernel=_bon_loss_fwd_kernel, label=label, tensor_cores=False, no_spills=True,
                          args=(lp, torch.int64, f64, lp, lp, acc, acc, 100003, 0.2, 0.28, 0.05),
                          constexprs=dict(HAS_OLD=terms, HAS_REF=terms, STORE_GRAD=True,
                                          DTYPE=tl.float64 if acc == f64 else tl.float32, BLOCK=_BLOCK)))
    return cases
