"""The autograd wrapper shared by the log-prob strategies (`logprob_gemm`, `logprob_fused`).

A strategy supplies `fwd(x, w, y, temperature, ignore_index, want_entropy, extra) -> (logp, entropy, lse, stats)`
and `bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, temperature, ignore_index, need_dx, need_dw, extra)
-> (dx, dw)`; `extra` is the strategy's own plan (token chunk rows, memory budget).
"""
import torch


class StrategyLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, y, temperature, ignore_index, want_entropy, fwd, bwd, extra):
        logp, entropy, lse, stats = fwd(x, w, y, temperature, ignore_index, want_entropy, extra)
        if entropy is None:
            entropy = torch.zeros_like(logp)
            ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(x, w, y, stats, entropy)
        ctx.temperature, ctx.ignore_index, ctx.bwd, ctx.extra = temperature, ignore_index, bwd, extra
        ctx.set_materialize_grads(False)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, g_logp, g_entropy, g_lse):
        x, w, y, stats, entropy = ctx.saved_tensors
        dx, dw = ctx.bwd(x, w, y, stats, entropy, g_logp, g_entropy, g_lse, ctx.temperature, ctx.ignore_index,
                         ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.extra)
        return dx, dw, None, None, None, None, None, None, None


def apply(x, w, y, temperature, ignore_index, want_entropy, fwd, bwd, extra):
    """x, w made unit-stride in their last dimension, then the wrapped strategy."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    w = w if w.stride(-1) == 1 else w.contiguous()
    return StrategyLogprobsFunction.apply(x, w, y.contiguous(), float(temperature), int(ignore_index),
                                          bool(want_entropy), fwd, bwd, extra)
