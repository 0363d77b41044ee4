"""Shared-prefix packing: score n responses per prompt while computing the prompt once.

A packed row holds one prompt and its n responses, `[p, r_1, ..., r_n]` (rows right-padded to the
longest). Positions of every `r_i` restart at `P = len(p)`, and attention is restricted so that

    prompt token t   sees prompt tokens s <= t
    token t of r_i   sees the whole prompt and tokens s <= t of r_i only

which makes each `r_i`'s hidden states exactly those of the separate sequence `p + r_i`. The first
token of `r_i` is predicted from the last prompt token's hidden state, which all `r_i` share: `resp_rows`
gathers that row once per response. Forward and backward cost `P + n L` tokens instead of `n (P + L)`.

Attention implementations (all differentiable, none through a log-sum-exp merge, whose flash-attn
gradient is not implemented):
  * concat (default, any backend): prompt queries run causal attention over the prompt; queries of
    `r_i` run over `[prompt K/V ; r_i K/V]` with a bottom-right causal mask (Prefix Grouper style).
  * dense: one bool mask over the whole packed row, for any backend that takes masks.
  * flex: a FlexAttention block mask over the packed row (empty blocks are skipped on GPU).

Shapes: G prompts, n responses each, B rows (G packed, G*n duplicated), T row length,
T_resp = total response tokens, D width, V vocab.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from bonfast.attention import BACKENDS, CausalAttention, attention, flex_block_attention, resolve_backend
from bonfast.precision import Precision, for_model


@dataclass
class PackedBatch:
    """Token rows plus everything the loss head and the packed attention need.

    Shapes:
        input_ids, positions, segment: Long [B, T]   (segment: -1 pad, 0 prompt, i+1 response i)
        resp_rows, targets, sample_index: Long [T_resp]   (resp_rows index hidden.view(B*T, D))
        prompt_lens: Long [G]    resp_lens: Long [G, n]
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    segment: torch.Tensor
    resp_rows: torch.Tensor
    targets: torch.Tensor
    sample_index: torch.Tensor
    prompt_lens: torch.Tensor
    resp_lens: torch.Tensor
    n: int
    shared: bool  # True: one row per prompt; False: one row per prompt + response (the duplicated baseline)
    lengths: list  # resp_lens as python ints [G][n], to split results without a device sync
    prompts: list  # the token lists this batch was built from (host; for the duplicated fallback)
    responses: list
    pad_id: int
    prompt_slots: int = 0  # concat plan: Pm = max prompt length (prompt slots = first Pm columns of a row)
    resp_slots: int = 0  # Rm = max response length (>= 1)
    resp_idx: torch.Tensor | None = None  # [G*n*Rm] flat rows of response slots (pad slots -> row 0 of the row)
    resp_mask: torch.Tensor | None = None  # bool [G*n, 1, Rm, Pm+Rm], None when all lengths agree (pure causal)
    out_src: torch.Tensor | None = None  # [B*T] where each packed position reads its concat output

    def to(self, device) -> "PackedBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in moved.items():
            if isinstance(v, torch.Tensor):
                moved[k] = v.to(device, non_blocking=True)
        return PackedBatch(**moved)

    def unshared(self) -> "PackedBatch":
        """The same samples in the duplicated layout (one row per prompt + response), on the same device.

        Targets and sample_index keep their order, so results of either layout line up token for token.
        """
        if not self.shared:
            return self
        return pack(self.prompts, self.responses, pad_id=self.pad_id, share_prefix=False).to(self.input_ids.device)

    def dense_mask(self) -> torch.Tensor:
        """bool [B, 1, T, T]: causal in row order, and a key is visible iff it is prompt or same segment."""
        seg = self.segment
        T = seg.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=seg.device).tril()
        same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # (B, Tq, Tk)
        return (same & causal)[:, None]


def _validate(prompts, responses):
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    if not isinstance(responses, (list, tuple)) or len(responses) != len(prompts):
        got = len(responses) if hasattr(responses, "__len__") else "?"
        raise ValueError(f"responses must be a list of {len(prompts)} lists (one per prompt), got "
                         f"{type(responses).__name__} of length {got}")
    n = len(responses[0]) if isinstance(responses[0], (list, tuple)) else -1
    for g, (p, rs) in enumerate(zip(prompts, responses)):
        if not isinstance(p, (list, tuple)) or len(p) == 0:
            raise ValueError(f"prompts[{g}] must be a non-empty list of token ids (its last token predicts "
                             "the first response token)")
        if not isinstance(rs, (list, tuple)) or len(rs) != n or n < 1:
            raise ValueError(f"responses[{g}] must be a list of n={max(n, 1)} responses like responses[0], got "
                             f"{len(rs) if isinstance(rs, (list, tuple)) else type(rs).__name__}")
        for i, r in enumerate(rs):
            if not isinstance(r, (list, tuple)):
                raise ValueError(f"responses[{g}][{i}] must be a list of token ids, got {type(r).__name__}")
    return n


def pack(prompts: list[list[int]], responses: list[list[list[int]]], *, pad_id: int = 0,
         share_prefix: bool = True) -> PackedBatch:
    """Pack G prompts with n responses each (CPU tensors; move with `.to(device)`).

    `share_prefix=True`: one row `[p_g, r_g1, ..., r_gn]` per prompt, r_gi positions restarting at
    len(p_g). `share_prefix=False`: the naive layout, one row `[p_g, r_gi]` per sample (for models
    without prefix sharing and as the reference). Targets are the response tokens, in the order
    (g, i, j); `sample_index = g * n + i`. Empty responses are allowed (they contribute no tokens).
    """
    n = _validate(prompts, responses)
    G = len(prompts)
    P = [len(p) for p in prompts]
    L = [[len(r) for r in rs] for rs in responses]
    if share_prefix:
        rows = [list(p) + [t for r in rs for t in r] for p, rs in zip(prompts, responses)]
    else:
        rows = [list(p) + list(r) for p, rs in zip(prompts, responses) for r in rs]
    B, T = len(rows), max(len(r) for r in rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    resp_rows, targets, sidx = [], [], []
    for g in range(G):
        for b in ([g] if share_prefix else range(g * n, g * n + n)):
            ids[b, :len(rows[b])] = torch.tensor(rows[b], dtype=torch.long)
            pos[b, :P[g]] = torch.arange(P[g])
            seg[b, :P[g]] = 0
        start = P[g]
        for i in range(n):
            b = g if share_prefix else g * n + i
            s = start if share_prefix else P[g]
            pos[b, s:s + L[g][i]] = torch.arange(P[g], P[g] + L[g][i])
            seg[b, s:s + L[g][i]] = i + 1 if share_prefix else 1
            # token j of r_i is predicted by the hidden row before it: the last prompt token for j = 0
            if L[g][i]:
                resp_rows += [b * T + P[g] - 1] + [b * T + s + j for j in range(L[g][i] - 1)]
            targets += list(responses[g][i])
            sidx += [g * n + i] * L[g][i]
            start += L[g][i]
    tmin = min((t for r in rows for t in r), default=0)
    if tmin < 0:
        raise ValueError(f"token ids must be >= 0, found {tmin}")
    batch = PackedBatch(ids, pos, seg, torch.tensor(resp_rows, dtype=torch.long),
                        torch.tensor(targets, dtype=torch.long), torch.tensor(sidx, dtype=torch.long),
                        torch.tensor(P), torch.tensor(L, dtype=torch.long).view(G, n), n, share_prefix, L,
                        prompts, responses, pad_id)
    if share_prefix:
        _concat_plan(batch, P, L)
    return batch


def _concat_plan(batch: PackedBatch, P: list[int], L: list[list[int]]) -> None:
    """Index tensors of the concat layout: prompt slots [G, Pm], response slots [G*n, Rm], and back.

    With equal prompt and response lengths the layout is a pure reshape and `resp_mask` stays None.
    """
    G, n, T = len(P), batch.n, batch.input_ids.shape[1]
    Pm, Rm = max(P), max(max(ls) for ls in L)
    uniform = len(set(P)) == 1 and len({x for ls in L for x in ls}) == 1 and Rm > 0
    Rm = max(Rm, 1)
    p = torch.arange(Pm)
    P_t, L_t = torch.tensor(P), torch.tensor(L).view(G, n)
    starts = P_t[:, None] + torch.cumsum(L_t, 1) - L_t  # (G, n) first column of r_i in the row
    j = torch.arange(Rm)
    real = j[None, None] < L_t[..., None]  # (G, n, Rm)
    row0 = torch.arange(G)[:, None, None] * T
    resp_idx = torch.where(real, row0 + starts[..., None] + j, row0).reshape(-1)  # (G*n*Rm,)
    out_src = torch.zeros(G, T, dtype=torch.long)
    out_src[:, :Pm] = torch.arange(G)[:, None] * Pm + p
    slot = G * Pm + (torch.arange(G * n).view(G, n, 1) * Rm + j)  # (G, n, Rm) slot in the concat output
    gi = torch.arange(G)[:, None, None].expand(G, n, Rm)
    out_src[gi[real], (starts[..., None] + j).expand(G, n, Rm)[real]] = slot[real]
    out_src[batch.segment < 0] = 0  # padding reads an arbitrary slot; nothing real ever attends to it
    if not uniform:
        kp = p[None, None, :] < P_t[:, None, None]  # (G, 1, Pm) prompt keys that exist
        kp = kp.expand(G, n, Pm).reshape(G * n, 1, 1, Pm).expand(G * n, 1, Rm, Pm)
        own = (j[None, :] <= j[:, None])[None, None] & real.view(G * n, 1, 1, Rm)  # (G*n, 1, Rm, Rm)
        batch.resp_mask = torch.cat([kp, own.expand(G * n, 1, Rm, Rm)], dim=-1)
    batch.prompt_slots, batch.resp_slots = Pm, Rm
    batch.resp_idx, batch.out_src = resp_idx, out_src.reshape(-1)


class PackedAttention:
    """`AttentionFn` of a shared-prefix `PackedBatch` (see the module docstring for the three layouts).

    `backend`: "auto" | "sdpa" | "flex" | "flash" | "xformers". "flex" uses a block mask over the packed
    row (forward only on CPU, a torch limitation); the others use the concat layout, or with
    `layout="dense"` one bool mask over the packed row (not with flash, which takes no masks; flash also
    needs equal prompt and response lengths in the concat layout).
    """

    def __init__(self, batch: PackedBatch, backend: str = "auto", layout: str = "concat"):
        if not batch.shared:
            raise ValueError("PackedAttention needs a shared-prefix batch (pack(..., share_prefix=True)); "
                             "use CausalAttention for share_prefix=False rows")
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
        if layout not in ("concat", "dense"):
            raise ValueError(f"layout must be 'concat' or 'dense', got {layout!r}")
        self.batch, self.backend, self.layout = batch, backend, layout
        self._block_mask = None
        self._dense = None

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b = self.batch
        if q.shape[:2] != b.input_ids.shape:
            raise ValueError(f"PackedAttention: q must be [{b.input_ids.shape[0]}, {b.input_ids.shape[1]}, Hq, Dh] "
                             f"like the packed batch, got {tuple(q.shape)}")
        name = resolve_backend(self.backend, q, has_mask=b.resp_mask is not None or self.layout == "dense")
        if name == "flex":
            return flex_block_attention(q, k, v, self._flex_mask())
        if self.layout == "dense":
            if self._dense is None:
                self._dense = b.dense_mask()
            return attention(q, k, v, mask=self._dense, backend=name)
        return self._concat(q, k, v, name)

    def _concat(self, q, k, v, backend):
        b = self.batch
        G, T, Hq, Dh = q.shape
        Hkv, n = k.shape[2], b.n
        Pm, Rm = b.prompt_slots, b.resp_slots
        # prompt slots are the first Pm columns of every row (slots past P_g are masked out or unused)
        qp, kp, vp = q[:, :Pm], k[:, :Pm], v[:, :Pm]  # (G, Pm, H, Dh) views
        out_p = attention(qp, kp, vp, causal=True, backend=backend)  # rows past P_g unused
        if b.resp_mask is None:  # equal lengths: row = [p, r_1..r_n] exactly, responses are a reshape
            qr = q[:, Pm:].reshape(G * n, Rm, Hq, Dh)
            kr, vr = k[:, Pm:].reshape(G * n, Rm, Hkv, Dh), v[:, Pm:].reshape(G * n, Rm, Hkv, Dh)
        else:
            qr = q.reshape(G * T, Hq, Dh)[b.resp_idx].view(G * n, Rm, Hq, Dh)
            kr = k.reshape(G * T, Hkv, Dh)[b.resp_idx].view(G * n, Rm, Hkv, Dh)
            vr = v.reshape(G * T, Hkv, Dh)[b.resp_idx].view(G * n, Rm, Hkv, Dh)
        kr = torch.cat([kp.repeat_interleave(n, 0), kr], 1)  # (G*n, Pm+Rm, Hkv, Dh): [prompt ; own]
        vr = torch.cat([vp.repeat_interleave(n, 0), vr], 1)
        if b.resp_mask is None:
            out_r = attention(qr, kr, vr, causal=True, backend=backend)  # bottom-right causal
            return torch.cat([out_p, out_r.view(G, n * Rm, Hq, Dh)], 1)
        out_r = attention(qr, kr, vr, mask=b.resp_mask, backend=backend)
        flat = torch.cat([out_p.reshape(G * Pm, Hq, Dh), out_r.reshape(G * n * Rm, Hq, Dh)])
        return flat[b.out_src].view(G, T, Hq, Dh)

    def _flex_mask(self):
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask
            seg = self.batch.segment
            B, T = seg.shape

            def mask_mod(bi, h, t, s):
                ss = seg[bi, s]
                return (s <= t) & ((ss == 0) | (ss == seg[bi, t]))
            self._block_mask = create_block_mask(mask_mod, B, None, T, T, device=seg.device)
        return self._block_mask


def _policy(model, precision, autocast) -> Precision:
    """The model's concrete precision policy; `autocast` (kept for older callers) overrides `precision`:
    False is "fp32", True is "bf16"."""
    if autocast is not None:
        precision = "bf16" if autocast else "fp32"
    return for_model(model, precision)


def packed_hidden(model, batch: PackedBatch, *, backend: str = "auto", layout: str = "concat",
                  precision: str = "auto", autocast: bool | None = None) -> torch.Tensor:
    """Hidden states [T_resp, D] that predict `batch.targets` (graph kept, for the fused loss head).

    Models without prefix sharing (`HFAdapter`) run the duplicated layout of the same batch. The model body runs
    under the precision policy (`bonfast.precision`): "auto" is bf16 autocast on CUDA, float32 elsewhere; the
    result is in the residual stream's dtype (float32 for a float32 model under either policy).

    Shapes:
        returns [T_resp, D]; row k predicts batch.targets[k] of sample batch.sample_index[k].
    """
    if batch.shared and not model.supports_prefix_sharing:
        batch = batch.unshared()  # e.g. HFAdapter: one row per sample, same target order
    attn = PackedAttention(batch, backend, layout) if batch.shared else CausalAttention(backend)
    with _policy(model, precision, autocast).autocast():
        h = model.hidden(batch.input_ids, batch.positions, attn)  # (B, T, D)
    return h.reshape(-1, h.shape[-1])[batch.resp_rows]  # (T_resp, D); shared last-prompt rows repeat


def packed_logprobs(model, batch: PackedBatch, temperature: float = 1.0, *, impl: str = "auto",
                    backend: str = "auto", layout: str = "concat", precision: str = "auto",
                    autocast: bool | None = None):
    """Per-token log-probs of every response token, with the graph kept for training.

    `logp[k] = log softmax(h_k W^T / temperature)[targets[k]]` through `bonfast.ops.linear_logprobs`
    (logits never formed), h_k the hidden row before the target. `precision` ("auto" | "fp32" | "bf16", see
    `bonfast.precision`): under bf16 the loss head gets bf16 h and a bf16 cast of W (the gradient reaches the
    fp32 W through the cast) and accumulates in fp32. `autocast=False` / `True` is the older spelling of
    precision "fp32" / "bf16".

    Shapes:
        returns (logp [T_resp] float32, sample_index [T_resp] int64)
    """
    from bonfast.ops import linear_logprobs
    policy = _policy(model, precision, autocast)
    h = packed_hidden(model, batch, backend=backend, layout=layout, precision=policy)
    h, w = policy.head_inputs(h, model.lm_head_weight)  # (T_resp, D), (V, D) in the compute dtype
    logp = linear_logprobs(h, w, batch.targets, temperature=temperature, impl=impl)
    return logp, batch.sample_index


def score(model, prompts: list[list[int]], responses: list[list[list[int]]], *, temperature: float = 1.0,
          impl: str = "auto", backend: str = "auto", precision: str = "auto") -> list[list[torch.Tensor]]:
    """Per-token log-probs of n responses per prompt, each prompt computed once (no gradient).

    `score(...)[g][i][j] = log p(responses[g][i][j] | prompts[g] + responses[g][i][:j]) ` at the given
    temperature. Models without prefix sharing (`HFAdapter`) are scored with one row per sample. `precision`
    as in `packed_logprobs` (the engine's `precision` for the same model gives the same policy).

    Shapes:
        returns G lists of n float32 tensors [L_gi] on the model's device.
    """
    device = model.lm_head_weight.device
    batch = pack(prompts, responses, share_prefix=model.supports_prefix_sharing).to(device)
    with torch.no_grad():
        logp, _ = packed_logprobs(model, batch, temperature, impl=impl, backend=backend, precision=precision)
    parts = iter(torch.split(logp, [x for ls in batch.lengths for x in ls]))
    return [[next(parts) for _ in ls] for ls in batch.lengths]
