"""One attention entry point with interchangeable backends, and the `AttentionFn` protocol of the model.

For queries `q_t` and keys/values `(k_s, v_s)` of one head (GQA: query head `h` reads key/value head
`h // (Hq / Hkv)`):

    o_t = sum_{s visible from t} softmax_s(q_t . k_s * scale) v_s,        scale = 1 / sqrt(Dh)

`visible(t, s) = mask[b, 0, t, s] and (not causal or s <= t + Tk - Tq)`: the causal mask is aligned
bottom-right (query `t` is the `(Tk - Tq + t)`-th key), as in flash-attn >= 2.1, so the queries of a
KV-cache step attend to every cached key. A query with no visible key gets a zero output (and zero
gradient) on every backend.

Backends (same semantics, tests force each one):

| name       | where                     | masks                         |
|------------|---------------------------|-------------------------------|
| `sdpa`     | everywhere (CPU default)  | causal, any bool mask         |
| `flex`     | CPU eager (forward only), CUDA compiled (Dh >= 16) | causal, any bool mask, block masks |
| `flash`    | CUDA + flash-attn, fp16/bf16 | causal or none              |
| `xformers` | CUDA + xformers           | causal, any bool mask         |

`backend="auto"` picks flash on CUDA when importable and the call has no mask, else SDPA (which on
CUDA dispatches to its own flash / memory-efficient kernels). `force_backend(name)` overrides "auto"
inside a `with` block, so a whole model forward can be run on one backend.

Shapes:
    q: [B, Tq, Hq, Dh]    k, v: [B, Tk, Hkv, Dh]    mask: bool [B or 1, 1, Tq, Tk]    out: [B, Tq, Hq, Dh]
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import warnings
from typing import Protocol

import torch
import torch.nn.functional as F

BACKENDS = ("sdpa", "flex", "flash", "xformers")
_FORCED: str | None = None


class AttentionFn(Protocol):
    """What the model calls inside every layer, with q/k after RoPE and q/k-norm.

    The model never caches keys or values: an `AttentionFn` implements caching (the engine), masking
    (causal, padding, shared-prefix packing) and the choice of kernel.

    Shapes:
        q: [B, T, Hq, Dh]    k, v: [B, T, Hkv, Dh]    returns: [B, T, Hq, Dh]
    """

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ...


# ---------------------------------------------------------------------------------------------------
# backend selection


@functools.cache
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on `device` in this environment (flex on CPU is forward-only)."""
    device = torch.device(device)
    names = ["sdpa"]
    if _importable("torch.nn.attention.flex_attention"):
        names.append("flex")
    if device.type == "cuda":
        if _importable("flash_attn"):
            names.append("flash")
        if _importable("xformers"):
            names.append("xformers")
    return names


@contextlib.contextmanager
def force_backend(name: str | None):
    """Make every `backend="auto"` call inside the block use `name` (None restores auto-selection)."""
    global _FORCED
    if name is not None and name not in BACKENDS:
        raise ValueError(f"force_backend: name must be one of {BACKENDS} or None, got {name!r}")
    previous, _FORCED = _FORCED, name
    try:
        yield
    finally:
        _FORCED = previous


def resolve_backend(backend: str, q: torch.Tensor, *, has_mask: bool) -> str:
    """Turn "auto" (or a forced backend) into a concrete backend name, checking availability."""
    if backend == "auto":
        backend = _FORCED
    if backend is None:
        flash_ok = (q.is_cuda and not has_mask and _importable("flash_attn")
                    and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256)
        return "flash" if flash_ok else "sdpa"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends(q.device):
        raise ValueError(f"backend {backend!r} is not available on device {q.device} here "
                         f"(available: {available_backends(q.device)})")
    return backend


# ---------------------------------------------------------------------------------------------------
# public functional entry point


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, mask: torch.Tensor | None = None,
              causal: bool = False, backend: str = "auto", scale: float | None = None) -> torch.Tensor:
    """Multi-head attention with GQA, an optional bool mask and a bottom-right aligned causal mask.

    Equals `softmax(q k^T * scale + log(visible)) v` per head, with rows that see no key set to zero
    (see the module docstring for `visible`). `mask` is True where a query may attend to a key.

    Shapes:
        q: [B, Tq, Hq, Dh]    k, v: [B, Tk, Hkv, Dh]    mask: bool [B or 1, 1, Tq, Tk]
        returns: [B, Tq, Hq, Dh] in q's dtype
    """
    _check_qkv(q, k, v)
    B, Tq, _, Dh = q.shape
    Tk = k.shape[1]
    if mask is not None:
        if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[0] not in (1, B) or \
                tuple(mask.shape[1:]) != (1, Tq, Tk):
            raise ValueError(f"mask must be a bool tensor of shape [{B} or 1, 1, {Tq}, {Tk}], got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        if mask.device != q.device:
            raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
    if causal and Tq > Tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq keys), got Tq={Tq}, Tk={Tk}")
    scale = Dh ** -0.5 if scale is None else scale
    name = resolve_backend(backend, q, has_mask=mask is not None)
    if name == "sdpa":
        return _sdpa(q, k, v, mask, causal, scale)
    if name == "flex":
        return _flex_dense(q, k, v, mask, causal, scale)
    if name == "flash":
        return _flash(q, k, v, mask, causal, scale)
    return _xformers(q, k, v, mask, causal, scale)


class CausalAttention:
    """Plain causal self-attention as an `AttentionFn`, with an optional key-padding mask.

    `key_padding_mask[b, s]` is True for real tokens; padded keys are never attended to (a padded query
    that sees no real key returns zeros). Use right padding, or left padding with `positions` that start
    at the first real token.

    Shapes:
        key_padding_mask: bool [B, T]
    """

    def __init__(self, backend: str = "auto", key_padding_mask: torch.Tensor | None = None):
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2):
            raise ValueError(f"key_padding_mask must be a bool tensor [B, T], got {key_padding_mask.dtype} "
                             f"{tuple(key_padding_mask.shape)}")
        self.backend = backend
        self.key_padding_mask = key_padding_mask

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        mask = None
        if self.key_padding_mask is not None:
            mask = self.key_padding_mask[:, None, None, :]  # (B, 1, 1, T)
            mask = mask.expand(mask.shape[0], 1, q.shape[1], mask.shape[-1])
        return attention(q, k, v, mask=mask, causal=True, backend=self.backend)


# ---------------------------------------------------------------------------------------------------
# helpers shared by the backends


def _check_qkv(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, T, H, Dh], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    B, _, Hq, Dh = q.shape
    if k.shape != v.shape or k.shape[0] != B or k.shape[3] != Dh:
        raise ValueError(f"k and v must both be [{B}, Tk, Hkv, {Dh}], got {tuple(k.shape)} and {tuple(v.shape)}")
    if Hq % k.shape[2] != 0:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({k.shape[2]})")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def causal_mask(Tq: int, Tk: int, device) -> torch.Tensor:
    """Bottom-right aligned causal mask: bool [Tq, Tk], True where key s <= query t + Tk - Tq."""
    t = torch.arange(Tq, device=device)[:, None]
    s = torch.arange(Tk, device=device)[None, :]
    return s <= t + (Tk - Tq)


def _visible(mask, causal, Tq, Tk, device):
    """Combine the bool mask and the causal mask into one bool [B or 1, 1, Tq, Tk] (None if neither)."""
    if causal:
        c = causal_mask(Tq, Tk, device)[None, None]
        return c if mask is None else mask & c
    return mask


def _guard_empty_rows(visible):
    """Rows with no visible key: let them see key 0 (finite softmax), return the rows to zero afterwards."""
    empty = ~visible.any(-1, keepdim=True)  # (B, 1, Tq, 1)
    first = torch.zeros_like(visible)
    first[..., 0] = True
    return visible | (empty & first), empty


# ---------------------------------------------------------------------------------------------------
# backends


def sdpa_native_gqa(q, has_mask: bool) -> bool:
    """Whether SDPA takes grouped-query attention natively (enable_gqa) instead of K/V repeated per query head.

    Always on CPU. On CUDA only where SDPA's flash kernel takes the call (no mask, fp16 / bf16, Dh <= 256, Dh a
    multiple of 8): its memory-efficient and cuDNN kernels do not take enable_gqa, so any other GQA call would
    fall back to the math kernel, which builds the full [Tq, Tk] scores per head."""
    if not q.is_cuda:
        return True
    Dh = q.shape[-1]
    return not has_mask and q.dtype in (torch.float16, torch.bfloat16) and Dh <= 256 and Dh % 8 == 0


def _sdpa(q, k, v, mask, causal, scale):
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, T, Dh)
    Tq, Tk = q.shape[1], k.shape[1]
    gqa = q.shape[2] != k.shape[2]
    plain = mask is None and (not causal or Tq == Tk)  # no bool mask reaches SDPA
    if gqa and not sdpa_native_gqa(q, has_mask=not plain):
        rep = q.shape[2] // k.shape[2]
        kt, vt, gqa = kt.repeat_interleave(rep, 1), vt.repeat_interleave(rep, 1), False  # (B, Hq, Tk, Dh)
    if plain:
        out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2)
    if mask is None:  # bottom-right causal with Tq < Tk: every query sees at least Tk - Tq + 1 keys
        visible, empty = causal_mask(Tq, Tk, q.device), None
    else:
        visible, empty = _guard_empty_rows(_visible(mask, causal, Tq, Tk, q.device))
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible, scale=scale, enable_gqa=gqa)
    return (out if empty is None else out.masked_fill(empty, 0.0)).transpose(1, 2)


# Inductor's CUDA flex kernel runs tl.dot over the head dimension, which needs at least 16 (torch 2.13:
# torch/_inductor/kernel/flex/flex_attention.py raises "NYI: embedding dimension ... at least 16").
FLEX_CUDA_MIN_HEAD_DIM = 16


@functools.cache
def _flex_fn(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention
    # Eager FlexAttention materialises the scores; compiled it is a fused kernel. CPU eager is fine for tests.
    # dynamic=None (automatic dynamic shapes): a second sequence length recompiles once with symbolic sizes
    # instead of once per length (dynamic=False hit the recompile limit and fell back to eager after 8).
    return torch.compile(flex_attention, dynamic=None) if device_type == "cuda" else flex_attention


def flex_block_attention(q, k, v, block_mask, *, scale: float | None = None) -> torch.Tensor:
    """FlexAttention with a prepared `BlockMask` (rows without a visible key return 0).

    On CPU torch implements FlexAttention forward only: use it under `torch.no_grad()` there.

    Shapes:
        q: [B, Tq, Hq, Dh]    k, v: [B, Tk, Hkv, Dh]    returns: [B, Tq, Hq, Dh]
    """
    _check_qkv(q, k, v)
    if q.is_cuda and q.shape[-1] < FLEX_CUDA_MIN_HEAD_DIM:
        raise ValueError(f"backend 'flex' on CUDA needs a head dim Dh >= {FLEX_CUDA_MIN_HEAD_DIM} (torch's compiled "
                         f"flex kernel), got Dh={q.shape[-1]}; use backend='sdpa'")
    if not q.is_cuda and torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
        raise ValueError("FlexAttention has no backward on CPU in torch; use backend='sdpa' for training on CPU "
                         "or run flex under torch.no_grad()")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    gqa = q.shape[2] != k.shape[2]
    with warnings.catch_warnings():
        # CPU eager flex is unfused (materialises the scores) by design here: tests and small runs only.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = _flex_fn(q.device.type)(qt, kt, vt, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    return out.transpose(1, 2)


def _flex_dense(q, k, v, mask, causal, scale):
    from torch.nn.attention.flex_attention import create_block_mask
    B, Tq, Tk = q.shape[0], q.shape[1], k.shape[1]
    # a captured tensor, not a Python int: compiled flex with dynamic shapes refuses captured dynamic scalars
    offset = torch.tensor(Tk - Tq, device=q.device)
    if mask is None:
        def mask_mod(b, h, t, s):
            return s <= t + offset if causal else s >= 0
        mB = None
    else:
        mB = B if mask.shape[0] == B else None
        one = mask.shape[0] == 1

        def mask_mod(b, h, t, s):
            m = mask[0 if one else b, 0, t, s]
            return m & (s <= t + offset) if causal else m
    block_mask = create_block_mask(mask_mod, mB, None, Tq, Tk, device=q.device)
    return flex_block_attention(q, k, v, block_mask, scale=scale)


def _flash(q, k, v, mask, causal, scale):
    if mask is not None:
        raise ValueError("backend 'flash' takes no bool mask (causal or none only); use 'sdpa', 'flex' or 'xformers'")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"backend 'flash' needs float16 or bfloat16 inputs, got {q.dtype}")
    from flash_attn import flash_attn_func
    return flash_attn_func(q, k, v, softmax_scale=scale, causal=causal)  # [B, T, H, Dh] layout, GQA native


def _xformers(q, k, v, mask, causal, scale):
    import xformers.ops as xops
    from xformers.ops import fmha
    rep = q.shape[2] // k.shape[2]
    if rep > 1:
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
    B, Tq, H, _ = q.shape
    Tk = k.shape[1]
    if mask is None:
        bias = fmha.attn_bias.LowerTriangularFromBottomRightMask() if causal else None
        return xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
    visible, empty = _guard_empty_rows(_visible(mask, causal, Tq, Tk, q.device))
    # xformers wants an additive bias whose last dimension is padded to a multiple of 8 in memory.
    padded = (Tk + 7) // 8 * 8
    bias = torch.zeros(B, H, Tq, padded, dtype=q.dtype, device=q.device)[..., :Tk]
    bias.masked_fill_(~visible.expand(B, H, Tq, Tk), float("-inf"))
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
    return out.masked_fill(empty.transpose(1, 2), 0.0)
