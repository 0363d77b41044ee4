"""Public ops: fused log-probs, the BoN-weighted loss, both fused into one head, and shared-prefix attention.

Each function validates once, then dispatches on `impl`:

* "triton": the kernels in `bonfast.kernels` (on CPU only under TRITON_INTERPRET=1, for tests);
* "torch":  a tiled PyTorch path with identical semantics and bounded memory: logits are formed one
  (token chunk x vocabulary block) tile at a time (at most 8 MiB in fp32), with an online softmax across
  the blocks, every elementwise step works in place on that tile, and the backward recomputes each tile,
  so the extra memory is one tile (two with entropy) plus the gradients themselves, independent of T;
* "auto":   "triton" for CUDA tensors, "torch" otherwise.

The Triton loss head (`linear_logprobs`, `fused_bon_loss`) has strategies, chosen by `strategy=`:

* "gemm":  token chunks; each chunk's logits by cuBLAS, one Triton pass turning them into dL/dz in place,
  dX and dW by cuBLAS (dW accumulated in fp32). Fastest; extra memory = one [C, V] logits chunk + an fp32
  dW (4 V D bytes). 8 TDV of work for `linear_logprobs`, 6 TDV for `fused_bon_loss` (its gradients are
  computed in the forward).
* "fused": vocabulary chunks; a Triton kernel recomputes each logit tile once and writes dL/dz in 16 bits to
  a bounded workspace, tensor-core GEMMs reduce it into dX and dW. 8 TDV; memory ~1.15x the gradients'
  own size by default (deterministic).
* "tiles": the first recomputing kernels (10 TDV); kept for comparison, never picked by "auto".
* "auto":  "gemm" when its extra memory fits `memory_budget` (bytes; else env BONFAST_LOGPROB_MEMORY, else
  2 GiB), otherwise "fused" (which then uses that budget for its workspace).

The torch path has one strategy of its own (the tiles above) and ignores `strategy` and `memory_budget`.

Triton is imported lazily, inside the "triton" branches only, so this module (and the trainer and engine
built on it) imports and runs on machines without triton (macOS, ARM) with impl="auto" or "torch".

No function here synchronises the host with the device (no `.item()`, no data-dependent Python branches);
checks that would need the data (targets in [0, V)) are left to the device, like `torch.gather` does.
"""
import math
import numbers
import os

import torch

from bonfast._validation import check_choice, check_int, resolve_clip_eps

__all__ = ["linear_logprobs", "bon_loss", "fused_bon_loss", "prefix_attention", "prefix_attention_torch"]

# Logits per tile on the torch path: 2M (8 MiB in fp32), the only (C, Vb) buffer alive at a time (a second one
# only when the entropy is returned or differentiated), so the op's extra memory is the gradients plus ~one tile.
# A tile has at most _TORCH_MAX_ROWS token rows; a larger vocabulary is split into blocks of 2M / rows columns.
# W and dW stream through memory once per token chunk, so thin full-vocabulary chunks (83 rows at V = 50257)
# were memory-bound on a 2-core CPU; see benches/README.md for the measured choice of rows.
# Both can be overridden for tuning on another CPU: BONFAST_TORCH_TILE="rows,elements" (e.g. "2048,4194304").


def parse_torch_tile(value: str | None) -> tuple[int, int]:
    """(rows, elements) of the torch path's logit tiles from a BONFAST_TORCH_TILE value; None: the defaults."""
    if not value:
        return 2048, 1 << 21
    try:
        rows, elements = (int(v) for v in value.split(","))
    except ValueError:
        rows = elements = 0
    if rows < 1 or elements < 1:
        raise ValueError(f"BONFAST_TORCH_TILE must be 'rows,elements' with two positive integers, e.g. "
                         f"'2048,4194304'; got {value!r}")
    return rows, elements


_TORCH_MAX_ROWS, _TORCH_CHUNK_ELEMENTS = parse_torch_tile(os.environ.get("BONFAST_TORCH_TILE"))
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------------
# validation


def _shape(t):
    return tuple(t.shape)


def _check_impl(impl, x, head=False):
    """Resolve impl for tensor x; the Triton loss head takes 16/32-bit floats only (float64 -> torch)."""
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl must be one of 'auto', 'triton', 'torch'; got {impl!r}")
    if impl == "auto":
        return "triton" if x.is_cuda and not (head and x.dtype == torch.float64) else "torch"
    if impl == "triton" and head and x.dtype == torch.float64:
        raise ValueError("impl='triton' needs hidden in float16, bfloat16 or float32; got float64 "
                         "(use impl='torch' or 'auto' for float64)")
    if impl == "triton" and not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 set before bonfast.kernels "
                         f"is imported); got tensors on {x.device}")
    return impl


_HEAD_STRATEGIES = ("auto", "gemm", "fused", "tiles")


def _check_strategy(strategy, memory_budget):
    """Validate the Triton loss head's strategy and memory budget (bytes or None)."""
    check_choice("strategy", strategy, _HEAD_STRATEGIES)
    if memory_budget is not None:
        check_int("memory_budget", memory_budget, 0)


def _triton_head(strategy, memory_budget, x, V):
    """The Triton loss head's strategy for x [T, D] and V, with "auto" resolved by the memory budget."""
    if strategy == "auto":
        from bonfast.kernels.logprob_gemm import pick_strategy
        strategy = pick_strategy(x.shape[0], x.shape[1], V, x.dtype, memory_budget)
    return strategy


def _check_same_device(**named):
    devices = {name: t.device for name, t in named.items() if t is not None}
    first_name, first = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != first:
            raise ValueError(f"{name} must be on the same device as {first_name} ({first}); got {dev}")


def _check_head_inputs(hidden, weight, targets, temperature):
    """Validate (hidden [..., D], weight [V, D], targets [...]) and return (hidden [T, D], targets [T])."""
    for name, t in (("hidden", hidden), ("weight", weight), ("targets", targets)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight must have shape [V, D]; got shape {_shape(weight)}")
    V, D = weight.shape
    if hidden.dim() < 1 or hidden.shape[-1] != D:
        raise ValueError(f"hidden must have shape [..., D] with D = weight.shape[1] = {D}; "
                         f"got shape {_shape(hidden)}")
    if _shape(targets) != _shape(hidden)[:-1]:
        raise ValueError(f"targets must have shape {_shape(hidden)[:-1]} (hidden.shape[:-1]); "
                         f"got shape {_shape(targets)}")
    if hidden.dtype not in _FLOATS:
        raise ValueError(f"hidden must be float16, bfloat16, float32 or float64; got {hidden.dtype}")
    if weight.dtype != hidden.dtype:
        raise ValueError(f"weight must have the dtype of hidden ({hidden.dtype}); got {weight.dtype}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64; got {targets.dtype}")
    if V == 0 or D == 0:
        raise ValueError(f"weight must have V > 0 and D > 0; got shape {_shape(weight)}")
    _check_same_device(hidden=hidden, weight=weight, targets=targets)
    if (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
            or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    return hidden.reshape(-1, D), targets.reshape(-1)


def _check_loss_inputs(T, device, sample_index, weights, normaliser, old_logp, ref_logp, clip_eps, kl_coef):
    """Validate the BoN-loss arguments against T tokens on `device`."""
    for name, t in (("sample_index", sample_index), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if _shape(sample_index) != (T,):
        raise ValueError(f"sample_index must have shape ({T},) (one entry per token); got {_shape(sample_index)}")
    if sample_index.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"sample_index must be int64 or int32; got {sample_index.dtype}")
    if weights.dim() < 1 or weights.numel() == 0 or not weights.dtype.is_floating_point:
        raise ValueError(f"weights must be a non-empty float tensor of shape [S] (or [G, n], flattened); "
                         f"got shape {_shape(weights)} and dtype {weights.dtype}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and (not isinstance(t, torch.Tensor) or _shape(t) != (T,)
                              or not t.dtype.is_floating_point):
            got = f"shape {_shape(t)}, dtype {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a float tensor of shape ({T},); got {got}")
    for name, t in (("sample_index", sample_index), ("weights", weights), ("old_logp", old_logp),
                    ("ref_logp", ref_logp)):
        if t is not None and t.device != device:
            raise ValueError(f"{name} must be on the device of the log-probs ({device}); got {t.device}")
    if isinstance(normaliser, torch.Tensor):
        if normaliser.dim() != 0:
            raise ValueError(f"normaliser must be a python number or a 0-d tensor; got shape {_shape(normaliser)}")
    elif (isinstance(normaliser, bool) or not isinstance(normaliser, numbers.Real)
          or not math.isfinite(normaliser) or normaliser <= 0):
        raise ValueError(f"normaliser must be a finite number > 0 (e.g. G * max_len); got {normaliser!r}")
    if isinstance(clip_eps, (tuple, list)) and len(clip_eps) != 2:
        raise ValueError(f"clip_eps must be a float or an (eps_low, eps_high) pair; got {clip_eps!r}")
    if clip_eps is not None and old_logp is None:
        raise ValueError("clip_eps needs old_logp (the clipped surrogate compares logp with old_logp); "
                         "got old_logp=None")
    eps = resolve_clip_eps(clip_eps, old_logp)
    if eps is not None and not (0.0 <= eps[0] < 1.0 and eps[1] >= 0.0):
        raise ValueError(f"clip_eps must be a float (or pair) with 0 <= eps_low < 1 and eps_high >= 0; "
                         f"got {clip_eps!r}")
    if not isinstance(kl_coef, numbers.Real) or not math.isfinite(kl_coef):
        raise ValueError(f"kl_coef must be a finite number; got {kl_coef!r}")
    if kl_coef != 0.0 and ref_logp is None:
        raise ValueError(f"kl_coef = {kl_coef} needs ref_logp of shape ({T},); got ref_logp=None")
    return eps


# ----------------------------------------------------------------------------------------------------------
# chunked torch path for linear_logprobs


def _tiles(T, V, rows=None, cols=None):
    """(rows, cols) of the (token, vocabulary) tiles: at most _TORCH_CHUNK_ELEMENTS logits each.

    A large V is split into vocabulary blocks beside _TORCH_MAX_ROWS token rows instead of into thin token
    chunks, so W and dW stream through memory T / rows times (not T * V / 2M times); a small V fills the
    tile with more rows and one block."""
    if rows is None:
        rows = max(_TORCH_MAX_ROWS, _TORCH_CHUNK_ELEMENTS // V)
    rows = max(1, min(T, rows))
    if cols is None:
        cols = _TORCH_CHUNK_ELEMENTS // rows
    return rows, max(1, min(V, cols))


def _chunk_logits(x, w, temperature):
    """Scaled logits z = x @ w.T / temperature in the compute dtype of `w`, in one fresh buffer.  # (C, Vb)"""
    z = x.to(w.dtype) @ w.T
    return z if temperature == 1.0 else z.div_(temperature)


def _block_targets(targets, v0, width):
    """(column index [C, 1] clamped into the block, inside [C]) of targets in the vocabulary block [v0, v0 + width)."""
    local = targets - v0
    return local.clamp(0, width - 1)[:, None], (local >= 0) & (local < width)


def _target_logit(z, targets, v0):
    """z[i, targets[i] - v0] where the target lies in this vocabulary block [v0, v0 + Vb), else 0.  # (C,)"""
    index, inside = _block_targets(targets, v0, z.shape[1])
    return torch.where(inside, z.gather(-1, index)[:, 0], 0.0)


class _LinearLogprobsTorch(torch.autograd.Function):
    """Tiled forward (logp, entropy, lse) and tiled recomputing backward (dX, dW).

    The forward walks each token chunk's vocabulary blocks with an online softmax: running row max m, sum
    s = sum_v e^(z_v - m) and, for the entropy, B = sum_v e^(z_v - m) (z_v - m), rescaled exactly when m grows
    (B' = e^(m - m') (B + (m - m') s)); then H = log s - B / s. The backward rebuilds softmax as
    exp((z - m) - log s) from the saved m and log s, not as exp(z - lse): lse = m + log s is rounded at the
    magnitude of the logits, which would cost a relative error of ulp(|lse|) in every probability.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, ignore_index, want_entropy, tiles):
        T, V = hidden.shape[0], weight.shape[0]
        rows, cols = tiles
        compute = torch.float64 if hidden.dtype == torch.float64 else torch.float32
        w = weight.to(compute)  # (V, D); a no-op for fp32 / fp64 weights
        logp = torch.zeros(T, dtype=compute, device=hidden.device)
        lse, entropy = torch.zeros_like(logp), torch.zeros_like(logp)
        row_max, log_sum = torch.zeros_like(logp), torch.zeros_like(logp)
        valid = targets != ignore_index
        bad = valid & ((targets < 0) | (targets >= V))  # out-of-range target: NaN logp, never a plausible -lse
        safe = torch.where(valid, targets, 0)
        for s in range(0, T, rows):
            x, y = hidden[s:s + rows], safe[s:s + rows]
            m = s_sum = b = z_y = None
            for v0 in range(0, V, cols):
                z = _chunk_logits(x, w[v0:v0 + cols], temperature)  # (C, Vb): the one live tile
                zy = _target_logit(z, y, v0)
                z_y = zy if z_y is None else z_y + zy
                m_blk = z.amax(-1)
                m_new = m_blk if m is None else torch.maximum(m, m_blk)
                z -= m_new[:, None]
                e = torch.exp(z) if want_entropy else z.exp_()  # a second tile only for the entropy
                e_sum = e.sum(-1)
                e_z = e.mul_(z).sum(-1) if want_entropy else None
                if m is None:
                    s_sum, b = e_sum, e_z
                else:
                    scale = torch.exp(m - m_new)
                    if want_entropy:
                        b = scale * (b + (m - m_new) * s_sum) + e_z
                    s_sum = s_sum * scale + e_sum
                m = m_new
                del z, e  # free the tile before the next one is allocated
            v = valid[s:s + rows]
            ls = torch.log(s_sum)
            row_max[s:s + rows], log_sum[s:s + rows] = m, ls
            lse[s:s + rows] = torch.where(v, m + ls, 0.0)
            logp[s:s + rows] = torch.where(v, (z_y - m) - ls, 0.0).masked_fill_(bad[s:s + rows], math.nan)
            if want_entropy:
                entropy[s:s + rows] = torch.where(v, ls - b / s_sum, 0.0)
        ctx.save_for_backward(hidden, weight, targets, row_max, log_sum, entropy)
        ctx.temperature, ctx.ignore_index, ctx.tiles = temperature, ignore_index, tiles
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: no entropy work unless needed
        if not want_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy, lse

    @staticmethod
    def backward(ctx, g_logp, g_entropy, g_lse):
        hidden, weight, targets, row_max, log_sum, entropy = ctx.saved_tensors
        tau, (rows, cols) = ctx.temperature, ctx.tiles
        T, V = hidden.shape[0], weight.shape[0]
        compute = row_max.dtype
        w = weight.to(compute)
        valid = targets != ctx.ignore_index
        # ignored rows get no gradient from any output
        if g_logp is None:
            g_logp = torch.zeros_like(row_max)
        else:  # rows with an out-of-range target have NaN logp: NaN gradients through them
            g_logp = torch.where(valid, g_logp, 0.0).masked_fill_(valid & ((targets < 0) | (targets >= V)), math.nan)
        g_entropy = torch.where(valid, g_entropy, 0.0) if g_entropy is not None else None
        g_lse = torch.where(valid, g_lse, 0.0) if g_lse is not None else None
        safe = torch.where(valid, targets, 0)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dx = torch.empty(hidden.shape, dtype=compute, device=hidden.device) if need_x else None
        # the fp32 (fp64) dW accumulator is itself the returned gradient for fp32 (fp64) weights: no second copy
        dw = torch.zeros(w.shape, dtype=compute, device=hidden.device) if need_w else None
        for s in range(0, T, rows):
            x = hidden[s:s + rows].to(compute)  # (C, D)
            shift = row_max[s:s + rows, None], log_sum[s:s + rows, None]
            # dL/dz = g_logp (onehot - p) - g_H p (log p + H) + g_lse p
            coef = -g_logp[s:s + rows]
            if g_lse is not None:
                coef = coef + g_lse[s:s + rows]
            for v0 in range(0, V, cols):
                w_b = w[v0:v0 + cols]
                z = _chunk_logits(x, w_b, tau)  # (C, Vb)
                logq = z.sub_(shift[0]).sub_(shift[1])  # in place, (z - m) - log s
                if g_entropy is None:
                    dz = logq.exp_().mul_(coef[:, None])  # one (C, Vb) buffer throughout
                else:  # p (coef - g_H (log p + H)), built in place in the log p tile: two (C, Vb) buffers
                    p = torch.exp(logq)
                    dz = logq.add_(entropy[s:s + rows, None]).mul_(-g_entropy[s:s + rows, None])
                    dz = dz.add_(coef[:, None]).mul_(p)
                    del p
                index, inside = _block_targets(safe[s:s + rows], v0, dz.shape[1])
                dz.scatter_add_(-1, index, torch.where(inside, g_logp[s:s + rows], 0.0)[:, None])
                if tau != 1.0:
                    dz /= tau  # z = x w^T / tau
                if need_x:
                    if v0 == 0:
                        torch.mm(dz, w_b, out=dx[s:s + rows])  # straight into dX: no (C, D) temporary
                    else:
                        dx[s:s + rows].addmm_(dz, w_b)
                if need_w:
                    dw[v0:v0 + cols].addmm_(dz.T, x)  # dW accumulates in place (the returned grad for fp32)
                del z, logq, dz  # free the tile before the next one is allocated
        dx = dx.to(hidden.dtype) if need_x else None
        dw = dw.to(weight.dtype) if need_w else None
        return dx, dw, None, None, None, None, None


def _linear_logprobs_torch(hidden, weight, targets, temperature, ignore_index, want_entropy, chunk_size=None,
                           chunk_cols=None):
    """Tiled torch path on validated 2-d inputs; returns (logp, entropy, lse)."""
    tiles = _tiles(hidden.shape[0], weight.shape[0], chunk_size, chunk_cols)
    return _LinearLogprobsTorch.apply(hidden, weight, targets, float(temperature), int(ignore_index),
                                      bool(want_entropy), tiles)


def linear_logprobs(hidden, weight, targets, *, temperature=1.0, ignore_index=-100, return_entropy=False,
                    return_lse=False, impl="auto", strategy="auto", memory_budget=None):
    r"""Per-token log-probabilities of `targets` under the LM head `weight`, without forming the logits.

    .. math::
        \log p_t = x_t \cdot w_{y_t} / \tau - \log \sum_v e^{x_t \cdot w_v / \tau},\qquad
        H_t = \mathrm{lse}_t - \sum_v \mathrm{softmax}(x_t W^\top / \tau)_v \, x_t \cdot w_v / \tau.

    Naive equivalent: `torch.log_softmax(hidden.double() @ weight.double().T / temperature, dim=-1).gather(
    -1, targets[..., None])[..., 0]`
    on rows whose target is not `ignore_index`; those rows give 0 (logp, entropy and lse) and no gradient.
    A target outside [0, V) that is not `ignore_index` gives NaN logp for its row and NaN gradients through
    it (checked on the device, no host sync); entropy and lse do not depend on the target.
    Logits are accumulated in float32 (float64 for float64 inputs); the [T, V] logits are never stored
    (strategy "gemm" keeps one chunk of them, rounded to the input dtype as `hidden @ weight.T` is).
    Differentiable with respect to `hidden` and `weight` through every returned output.

    Args:
        temperature: the sampling temperature (> 0), applied as logits / temperature.
        return_entropy, return_lse: also return the softmax entropy H_t and the log-normaliser lse_t.
        impl: "auto" | "triton" | "torch" (see module docstring).
        strategy: "auto" | "gemm" | "fused" | "tiles", the Triton path's algorithm (see module docstring).
        memory_budget: bytes of extra memory the Triton path may use (None: env BONFAST_LOGPROB_MEMORY, else
            the strategy's default).

    Shapes:
        hidden [..., D], weight [V, D], targets [...] int64 ->
        logp [...] float32 (float64 for float64 inputs), or (logp, entropy?, lse?) in that order.
    """
    lead = _shape(hidden)[:-1] if isinstance(hidden, torch.Tensor) else None
    x, y = _check_head_inputs(hidden, weight, targets, temperature)
    _check_strategy(strategy, memory_budget)
    impl = _check_impl(impl, x, head=True) if x.shape[0] > 0 else "torch"  # nothing to launch for T = 0
    kw = dict(temperature=temperature, ignore_index=ignore_index, return_entropy=return_entropy)
    strategy = _triton_head(strategy, memory_budget, x, weight.shape[0]) if impl == "triton" else None
    if impl == "torch":
        logp, entropy, lse = _linear_logprobs_torch(x, weight, y, temperature, ignore_index, return_entropy)
    elif strategy == "gemm":
        from bonfast.kernels.logprob_gemm import linear_logprobs_gemm
        logp, entropy, lse = linear_logprobs_gemm(x, weight, y, memory_budget=memory_budget, **kw)
    elif strategy == "fused":
        from bonfast.kernels.logprob_fused import linear_logprobs_fused
        logp, entropy, lse = linear_logprobs_fused(x, weight, y, memory_budget=memory_budget, **kw)
    else:
        from bonfast.kernels.linear_logprobs import linear_logprobs as _triton_linear_logprobs
        logp, entropy, lse = _triton_linear_logprobs(x, weight, y, **kw)
    out = [logp.reshape(lead)]
    if return_entropy:
        out.append(entropy.reshape(lead))
    if return_lse:
        out.append(lse.reshape(lead))
    return out[0] if len(out) == 1 else tuple(out)


# ----------------------------------------------------------------------------------------------------------
# BoN-weighted loss


def _token_loss_torch(logp, sample_index, weights, old_logp, ref_logp, eps, kl_coef):
    """Unnormalised sum over tokens of -f_t + kl_coef * k3_t (plain torch ops, O(T) memory)."""
    dtype = torch.float64 if logp.dtype == torch.float64 else torch.float32
    valid = sample_index >= 0
    lp = torch.where(valid, logp.to(dtype), 0.0)
    w = torch.where(valid, weights.reshape(-1).to(dtype)[sample_index.clamp(min=0).long()], 0.0)
    if eps is None:
        f = w * lp
    else:
        ratio = torch.exp(lp - torch.where(valid, old_logp.to(dtype), 0.0))
        f = torch.minimum(ratio * w, ratio.clamp(1.0 - eps[0], 1.0 + eps[1]) * w)
    total = -f.sum()
    if ref_logp is not None and kl_coef != 0.0:
        d = torch.where(valid, ref_logp.to(dtype), 0.0) - lp
        total = total + kl_coef * torch.where(valid, torch.exp(d) - d - 1.0, 0.0).sum()
    return total


def bon_loss(logp, sample_index, weights, *, normaliser, old_logp=None, ref_logp=None, clip_eps=None,
             kl_coef=0.0, impl="auto"):
    r"""BoN-weighted policy-gradient loss of packed token log-probs (see `bonfast.reference.bon_loss_ref`).

    .. math::
        \mathcal{L} = -\frac{1}{N}\sum_{t:\,s(t) \ge 0} f_t + \frac{\beta}{N}\sum_{t:\,s(t) \ge 0} k3_t,\quad
        f_t = w_{s(t)} \log p_t \ \text{or}\ \min(r_t w_{s(t)}, \mathrm{clip}(r_t, 1-\epsilon, 1+\epsilon) w_{s(t)}),

    with r_t = exp(logp_t - old_logp_t) (clipped form when `old_logp` is given; `clip_eps` defaults to 0.2
    then, and may be an (eps_low, eps_high) pair), k3_t = e^{d_t} - d_t - 1, d_t = ref_logp_t - logp_t,
    beta = `kl_coef`, N = `normaliser` (a python number or 0-d tensor: a constant such as G * max_len).

    Naive equivalent: `-(torch.where(sample_index >= 0, weights.reshape(-1)[sample_index.clamp(min=0)], 0)
    * logp).sum() / normaliser`
    for the plain form (no old_logp, kl_coef = 0). Padding tokens (sample_index < 0) contribute nothing.

    Shapes:
        logp [T] float, sample_index [T] int64 (< 0 = padding), weights [S] or [G, n] (flattened; float64 is
        fine), old_logp / ref_logp [T] -> scalar float32 (float64 for float64 logp). Token tensors may also
        share any shape [...] (flattened together).
    """
    if not isinstance(logp, torch.Tensor) or logp.dim() < 1 or not logp.dtype.is_floating_point:
        got = (f"shape {_shape(logp)}, dtype {logp.dtype}" if isinstance(logp, torch.Tensor)
               else type(logp).__name__)
        raise ValueError(f"logp must be a float tensor of shape [T] (or [...], flattened); got {got}")
    for name, t in (("sample_index", sample_index), ("old_logp", old_logp), ("ref_logp", ref_logp)):
        if isinstance(t, torch.Tensor) and _shape(t) != _shape(logp):
            raise ValueError(f"{name} must have the shape of logp {_shape(logp)}; got {_shape(t)}")
    flat = [t.reshape(-1) if isinstance(t, torch.Tensor) else t for t in (logp, sample_index, old_logp, ref_logp)]
    logp, sample_index, old_logp, ref_logp = flat
    eps = _check_loss_inputs(logp.shape[0], logp.device, sample_index, weights, normaliser, old_logp, ref_logp,
                             clip_eps, kl_coef)
    impl = _check_impl(impl, logp)
    if impl == "torch":
        total = _token_loss_torch(logp, sample_index, weights, old_logp, ref_logp, eps, kl_coef)
    else:
        from bonfast.kernels.bon_loss import bon_loss_sum
        total = bon_loss_sum(logp, sample_index, weights, old_logp=old_logp, ref_logp=ref_logp, clip_eps=eps,
                             kl_coef=float(kl_coef))
    return total / normaliser


def fused_bon_loss(hidden, weight, targets, sample_index, weights, *, normaliser, temperature=1.0,
                   ignore_index=-100, old_logp=None, ref_logp=None, clip_eps=None, kl_coef=0.0, impl="auto",
                   strategy="auto", memory_budget=None):
    r"""The whole loss head in one op: hidden states + LM head + targets + per-sample weights -> BoN loss.

    Naive equivalent: `bon_loss(linear_logprobs(hidden, weight, targets, temperature=temperature),
    torch.where(targets == ignore_index, -1, sample_index), weights, normaliser=normaliser)`
    (plus the same old_logp / ref_logp / clip_eps / kl_coef): a token whose target is `ignore_index` is
    treated as padding. Neither the [T, V] logits nor per-token log-prob gradients are kept; the backward
    recomputes logit tiles and returns dX and dW directly. The per-token gradient scale dL/dlogp_t is known
    after the forward reduction and is the only [T] vector kept besides logp / lse. With the Triton
    strategy "gemm" dL/dlogp_t is used chunk by chunk inside the forward instead: the forward computes dX
    and dW (under grad mode only) and the backward scales them, so a second backward through the same
    graph raises. `strategy` and `memory_budget` as in `linear_logprobs`.

    Shapes:
        hidden [..., D], weight [V, D], targets [...] int64, sample_index [...] (< 0 = padding),
        weights [S] or [G, n] (flattened), old_logp / ref_logp [...] -> scalar float32.
    """
    x, y = _check_head_inputs(hidden, weight, targets, temperature)
    T = y.shape[0]
    si = sample_index.reshape(-1) if isinstance(sample_index, torch.Tensor) else sample_index
    old = old_logp.reshape(-1) if isinstance(old_logp, torch.Tensor) else old_logp
    ref = ref_logp.reshape(-1) if isinstance(ref_logp, torch.Tensor) else ref_logp
    if isinstance(sample_index, torch.Tensor) and _shape(sample_index) != _shape(targets):
        raise ValueError(f"sample_index must have the shape of targets {_shape(targets)}; "
                         f"got {_shape(sample_index)}")
    eps = _check_loss_inputs(T, x.device, si, weights, normaliser, old, ref, clip_eps, kl_coef)
    _check_strategy(strategy, memory_budget)
    impl = _check_impl(impl, x, head=True) if T > 0 else "torch"  # nothing to launch for T = 0
    si = torch.where(y == ignore_index, -1, si)
    strategy = _triton_head(strategy, memory_budget, x, weight.shape[0]) if impl == "triton" else None
    kw = dict(temperature=float(temperature), ignore_index=int(ignore_index), old_logp=old, ref_logp=ref,
              clip_eps=eps, kl_coef=float(kl_coef))
    if impl == "torch":
        logp = _linear_logprobs_torch(x, weight, y, temperature, ignore_index, False)[0]
        total = _token_loss_torch(logp, si, weights, old, ref, eps, kl_coef)
    elif strategy == "gemm":
        from bonfast.kernels.logprob_gemm import fused_bon_loss_sum_gemm
        total = fused_bon_loss_sum_gemm(x, weight, y, si, weights, memory_budget=memory_budget, **kw)
    elif strategy == "fused":
        from bonfast.kernels.logprob_fused import fused_bon_loss_sum_fused
        total = fused_bon_loss_sum_fused(x, weight, y, si, weights, memory_budget=memory_budget, **kw)
    else:
        from bonfast.kernels.bon_loss import fused_bon_loss_sum
        total = fused_bon_loss_sum(x, weight, y, si, weights, **kw)
    return total / normaliser


# ----------------------------------------------------------------------------------------------------------
# shared-prefix decode attention (the engine's decode step)


def _partial_attention(q, k, v, bias):
    """softmax(q @ k.T + bias) @ v and its log-sum-exp; (0, -inf) for rows with no unmasked key."""
    if k.shape[-2] == 0:
        return q.new_zeros(q.shape[:-1] + v.shape[-1:]), q.new_full(q.shape[:-1], float("-inf"))
    s = torch.matmul(q, k.transpose(-1, -2))
    if bias is not None:
        s += bias                                                   # 0 / -inf key mask
    m = s.amax(-1, keepdim=True)
    m = torch.where(m == float("-inf"), 0.0, m)                    # all-masked rows: exp(-inf) = 0 below
    p = s.sub_(m).exp_()
    total = p.sum(-1)
    o = torch.matmul(p, v) / torch.where(total > 0, total, 1.0)[..., None]
    return o, m[..., 0] + torch.log(total)


def _key_bias(lens, T, dtype):
    """0 for key positions < lens, -inf after. Shapes: lens [...] -> [..., T]."""
    valid = torch.arange(T, device=lens.device) < lens[..., None]
    return torch.zeros(valid.shape, dtype=dtype, device=lens.device).masked_fill_(~valid, float("-inf"))


def prefix_attention_torch(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens=None, *,
                           scale=None):
    """Plain PyTorch path of `prefix_attention` (fp32 math, fp64 for fp64 inputs; inputs already validated).

    The prefix part is one batched matrix product per (prompt, kv head) for all n * (Hq / Hkv) queries, the
    suffix part is per sample, and the two partial attentions are merged by their log-sum-exps:
    s_i = logsumexp(scale * q @ K_i.T), o_i = softmax(scale * q @ K_i.T) @ V_i, out = (e^{s_1} o_1 +
    e^{s_2} o_2) / (e^{s_1} + e^{s_2}). An empty part has s_i = -inf and drops out; both empty gives 0.
    """
    G, n, Hq, Dh = q.shape
    Hkv, P = prefix_k.shape[1], prefix_k.shape[2]
    t = suffix_k.shape[3]
    group = Hq // Hkv
    scale = 1.0 / math.sqrt(Dh) if scale is None else float(scale)
    cd = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf = q.to(cd) * scale
    # prefix: all n * group queries of a (prompt, kv head) against the same keys -> one batched GEMM
    qp = qf.view(G, n, Hkv, group, Dh).permute(0, 2, 1, 3, 4).reshape(G, Hkv, n * group, Dh)
    bias1 = _key_bias(prefix_lens.to(q.device), P, cd)[:, None, None, :]                       # (G, 1, 1, P)
    o1, lse1 = _partial_attention(qp, prefix_k.to(cd), prefix_v.to(cd), bias1)
    o1 = o1.view(G, Hkv, n, group, Dh).permute(0, 2, 1, 3, 4)                                  # (G, n, Hkv, grp, Dh)
    lse1 = lse1.view(G, Hkv, n, group).permute(0, 2, 1, 3)                                     # (G, n, Hkv, grp)
    # suffix: per sample
    qs = qf.view(G, n, Hkv, group, Dh)
    bias2 = None if suffix_lens is None else _key_bias(suffix_lens.to(q.device), t, cd)[:, :, None, None, :]
    o2, lse2 = _partial_attention(qs, suffix_k.to(cd), suffix_v.to(cd), bias2)
    # merge: (e^{s1} o1 + e^{s2} o2) / (e^{s1} + e^{s2}); zero where both parts are empty
    lse = torch.logaddexp(lse1, lse2)
    lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    out = torch.exp(lse1 - lse)[..., None] * o1 + torch.exp(lse2 - lse)[..., None] * o2
    return out.reshape(G, n, Hq, Dh).to(q.dtype).contiguous()


def _check_prefix_attention_inputs(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens):
    if q.dim() != 4:
        raise ValueError(f"q: expected [G, n, Hq, Dh], got shape {tuple(q.shape)}")
    G, n, Hq, Dh = q.shape
    if prefix_k.dim() != 4 or prefix_k.shape[0] != G or prefix_k.shape[3] != Dh:
        raise ValueError(f"prefix_k: expected [G={G}, Hkv, P, Dh={Dh}], got shape {tuple(prefix_k.shape)}")
    Hkv = prefix_k.shape[1]
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(f"prefix_k: Hkv={Hkv} kv heads must divide Hq={Hq} query heads")
    if prefix_v.shape != prefix_k.shape:
        raise ValueError(f"prefix_v: expected shape {tuple(prefix_k.shape)}, got {tuple(prefix_v.shape)}")
    if prefix_lens.shape != (G,) or prefix_lens.is_floating_point():
        raise ValueError(f"prefix_lens: expected integer [G={G}], got {prefix_lens.dtype} {tuple(prefix_lens.shape)}")
    if suffix_k.dim() != 5 or suffix_k.shape[:3] != (G, n, Hkv) or suffix_k.shape[4] != Dh:
        raise ValueError(f"suffix_k: expected [G={G}, n={n}, Hkv={Hkv}, t, Dh={Dh}], got {tuple(suffix_k.shape)}")
    if suffix_v.shape != suffix_k.shape:
        raise ValueError(f"suffix_v: expected shape {tuple(suffix_k.shape)}, got {tuple(suffix_v.shape)}")
    if suffix_lens is not None and (suffix_lens.shape != (G, n) or suffix_lens.is_floating_point()):
        raise ValueError(f"suffix_lens: expected integer [G={G}, n={n}] or None, got "
                         f"{suffix_lens.dtype} {tuple(suffix_lens.shape)}")
    for name, x in (("prefix_k", prefix_k), ("prefix_v", prefix_v), ("suffix_k", suffix_k), ("suffix_v", suffix_v)):
        if x.dtype != q.dtype or x.device != q.device:
            raise ValueError(f"{name}: expected dtype {q.dtype} on {q.device} like q, got {x.dtype} on {x.device}")


def prefix_attention(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens=None, *,
                     scale=None, impl="auto"):
    """Decode attention of n samples per prompt over a shared prompt prefix and per-sample suffixes.

    Equals `softmax(scale * q @ cat([prefix_k, suffix_k]).T) @ cat([prefix_v, suffix_v])` per (prompt,
    sample, head), with the first prefix_lens[g] prefix keys and first suffix_lens[g, s] suffix keys valid
    (GQA: query head h reads kv head h // (Hq / Hkv)); see `prefix_attention_torch` for the merge.

    Args:
        scale: softmax scale, default 1 / sqrt(Dh).
        impl: "triton" (CUDA, or CPU tensors under TRITON_INTERPRET=1; fp16 / bf16 / fp32), "torch", or
            "auto" (Triton for CUDA tensors of those dtypes, PyTorch otherwise).
    Length values are not range-checked (that would sync the host): keep 0 <= prefix_lens <= P and
    0 <= suffix_lens <= t.

    Shapes:
        q [G, n, Hq, Dh]; prefix_k, prefix_v [G, Hkv, P, Dh]; prefix_lens [G];
        suffix_k, suffix_v [G, n, Hkv, t, Dh]; suffix_lens [G, n] or None (all t valid) -> out [G, n, Hq, Dh]
    """
    _check_prefix_attention_inputs(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens)
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"impl: expected 'auto', 'triton' or 'torch', got {impl!r}")
    triton_dtypes = (torch.float32, torch.float16, torch.bfloat16)
    if impl == "auto":
        impl = "triton" if q.is_cuda and q.dtype in triton_dtypes else "torch"
    if impl == "torch":
        return prefix_attention_torch(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens,
                                      scale=scale)
    if q.dtype not in triton_dtypes:
        raise ValueError(f"q: impl='triton' supports float32 / float16 / bfloat16, got {q.dtype}")
    from bonfast.kernels.prefix_attention import prefix_attention_fwd  # lazy: triton is optional on CPU
    return prefix_attention_fwd(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, suffix_lens, scale=scale)
