"""Argument checks shared by the package: one message format, TypeError for wrong types.

Every message names the argument and what it expected: ``"<name>: expected <what>, got <value>"``.
A value of the wrong type (a list where a tensor is needed, a float where an int is) raises TypeError; a
value of the right type that is out of range or of the wrong shape raises ValueError.

Value checks that read tensor data (finite, binary, in range) are collected as (bad: bool tensor, message)
pairs and run together by `run_checks`, so a function costs at most one host sync.
"""
from __future__ import annotations

import numbers

import torch
from torch import Tensor

__all__ = ["expected", "check_int", "check_choice", "run_checks", "as_matrix", "resolve_clip_eps"]


def expected(name: str, what: str, got=None) -> str:
    """The message format: "<name>: expected <what>, got <got>" (", got ..." left out when got is None)."""
    return f"{name}: expected {what}" + ("" if got is None else f", got {got}")


def check_int(name: str, value, lo: int, hi: int | None = None, hi_name: str = "") -> int:
    """`value` as an int in [lo, hi] (hi None: no upper bound); hi_name says what hi is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(expected(name, f"an int >= {lo}", repr(value)))
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f"an int in [{lo}, {hi}] ({hi_name})" if hi is not None else f"an int >= {lo}"
        raise ValueError(expected(name, bound, value))
    return value


def check_choice(name: str, value, allowed):
    """`value` if it is one of `allowed`."""
    if value not in allowed:
        raise ValueError(expected(name, f"one of {list(allowed)}", repr(value)))
    return value


def run_checks(checks, enabled: bool = True) -> None:
    """Raise ValueError for the first failed check. `checks` holds (bad: bool Tensor, message) pairs; this is
    the one host sync of a validated call (skipped when not `enabled`)."""
    if not checks or not enabled:
        return
    flags = torch.stack([bad.any() for bad, _ in checks]).tolist()
    for flag, (_, message) in zip(flags, checks):
        if flag:
            raise ValueError(message)


def as_matrix(name: str, x, shape=None, device=None) -> Tensor:
    """`x` as a float64 [G, n] tensor (bool / int / float accepted), n >= 1, optionally of `shape` on `device`."""
    if not isinstance(x, Tensor):
        raise TypeError(expected(name, "a torch.Tensor of shape [G, n]", type(x).__name__))
    if x.is_complex():
        raise TypeError(expected(name, "a real (bool, integer or floating) dtype", x.dtype))
    want = "[G, n]" if shape is None else f"[G, n] = {list(shape)}"
    if x.dim() != 2 or (shape is not None and tuple(x.shape) != tuple(shape)):
        raise ValueError(expected(name, f"shape {want}", list(x.shape)))
    if x.shape[1] < 1:
        raise ValueError(expected(name, "n >= 1 samples per prompt (shape [G, n])", list(x.shape)))
    if device is not None and x.device != device:
        raise ValueError(expected(name, f"a tensor on {device} (the device of rewards)", x.device))
    return x.detach().to(torch.float64)


def resolve_clip_eps(clip_eps, old_logp):
    """(eps_low, eps_high) for the clipped surrogate: 0.2 when `old_logp` is given and `clip_eps` is None;
    None when there is no `old_logp` (the plain, unclipped loss)."""
    if old_logp is None:
        return None
    if clip_eps is None:
        clip_eps = 0.2
    if isinstance(clip_eps, (tuple, list)):
        return float(clip_eps[0]), float(clip_eps[1])
    return float(clip_eps), float(clip_eps)
