"""One tolerance table and one dtype parametrisation for every precision test, and the device the
Triton kernel tests run on.

Three-way comparison: a float64 reference is the truth `gt`; plain PyTorch in the tested dtype is `pt`;
the fast path `out` may be at most about twice as far from the truth as plain PyTorch, plus a small
absolute slack per dtype:  |out - gt| <= 2 |pt - gt| + ATOL[dtype].
"""
import os

import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def assert_three_way(out, pt, gt, dtype, *, name="output", factor=2.0, atol=None):
    """Assert |out - gt| <= factor * |pt - gt| + atol elementwise (all compared in float64)."""
    out, pt, gt = (t.detach().to(torch.float64).cpu() for t in (out, pt, gt))
    slack = ATOL[dtype] if atol is None else atol
    err = (out - gt).abs()
    bound = factor * (pt - gt).abs() + slack * (1 + gt.abs())
    bad = err > bound
    if bad.any():
        i = int(torch.nonzero(bad.flatten())[0])
        raise AssertionError(
            f"{name} ({dtype}): {int(bad.sum())}/{bad.numel()} elements off; first at flat index {i}: "
            f"out={out.flatten()[i]:.6g} torch={pt.flatten()[i]:.6g} truth={gt.flatten()[i]:.6g} "
            f"max err={err.max():.3g}")


def impl_name(impl: str) -> str:
    """The `impl=` argument for a test's impl parameter: "torch-tiled" is the torch path with small tiles
    (the autouse fixture in tests/conftest.py shrinks them)."""
    return "torch" if impl == "torch-tiled" else impl


def triton_device():
    """Where impl="triton" runs in tests: the CPU under the Triton interpreter when TRITON_INTERPRET=1 (the root
    conftest sets it on machines without CUDA), else the GPU with compiled kernels; None when neither (the
    interpreter forced off with TRITON_INTERPRET=0 on a machine without CUDA), and kernel tests skip."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def naive_head(x, w, y, temperature, ignore_index=-100):
    """What a user writes: logits in the input dtype, upcast, log-softmax, gather -> (logp, entropy, lse)."""
    z = (x @ w.T).float() / temperature  # (T, V)
    logq = torch.log_softmax(z, dim=-1)
    keep = y != ignore_index
    logp = logq.gather(-1, torch.where(keep, y, 0)[:, None])[:, 0]
    entropy = -(logq.exp() * logq).sum(-1)
    lse = torch.logsumexp(z, -1)
    return tuple(torch.where(keep, t, 0.0) for t in (logp, entropy, lse))


def outputs_and_grads(fn, x, w, grads):
    """Outputs of fn(x, w) and the gradients of sum_i <out_i, g_i> w.r.t. x and w."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    outs = fn(x, w)
    dx, dw = torch.autograd.grad(sum((o.double() * g).sum() for o, g in zip(outs, grads)), (x, w))
    return [o.detach() for o in outs] + [dx, dw]
