"""N-sample generation with a shared-prefix KV cache: prefill each prompt once, decode n samples against it.

    prompts (G) --prefill once, ragged, right-padded--> prefix K/V [G, Hkv, P, Dh] per layer + first logits
               --n samples per prompt, one token per step--> suffix K/V [G, n, Hkv, L, Dh] per layer
               --attention = prefix part (one GEMM per prompt and kv head) (+) suffix part, LSE-merged
                 (bonfast.ops.prefix_attention)--> logits [B, V] --sampler--> tokens, log-probs

KV memory is `P + n*L` tokens per prompt instead of the `n*(P+L)` of `generate(num_return_sequences=n)`,
and prefill costs n times fewer FLOPs. Finished samples leave the active set (the model runs only on
active rows, and the cache layout is compacted once more than a quarter of its slots are dead). The host
reads the finished flags every step on CPU and every 4 steps on CUDA (one small device-to-host copy;
tokens drawn after a stop are discarded). A model without prefix sharing (`bonfast.model.HFAdapter`) is
decoded through transformers' own cache, forked n ways after one prefill per prompt.

Sampling. For logits z of one row at temperature T > 0, the distribution is softmax(z / T), truncated by
top-k (keep the k largest), then top-p (keep the smallest set of most likely tokens whose mass reaches
top_p), renormalised; the token is drawn by inverting its CDF in vocabulary order at one uniform u.
`u` is a counter-based hash of (seed, prompt content, occurrence of that prompt in the call, sample
index, step): a sample's random stream does not depend on which other prompts share the batch, and a
naive per-sample decoder that uses `sample_uniforms` + `sample_from_logits` draws the same tokens.
Reported log-probs are `log_softmax(z / T)[token]`, of the tempered distribution BEFORE top-k / top-p
truncation (what a trainer at the same temperature recomputes). T = 0 is greedy (argmax) and reports
`log_softmax(z)[token]` of the untempered distribution.

Policy versions. The engine keeps the prefill results of recent prompts (`prefix_cache_tokens`) between
calls. They are keyed by `policy_version`: `update_policy()` (the trainer calls it after each optimizer
step) bumps it and drops every cache, and so does any in-place change of the model's parameters that the
engine sees through their autograd version counters (optimizer steps, `load_state_dict`). Edits through
`param.data` are invisible to those counters: call `update_policy()` after them.
"""
from __future__ import annotations

import hashlib
import inspect
import math
import numbers
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bonfast._validation import expected
from bonfast.attention import attention
from bonfast.ops import prefix_attention
from bonfast.precision import check_precision, for_model

_MASK32 = 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------------
# results


def _progress_bar(*, total: int, desc: str, disable: bool, leave: bool):
    """A tqdm bar over decode steps; a no-op when disabled or without tqdm (it comes with the `train` extra)."""
    if not disable:
        try:
            from tqdm.auto import tqdm
            return tqdm(total=total, desc=desc, leave=leave)
        except ImportError:
            pass
    return _NoBar()


class _NoBar:
    """The part of tqdm's interface the engine uses, doing nothing."""

    def update(self, k: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Rollouts:
    """Samples of `Engine.sample`: G prompts x n samples each.

    tokens[g][s]        generated token ids (the stop token included when one was hit)
    logprobs[g][s]      float32 CPU tensor [len], log_softmax(logits / T) of each sampled token, before
                        top-k / top-p truncation (T = 0: the untempered distribution)
    lengths             Long [G, n], len(tokens[g][s])
    finish_reasons[g][s]  "stop" (a stop token was sampled) or "length" (max_new_tokens reached)
    policy_version      the engine's policy version the samples were drawn with
    """

    tokens: list[list[list[int]]]
    logprobs: list[list[torch.Tensor]]
    lengths: torch.Tensor
    finish_reasons: list[list[str]]
    policy_version: int
    stats: dict = field(default_factory=dict)  # prefill / decode counters and KV-cache bytes of the call

    def padded(self, pad_id: int = 0):
        """tokens Long [G, n, L], logprobs float32 [G, n, L] (0 at padding), mask bool [G, n, L]."""
        G, n = self.lengths.shape
        L = max(int(self.lengths.max()), 1)
        tokens = torch.full((G, n, L), pad_id, dtype=torch.long)
        logprobs = torch.zeros(G, n, L)
        for g in range(G):
            for s in range(n):
                k = len(self.tokens[g][s])
                tokens[g, s, :k] = torch.tensor(self.tokens[g][s], dtype=torch.long)
                logprobs[g, s, :k] = self.logprobs[g][s]
        mask = torch.arange(L) < self.lengths[..., None]
        return tokens, logprobs, mask


# ---------------------------------------------------------------------------------------------------------
# sampling: counter-based uniforms and inverse-CDF draws


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for int64 x in [0, 2^32), without overflowing int64 (split c in 16-bit halves)."""
    lo = x * (c & 0xFFFF)
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift / multiply rounds); a bijection with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def sample_keys(seed: int, prompts: list[list[int]], n: int) -> torch.Tensor:
    """Per-sample stream keys Long [G, n, 2] (two 32-bit words) from (seed, prompt content, occurrence, s).

    The k-th occurrence of the same prompt in one call gets its own keys, so duplicated prompts give
    different samples; prompt position in the list plays no part, so batching does not change a stream.
    """
    seen: dict[tuple, int] = {}
    keys = torch.empty(len(prompts), n, 2, dtype=torch.long)
    for g, prompt in enumerate(prompts):
        content = tuple(prompt)
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        base = hashlib.blake2b(digest_size=16)
        base.update(int(seed).to_bytes(16, "little", signed=True))
        base.update(occurrence.to_bytes(8, "little"))
        base.update(torch.tensor(prompt, dtype=torch.int64).numpy().tobytes())
        for s in range(n):
            h = base.copy()
            h.update(s.to_bytes(8, "little"))
            d = h.digest()
            keys[g, s, 0] = int.from_bytes(d[:4], "little")
            keys[g, s, 1] = int.from_bytes(d[4:8], "little")
    return keys


def sample_uniforms(keys: torch.Tensor, steps: int) -> torch.Tensor:
    """Float64 uniforms in (0, 1) [..., steps] with 53 random bits: u[..., t] = hash(keys[...], t).

    Shapes: keys Long [..., 2] -> [..., steps]
    """
    k0, k1 = keys[..., 0:1], keys[..., 1:2]
    t = torch.arange(steps, device=keys.device, dtype=torch.long)

    def word(j):
        return _mix32(k0 ^ _mix32(k1 ^ _mix32(2 * t + j)))
    hi, lo = word(0) >> 5, word(1) >> 6                     # 27 + 26 bits
    return ((hi * (1 << 26) + lo).to(torch.float64) + 0.5) / 2.0**53


def _inverse_cdf(probs: torch.Tensor, u: torch.Tensor, block: int = 256) -> torch.Tensor:
    """Per row, the first token whose cumulative mass exceeds u * (total mass), in vocabulary order.

    Two levels (a float64 cumsum of block sums, then a cumsum inside the one chosen block) instead of a
    sequential cumsum over the whole vocabulary. Tokens with zero mass are never returned.
    Shapes: probs [B, V] (unnormalised, >= 0), u float64 [B] -> Long [B]
    """
    B, V = probs.shape
    nb = -(-V // block)
    p = (probs if nb * block == V else F.pad(probs, (0, nb * block - V))).view(B, nb, block)   # (B, nb, block)
    block_cdf = p.sum(-1).double().cumsum(-1)                               # (B, nb)
    total = block_cdf[:, -1:]
    x = torch.minimum(u.to(total)[:, None] * total, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(block_cdf, x, right=True).clamp_max(nb - 1)    # (B, 1): first block with cdf > x
    base = torch.where(b > 0, block_cdf.gather(-1, (b - 1).clamp_min(0)), 0.0)
    within = p.gather(1, b[:, :, None].expand(B, 1, block))[:, 0].double()   # (B, block)
    j = torch.searchsorted(base + within.cumsum(-1), x, right=True)[:, 0]
    # float64 rounding can put x past the block's last cumulative value: fall back to its last token with mass
    last = torch.where(within > 0, torch.arange(block, device=p.device), -1).amax(-1)
    return b[:, 0] * block + torch.minimum(j, last)


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, *, temperature: float = 1.0, top_p: float = 1.0,
                       top_k: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row by inverting the truncated tempered CDF at u; see the module docstring.

    Returns (tokens Long [B], logprobs float32 [B]) with logprobs = log_softmax(logits / T)[token], before
    truncation (T = 0: argmax and log_softmax(logits)[token]). Row-wise only: a row's draw never depends
    on the other rows.

    Shapes: logits [B, V] (any float dtype), u float64 [B]
    """
    z = logits.float()
    if temperature == 0:
        tokens = z.argmax(-1)
        return tokens, (z.gather(-1, tokens[:, None]) - torch.logsumexp(z, -1, keepdim=True))[:, 0]
    if temperature != 1:
        z = z / temperature
    probs = full = torch.softmax(z, -1)                                     # (B, V), one fused pass
    V = probs.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        probs = torch.where(z >= kth, probs, 0.0)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True, stable=True)
        sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p             # mass before the token < top_p
        probs = torch.where(torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted), probs, 0.0)
    tokens = _inverse_cdf(probs, u)
    # log of the drawn token's untruncated probability (> 0: zero-mass tokens are never drawn)
    return tokens, full.gather(-1, tokens[:, None])[:, 0].log()


# ---------------------------------------------------------------------------------------------------------
# attention functions the model calls: prefill (causal, stores the prefix) and decode (prefix + suffix)


class _PrefillAttention:
    """Causal self-attention over right-padded prompts (real tokens never see the padding after them),
    keeping every layer's K/V. Shapes: q [B, P, Hq, Dh], k/v [B, P, Hkv, Dh]."""

    def __init__(self):
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def __call__(self, layer_idx, q, k, v):
        self.k.append(k)
        self.v.append(v)
        return attention(q, k, v, causal=True)


class _DecodeCache:
    """Per-layer prefix K/V [G', Hkv, P, Dh] and suffix K/V [G', n', Hkv, L-1, Dh] in a dense (prompt, slot)
    layout; active row r lives in slot `slot[r]` (flat index g' * n' + s')."""

    def __init__(self, prefix_k, prefix_v, prefix_lens, n, capacity):
        self.prefix_k, self.prefix_v, self.prefix_lens = prefix_k, prefix_v, prefix_lens
        self.G, self.n, self.capacity = prefix_lens.shape[0], n, capacity
        self.suffix_k = [pk.new_empty(self.G * n, pk.shape[1], capacity, pk.shape[3]) for pk in prefix_k]
        self.suffix_v = [pv.new_empty(self.G * n, pv.shape[1], capacity, pv.shape[3]) for pv in prefix_v]

    def nbytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in self.prefix_k + self.prefix_v + self.suffix_k + self.suffix_v)

    def relayout(self, prompt_src: torch.Tensor, slot_src: torch.Tensor, n: int, written: int):
        """Keep prompts `prompt_src` [G''] and slots `slot_src` [G'' * n] (old flat indices); copy `written` steps."""
        self.prefix_k = [x.index_select(0, prompt_src) for x in self.prefix_k]
        self.prefix_v = [x.index_select(0, prompt_src) for x in self.prefix_v]
        self.prefix_lens = self.prefix_lens.index_select(0, prompt_src)
        self.G, self.n = prompt_src.shape[0], n
        for buf in (self.suffix_k, self.suffix_v):
            for i, old in enumerate(buf):
                new = old.new_empty(self.G * n, old.shape[1], self.capacity, old.shape[3])
                new[:, :, :written] = old[slot_src, :, :written]
                buf[i] = new


class _DecodeAttention:
    """One decode step at suffix position t: append k/v of the active rows, attend to prefix + suffix[:t+1]."""

    def __init__(self, cache: _DecodeCache, slot: torch.Tensor, t: int, impl: str):
        self.cache, self.slot, self.t, self.impl = cache, slot, t, impl

    def __call__(self, layer_idx, q, k, v):
        c, t = self.cache, self.t
        c.suffix_k[layer_idx][self.slot, :, t] = k[:, 0]
        c.suffix_v[layer_idx][self.slot, :, t] = v[:, 0]
        B, _, Hq, Dh = q.shape
        Hkv = k.shape[2]
        q_dense = q.new_zeros(c.G * c.n, Hq, Dh)                      # dead slots get q = 0 (ignored)
        q_dense[self.slot] = q[:, 0]
        sk = c.suffix_k[layer_idx].view(c.G, c.n, Hkv, c.capacity, Dh)[:, :, :, :t + 1]
        sv = c.suffix_v[layer_idx].view(c.G, c.n, Hkv, c.capacity, Dh)[:, :, :, :t + 1]
        out = prefix_attention(q_dense.view(c.G, c.n, Hq, Dh), c.prefix_k[layer_idx], c.prefix_v[layer_idx],
                               c.prefix_lens, sk, sv, None, impl=self.impl)
        return out.reshape(c.G * c.n, Hq, Dh)[self.slot][:, None]     # (B, 1, Hq, Dh)


@dataclass
class _Prefix:
    """Prefill result of one prompt: per-layer K/V [Hkv, P, Dh] and the next-token logits [V] (float32)."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    logits: torch.Tensor

    @property
    def length(self) -> int:
        return self.k[0].shape[1]


class _Draws:
    """Per-sample outputs on the device: tokens Long [N, L], logprobs float32 [N, L], lengths Long [N] and
    finished bool [N] (a stop token was drawn), N = G * n; uniforms u float64 [N, L]."""

    def __init__(self, u: torch.Tensor, stop_ids: tuple, sampling: dict, on_step=None):
        N, L = u.shape
        self.u, self.sampling, self.on_step = u, sampling, on_step
        self.stop = torch.tensor(stop_ids, dtype=torch.long, device=u.device)
        self.tokens = torch.zeros(N, L, dtype=torch.long, device=u.device)
        self.logprobs = torch.zeros(N, L, dtype=torch.float32, device=u.device)
        self.lengths = torch.full((N,), L, dtype=torch.long, device=u.device)
        self.finished = torch.zeros(N, dtype=torch.bool, device=u.device)

    def record(self, t: int, rows: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Draw token t of the samples `rows` [B] from their logits [B, V]; returns the tokens [B]."""
        if self.on_step is not None:
            self.on_step(t, rows, logits)
        tok, lp = sample_from_logits(logits, self.u[rows, t], **self.sampling)
        self.tokens[rows, t], self.logprobs[rows, t] = tok, lp
        hit = torch.isin(tok, self.stop) & ~self.finished[rows]      # rows already finished keep their length
        self.lengths[rows] = torch.where(hit, t + 1, self.lengths[rows])
        self.finished[rows] |= hit
        return tok


# ---------------------------------------------------------------------------------------------------------
# the engine


class Engine:
    """N-sample generation from a bonfast `Transformer` with a shared-prefix KV cache.

    Args:
        model: a bonfast `Transformer` (`hidden(input_ids, positions, attn)`, `lm_head_weight`,
            `supports_prefix_sharing = True`), or a `bonfast.model.HFAdapter`, which decodes without prefix
            sharing through the wrapped model's own cache (same sampler, same random streams).
        device: where to run (the model is moved there); default the model's device.
        progress: show a tqdm bar over decode steps.
        prefix_cache_tokens: prompt tokens whose prefill results are kept between calls (LRU), valid for
            the current policy version only; 0 turns the cache off.
        prefill_tokens: token budget of one prefill batch (prompts are grouped up to it).
        attention_impl: "auto" | "triton" | "torch", passed to `prefix_attention`.
        precision: "auto" | "fp32" | "bf16" (`bonfast.precision`; "auto" is bf16 on CUDA). Under bf16 the model
            runs under bf16 autocast: the KV cache is bf16, prefix attention takes its 16-bit path, and logits
            are bf16 hidden x bf16 W accumulated and returned in fp32, as the trainer's loss head scores them.
    """

    def __init__(self, model, *, device=None, progress: bool = False, prefix_cache_tokens: int = 4096,
                 prefill_tokens: int = 16384, attention_impl: str = "auto", precision: str = "auto"):
        shared = getattr(model, "supports_prefix_sharing", False) and hasattr(model, "hidden")
        if not (shared or hasattr(model, "hf")) or not hasattr(model, "lm_head_weight"):
            raise TypeError(f"model: Engine needs a bonfast Transformer (hidden(), lm_head_weight, "
                             f"supports_prefix_sharing=True) or a bonfast.model.HFAdapter, got {type(model).__name__}")
        if attention_impl not in ("auto", "triton", "torch"):
            raise ValueError(f"attention_impl: expected 'auto', 'triton' or 'torch', got {attention_impl!r}")
        check_precision("precision", precision)
        if prefix_cache_tokens < 0:
            raise ValueError(expected("prefix_cache_tokens", "an int >= 0", prefix_cache_tokens))
        if prefill_tokens < 1:
            raise ValueError(expected("prefill_tokens", "an int >= 1", prefill_tokens))
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device)
        self.progress = progress
        self.prefix_cache_tokens = prefix_cache_tokens
        self.prefill_tokens = prefill_tokens
        self.attention_impl = attention_impl
        self.precision = precision
        self.policy_version = 0
        self._cache: OrderedDict[tuple, _Prefix] = OrderedDict()
        self._stamp = self._weights_stamp()

    # --- policy versions ------------------------------------------------------------------------------

    def _weights_stamp(self) -> tuple:
        # autograd version counters move on every in-place write (optimizer.step, copy_): a host-side read
        return tuple((p.data_ptr(), p._version) for p in self.model.parameters())

    def update_policy(self) -> int:
        """The weights changed: bump `policy_version` and drop everything computed with the old weights."""
        self.policy_version += 1
        self._cache.clear()
        self._stamp = self._weights_stamp()
        return self.policy_version

    def _check_policy(self):
        if self._weights_stamp() != self._stamp:
            self.update_policy()

    # --- validation -----------------------------------------------------------------------------------

    def _validate(self, prompts, n, max_new_tokens, temperature, top_p, top_k, stop_token_ids, seed):
        V = self.model.lm_head_weight.shape[0]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(expected("prompts", "a non-empty list of token-id lists", type(prompts).__name__))
        if len(prompts) == 0:
            raise ValueError(expected("prompts", "a non-empty list of token-id lists", "[]"))
        for g, p in enumerate(prompts):
            if not isinstance(p, (list, tuple)) or not all(isinstance(x, numbers.Integral) for x in p):
                raise TypeError(expected(f"prompts[{g}]", "a list of int token ids", repr(p)))
            if len(p) == 0 or min(p) < 0 or max(p) >= V:
                raise ValueError(expected(f"prompts[{g}]", f"a non-empty list of token ids in [0, {V})", repr(p)))
        real = (int, float)
        checks = [  # (name, value, right type, in range, expected)
            ("n", n, isinstance(n, int), lambda: n >= 1, "an int >= 1"),
            ("max_new_tokens", max_new_tokens, isinstance(max_new_tokens, int), lambda: max_new_tokens >= 1,
             "an int >= 1"),
            ("temperature", temperature, isinstance(temperature, real),
             lambda: math.isfinite(temperature) and temperature >= 0, "a finite float >= 0"),
            ("top_p", top_p, isinstance(top_p, real), lambda: 0 < top_p <= 1, "a float in (0, 1]"),
            ("top_k", top_k, isinstance(top_k, int), lambda: top_k >= 0, "an int >= 0 (0 = off)"),
            ("seed", seed, seed is None or isinstance(seed, int), lambda: True, "an int or None"),
        ]
        for name, value, right_type, in_range, what in checks:
            if not right_type or isinstance(value, bool):
                raise TypeError(expected(name, what, repr(value)))
            if not in_range():
                raise ValueError(expected(name, what, repr(value)))
        if not all(isinstance(x, numbers.Integral) and 0 <= x < V for x in stop_token_ids):
            raise ValueError(f"stop_token_ids: expected token ids in [0, {V}), got {list(stop_token_ids)!r}")

    # --- prefill --------------------------------------------------------------------------------------

    def _prefill(self, prompts: list[tuple], head) -> tuple[dict[tuple, _Prefix], int]:
        """Prefill results of the distinct `prompts`, from the cache or computed in length-sorted batches;
        also returns the number of prompt tokens computed. `head`: hidden [B, D] -> float32 logits [B, V]."""
        out = {p: self._cache[p] for p in prompts if p in self._cache}
        for p in out:
            self._cache.move_to_end(p)
        todo = sorted((p for p in prompts if p not in out), key=len, reverse=True)
        computed = sum(len(p) for p in todo)
        while todo:
            P = len(todo[0])
            batch, todo = todo[:max(1, self.prefill_tokens // P)], todo[max(1, self.prefill_tokens // P):]
            ids = torch.zeros(len(batch), P, dtype=torch.long)             # (Gb, P), right-padded
            for i, p in enumerate(batch):
                ids[i, :len(p)] = torch.tensor(p)
            ids = ids.to(self.device)
            lens = torch.tensor([len(p) for p in batch], device=self.device)
            attn = _PrefillAttention()
            hidden = self.model.hidden(ids, torch.arange(P, device=self.device).expand_as(ids), attn)
            last = hidden[torch.arange(len(batch), device=self.device), lens - 1]   # (Gb, D)
            logits = head(last)                                                     # (Gb, V) float32
            for i, p in enumerate(batch):
                k = [x[i, :len(p)].transpose(0, 1) for x in attn.k]                 # (Hkv, P_g, Dh) views
                v = [x[i, :len(p)].transpose(0, 1) for x in attn.v]
                out[p] = _Prefix(k, v, logits[i])
                self._remember(p, out[p])
        return out, computed

    def _remember(self, prompt: tuple, entry: _Prefix):
        if len(prompt) > self.prefix_cache_tokens:
            return
        self._cache[prompt] = _Prefix([x.contiguous() for x in entry.k], [x.contiguous() for x in entry.v],
                                      entry.logits)
        while sum(len(p) for p in self._cache) > self.prefix_cache_tokens:
            self._cache.popitem(last=False)

    def _assemble(self, entries: list[_Prefix]):
        """Pad the prompts' K/V into per-layer prefix tensors [G, Hkv, P, Dh] (one copy per call)."""
        P = max(e.length for e in entries)
        ks, vs = [], []
        for layer in range(len(entries[0].k)):
            Hkv, _, Dh = entries[0].k[layer].shape
            k = entries[0].k[layer].new_zeros(len(entries), Hkv, P, Dh)            # (G, Hkv, P, Dh)
            v = torch.zeros_like(k)
            for g, e in enumerate(entries):
                k[g, :, :e.length] = e.k[layer]
                v[g, :, :e.length] = e.v[layer]
            ks.append(k)
            vs.append(v)
        lens = torch.tensor([e.length for e in entries], device=self.device)
        return ks, vs, lens

    # --- sampling -------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompts: list[list[int]], n: int, *, max_new_tokens: int, temperature: float = 1.0,
               top_p: float = 1.0, top_k: int = 0, stop_token_ids=(), seed: int | None = None) -> Rollouts:
        """Draw n samples for each prompt (module docstring: sampling rule, log-probs, seeds).

        Each distinct prompt is prefilled once (or found in the policy-versioned cache); the n samples
        share its prefix K/V. A sample stops after a token of `stop_token_ids` (kept in its tokens) or
        after max_new_tokens tokens. With the same `seed`, results do not depend on how prompts are
        grouped into calls. seed=None draws a seed from torch's global generator.

        Shapes: prompts G lists of token ids -> Rollouts with tokens G x n lists, lengths [G, n]
        """
        stop_token_ids = tuple(stop_token_ids)
        self._validate(prompts, n, max_new_tokens, temperature, top_p, top_k, stop_token_ids, seed)
        prompts = [tuple(int(x) for x in p) for p in prompts]
        stop_token_ids = tuple(int(x) for x in stop_token_ids)
        self._check_policy()
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        draws, stats = self._generate(
            prompts, n, max_new_tokens, dict(temperature=temperature, top_p=top_p, top_k=top_k),
            stop_token_ids, seed)
        G = len(prompts)
        tokens, logps = draws.tokens.cpu().tolist(), draws.logprobs.cpu()   # the one bulk copy to the host
        lengths, finished = draws.lengths.cpu().view(G, n), draws.finished.cpu().view(G, n)
        return Rollouts(
            tokens=[[tokens[g * n + s][:int(lengths[g, s])] for s in range(n)] for g in range(G)],
            logprobs=[[logps[g * n + s, :int(lengths[g, s])].clone() for s in range(n)] for g in range(G)],
            lengths=lengths,
            finish_reasons=[["stop" if finished[g, s] else "length" for s in range(n)] for g in range(G)],
            policy_version=self.policy_version,
            stats=stats,
        )

    @torch.no_grad()
    def _generate(self, prompts: list[tuple], n: int, L: int, sampling: dict, stop_ids: tuple, seed: int,
                  on_step=None):
        """The decode loop. Rows are samples (flat id g * n + s); `on_step(t, rows, logits)` sees every step.

        Returns a `_Draws` (device tensors tokens [G*n, L], logprobs, lengths, finished) and a stats dict.
        """
        policy = for_model(self.model, self.precision)
        with policy.autocast():  # one region for the whole call: autocast casts each weight to bf16 once
            return self._decode(prompts, n, L, sampling, stop_ids, seed, on_step, policy)

    def _decode(self, prompts, n, L, sampling, stop_ids, seed, on_step, policy):
        dev = self.device
        G = len(prompts)
        u = sample_uniforms(sample_keys(seed, [list(p) for p in prompts], n).to(dev), L).view(G * n, L)
        draws = _Draws(u, stop_ids, sampling, on_step)
        if not getattr(self.model, "supports_prefix_sharing", False):
            return draws, self._generate_unshared(prompts, n, L, draws)
        head = policy.lm_head(self.model.lm_head_weight)             # hidden [B, D] -> float32 logits [B, V]
        prefixes, computed = self._prefill(list(dict.fromkeys(prompts)), head)
        entries = [prefixes[p] for p in prompts]
        rows = torch.arange(G * n, device=dev)                        # active rows (flat sample ids)
        row_prompt = rows // n
        tok = draws.record(0, rows, torch.stack([e.logits for e in entries])[row_prompt])
        stats = {"prefill_tokens": computed, "decode_steps": 0, "relayouts": 0, "kv_cache_bytes": 0}
        if L == 1:
            return draws, stats
        pk, pv, prompt_lens = self._assemble(entries)
        cache = _DecodeCache(pk, pv, prompt_lens, n, L - 1)
        stats["kv_cache_bytes"] = cache.nbytes()
        layout = list(range(G))                                       # original prompt of each cache prompt slot
        slot = rows.clone()                                           # (B,) flat cache slot of each active row
        sync_every = 1 if dev.type == "cpu" else 4                    # CUDA: read the finished flags every 4 steps
        bar = _progress_bar(total=L - 1, desc="decode", disable=not self.progress, leave=False)
        for t in range(L - 1):                                        # feed token t, draw token t + 1
            if t % sync_every == 0:
                keep_dev = ~draws.finished[rows]
                keep = keep_dev.cpu()                                 # host sync: which rows stay active
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):
                    rows, tok, slot, row_prompt = rows[keep_dev], tok[keep_dev], slot[keep_dev], row_prompt[keep_dev]
                    new_slot = self._compact(cache, row_prompt.tolist(), slot.tolist(), layout, written=t)
                    if new_slot is not None:
                        slot = torch.tensor(new_slot, device=dev)
                        stats["relayouts"] += 1
            positions = (prompt_lens[row_prompt] + t)[:, None]                  # (B, 1)
            attn = _DecodeAttention(cache, slot, t, self.attention_impl)
            hidden = self.model.hidden(tok[:, None], positions, attn)           # (B, 1, D)
            tok = draws.record(t + 1, rows, head(hidden[:, 0]))
            stats["decode_steps"] += 1
            bar.update(1)
        bar.close()
        return draws, stats

    def _generate_unshared(self, prompts: list[tuple], n: int, L: int, draws: "_Draws") -> dict:
        """Fallback for models without prefix sharing (`bonfast.model.HFAdapter`): each prompt is prefilled
        once by the wrapped transformers model, its cache is repeated n ways (KV memory n * (P + L)), and
        its samples decode together. Same sampler and random streams as the shared-prefix path."""
        hf = self.model.hf
        keep_last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
        stats = {"prefill_tokens": 0, "decode_steps": 0, "relayouts": 0, "kv_cache_bytes": 0}
        for g, prompt in enumerate(prompts):
            out = hf(input_ids=torch.tensor([prompt], device=self.device), use_cache=True, **keep_last)
            cache = out.past_key_values
            cache.batch_repeat_interleave(n)
            stats["prefill_tokens"] += len(prompt)
            rows = torch.arange(g * n, (g + 1) * n, device=self.device)
            tok = draws.record(0, rows, out.logits[:, -1].float().expand(n, -1))
            for t in range(L - 1):
                keep_dev = ~draws.finished[rows]
                keep = keep_dev.cpu()                                 # host sync: which rows stay active
                if not bool(keep.any()):
                    break
                if not bool(keep.all()):
                    rows, tok = rows[keep_dev], tok[keep_dev]
                    cache.batch_select_indices(keep_dev.nonzero()[:, 0])
                out = hf(input_ids=tok[:, None], past_key_values=cache, use_cache=True)
                tok = draws.record(t + 1, rows, out.logits[:, -1].float())
                stats["decode_steps"] += 1
            del cache
        return stats

    @staticmethod
    def _compact(cache: _DecodeCache, row_prompt: list[int], old_slot: list[int], layout: list[int], *,
                 written: int):
        """Re-layout the cache densely once more than a quarter of its slots are dead; returns the rows'
        new slots (or None when the layout stays). `layout` (cache prompt slot -> original prompt) is
        updated in place."""
        counts: dict[int, int] = {}
        for p in row_prompt:
            counts[p] = counts.get(p, 0) + 1
        n_new = max(counts.values())
        if len(counts) * n_new > 0.75 * cache.G * cache.n:
            return None
        index = {p: i for i, p in enumerate(counts)}                 # new cache prompt slot of each prompt
        where = {p: i for i, p in enumerate(layout)}
        slot_src = [0] * (len(counts) * n_new)                        # padding slots copy slot 0 (never read)
        new_slot, rank = [], dict.fromkeys(counts, 0)
        for p, old in zip(row_prompt, old_slot):
            s = index[p] * n_new + rank[p]
            rank[p] += 1
            slot_src[s] = old
            new_slot.append(s)
        dev = cache.prefix_lens.device
        cache.relayout(torch.tensor([where[p] for p in counts], device=dev), torch.tensor(slot_src, device=dev),
                       n_new, written)
        layout[:] = list(counts)
        return new_slot

