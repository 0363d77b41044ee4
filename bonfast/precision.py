"""The precision policy: in which dtype training, sampling and scoring compute, decided in one place.

    policy   parameters, grads, AdamW    model body                          loss head / engine logits
    "fp32"   float32                     float32, no autocast                float32 hidden and W
    "bf16"   float32 (master weights)    torch.autocast(bfloat16): matmuls   bfloat16 hidden and W, float32
                                         in bf16 with fp32 accumulation;     accumulation, float32 log-probs
                                         residual stream, RMSNorm and RoPE   and logits
                                         in fp32 inside (cast back to the
                                         activations' dtype)
    "auto"   "bf16" on CUDA, "fp32" elsewhere (`TrainConfig.precision`, `bonfast train --precision`)

The same policy drives every place the model runs: the trainer's packed log-probs (`bonfast.packing`), the
engine's prefill and decode (`bonfast.engine`: q, K and V come out of bf16 projections, so prefix attention
runs its 16-bit path and the KV cache is bf16), `bonfast.packing.score`, the warm start and evaluation.

Why fp32 master weights and not bf16 parameters: an AdamW update smaller than 2^-9 of a weight is rounded
away when added to a bf16 weight. At the learning rates fine-tuning uses (1e-6 on a real model) most updates
are that small, so bf16 parameters would silently stop learning. Keeping the parameters and the optimizer in
fp32 costs 2 extra bytes per parameter, and checkpoints and the warm-start cache stay fp32 whatever the
policy. Autocast casts each weight to bf16 once per autocast region (its cast cache), so the matmuls run on
tensor cores at the bf16 rate.

The loss head (`bonfast.ops.linear_logprobs`) gets the final hidden states and W both cast to bf16 under
autograd (`w.to(torch.bfloat16)`: the gradient flows back into the fp32 master W), which selects the Triton
kernels' tensor-core path; they accumulate in fp32 and return fp32 log-probs. The torch path computes the
same products of bf16 values in fp32. The engine's logits use the same bf16 inputs with fp32 accumulation
and fp32 output, so what it reports when sampling is what scoring recomputes, up to the bf16 rounding of the
model body (the two run different attention kernels in different orders).

fp32 is the default on CPU: CPU bf16 matmuls are slower than fp32 ones. bf16 stays selectable there
(`--precision bf16`), which is how the test suite runs the GPU's policy without a GPU.

A model whose parameters are not float32 (bf16 weights, a float64 reference) computes in its own dtype
under every policy: autocast would only round a float64 model, and a 16-bit model has nothing to cast.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bonfast._validation import expected

__all__ = ["PRECISIONS", "Precision", "check_precision", "resolve", "for_model"]

PRECISIONS = ("auto", "fp32", "bf16")


def check_precision(name: str, precision) -> str:
    """`precision` if it is one of PRECISIONS (TypeError for a non-string, ValueError for another string)."""
    if not isinstance(precision, str):
        raise TypeError(expected(name, f"one of {', '.join(PRECISIONS)}", repr(precision)))
    if precision not in PRECISIONS:
        raise ValueError(expected(name, f"one of {', '.join(PRECISIONS)}", repr(precision)))
    return precision


@dataclass(frozen=True)
class Precision:
    """A resolved policy: `name` "fp32" or "bf16", the device type it runs on, and the compute dtype.

    `compute_dtype` is None when the model computes in its own dtype (the "fp32" policy, or any model whose
    parameters are not float32), else torch.bfloat16.
    """

    name: str
    device_type: str
    compute_dtype: torch.dtype | None = None

    def autocast(self):
        """The context the model body runs in: bf16 autocast, or no context at all for "fp32"."""
        if self.compute_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.compute_dtype)

    def head_inputs(self, hidden: torch.Tensor, weight: torch.Tensor):
        """(hidden, W) as the loss head takes them: both in the compute dtype (16-bit: the kernels' tensor-core
        path), cast under autograd so gradients reach the fp32 master W; "fp32": W in hidden's dtype."""
        dtype = hidden.dtype if self.compute_dtype is None else self.compute_dtype
        return hidden.to(dtype), weight.to(dtype)

    def lm_head(self, weight: torch.Tensor):
        """A function hidden [B, D] -> float32 logits [B, V] with W cast once (call once per engine call).

        bf16: bf16 hidden and W, fp32 accumulation and output (the loss head's arithmetic); on CUDA through
        `torch.mm(..., out_dtype=torch.float32)` where torch has it, else an fp32 matmul of the bf16 values."""
        if self.compute_dtype is None:
            return lambda h: F.linear(h, weight).float()
        w16 = weight.detach().to(self.compute_dtype)  # (V, D)
        if self.device_type == "cuda" and _mm_out_dtype_works(w16):
            def head(h):
                with torch.autocast(self.device_type, enabled=False):
                    return torch.mm(h.to(w16.dtype), w16.T, out_dtype=torch.float32)
            return head
        w = w16.float()  # the exact bf16 values, multiplied and summed in fp32

        def head(h):
            with torch.autocast(self.device_type, enabled=False):  # an fp32 matmul, not autocast's bf16 one
                return F.linear(h.to(w16.dtype).float(), w)
        return head


_MM_OUT_DTYPE: dict = {}


def _mm_out_dtype_works(w16: torch.Tensor) -> bool:
    """Whether this torch has `torch.mm(a, b, out_dtype=float32)` for 16-bit CUDA inputs (checked once)."""
    if w16.dtype not in _MM_OUT_DTYPE:
        try:
            a = torch.ones(2, 2, dtype=w16.dtype, device=w16.device)
            out = torch.mm(a, a, out_dtype=torch.float32)  # a correct result, not only no error
            _MM_OUT_DTYPE[w16.dtype] = out.dtype == torch.float32 and bool((out == 2).all())
        except (TypeError, RuntimeError, NotImplementedError):
            _MM_OUT_DTYPE[w16.dtype] = False
    return _MM_OUT_DTYPE[w16.dtype]


def resolve(precision: str | Precision, device, param_dtype: torch.dtype = torch.float32) -> Precision:
    """The concrete policy for `precision` ("auto" | "fp32" | "bf16") on `device` for a model whose parameters
    are `param_dtype`: "auto" is "bf16" on CUDA and "fp32" elsewhere; a non-float32 model computes in its dtype.
    """
    device_type = torch.device(device).type
    if isinstance(precision, Precision):
        precision = precision.name
    check_precision("precision", precision)
    name = ("bf16" if device_type == "cuda" else "fp32") if precision == "auto" else precision
    compute = torch.bfloat16 if name == "bf16" and param_dtype == torch.float32 else None
    return Precision(name, device_type, compute)


def for_model(model, precision: str | Precision) -> Precision:
    """`resolve` for a model: its device and parameter dtype are read from its LM head weight."""
    w = model.lm_head_weight
    return resolve(precision, w.device, w.dtype)
