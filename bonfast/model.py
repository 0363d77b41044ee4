"""A lean decoder for the Llama family, Hugging Face checkpoint loading, and an adapter for anything else.

One `Transformer` covers Llama 2/3 (llama3 RoPE scaling), SmolLM2 (a Llama), Qwen2/2.5 (q/k/v bias, tied
embeddings), Qwen3 (RMSNorm on q and k per head) and Mistral. Each block is

    h   = x + W_o attn(RoPE(norm_q(W_q n1(x))), RoPE(norm_k(W_k n1(x))), W_v n1(x))
    out = h + W_down (silu(W_gate n2(h)) * W_up n2(h))

with `n(x) = w * x / sqrt(mean(x^2) + eps)` computed in float32, and `RoPE` rotating the pairs
`(x_j, x_{j + Dh/2})` by `position * inv_freq_j`. The model never caches: attention goes through an
`AttentionFn` (see `bonfast.attention`), so causal decoding, shared-prefix packing and the engine's KV
cache are all the caller's business. Parameter names equal the Hugging Face ones minus the `model.`
prefix, so loading and saving is a rename.

Shapes: input_ids, positions [B, T]; hidden [B, T, D]; logits [B, T, V].
"""
from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from bonfast.attention import AttentionFn, CausalAttention

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


# ---------------------------------------------------------------------------------------------------
# config


@dataclass
class ModelConfig:
    """Architecture of a Llama-family decoder (names follow the papers, `from_hf` maps HF's names)."""

    vocab_size: int = 32000  # V
    dim: int = 256  # D, residual width
    n_layers: int = 4
    n_heads: int = 4  # Hq
    n_kv_heads: int | None = None  # Hkv (GQA); None -> n_heads
    head_dim: int | None = None  # Dh; None -> dim // n_heads
    intermediate_size: int = 704  # SwiGLU hidden width
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # None, {"rope_type": "linear", "factor"} or llama3's four fields
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    attention_bias: bool = False  # bias on q/k/v projections (Qwen2: always)
    o_bias: bool = False  # bias on the output projection (Llama/Qwen3 with attention_bias=True)
    mlp_bias: bool = False  # bias on the SwiGLU projections (Llama mlp_bias)
    qk_norm: bool = False  # RMSNorm over Dh on q and k before RoPE (Qwen3)
    max_position_embeddings: int = 2048
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    model_type: str = "llama"  # the transformers family `to_hf` writes
    sliding_window: int | None = None  # recorded from Mistral/Qwen2 configs; NOT applied (full attention)
    initializer_range: float = 0.02  # std of the normal init in `from_config`

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) "
                                 "when head_dim is not given")
            self.head_dim = self.dim // self.n_heads
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got {self.model_type!r}")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in SUPPORTED_ROPE_TYPES:
                raise ValueError(f"rope_scaling rope_type must be one of {SUPPORTED_ROPE_TYPES}, got {kind!r}")

    @classmethod
    def from_hf(cls, hf_config) -> "ModelConfig":
        """Read a transformers config (Llama / Mistral / Qwen2 / Qwen3); ValueError for anything else."""
        mt = getattr(hf_config, "model_type", None)
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {mt!r} is not supported by the lean decoder; supported: "
                             f"{list(SUPPORTED_MODEL_TYPES)} (other architectures load through HFAdapter)")
        act = getattr(hf_config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.hidden_act must be 'silu' for the lean decoder, got {act!r}")
        rope = dict(getattr(hf_config, "rope_parameters", None) or {})
        legacy = getattr(hf_config, "rope_scaling", None)
        if not rope and legacy:
            rope = dict(legacy)
        theta = rope.pop("rope_theta", None) or getattr(hf_config, "rope_theta", None) or 10000.0
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"config rope_type {kind!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}")
        scaling = None if kind == "default" else {k: v for k, v in rope.items() if k != "type"} | {"rope_type": kind}
        bias = bool(getattr(hf_config, "attention_bias", False))
        sliding = None
        if mt == "mistral" or getattr(hf_config, "use_sliding_window", False):
            sliding = getattr(hf_config, "sliding_window", None)
        return cls(
            vocab_size=hf_config.vocab_size, dim=hf_config.hidden_size, n_layers=hf_config.num_hidden_layers,
            n_heads=hf_config.num_attention_heads,
            n_kv_heads=getattr(hf_config, "num_key_value_heads", None) or hf_config.num_attention_heads,
            head_dim=getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads,
            intermediate_size=hf_config.intermediate_size, rope_theta=float(theta), rope_scaling=scaling,
            rms_norm_eps=hf_config.rms_norm_eps, tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            attention_bias=True if mt == "qwen2" else bias, o_bias=bias if mt in ("llama", "qwen3") else False,
            mlp_bias=bool(getattr(hf_config, "mlp_bias", False)), qk_norm=mt == "qwen3",
            max_position_embeddings=hf_config.max_position_embeddings,
            bos_token_id=getattr(hf_config, "bos_token_id", None),
            eos_token_id=getattr(hf_config, "eos_token_id", None),
            pad_token_id=getattr(hf_config, "pad_token_id", None), model_type=mt, sliding_window=sliding,
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
        )

    def to_hf(self):
        """The equivalent transformers config (of `model_type`), e.g. for `save_pretrained`."""
        from transformers import AutoConfig
        mt = self.model_type
        wants = {"llama": (self.attention_bias, self.o_bias, False), "mistral": (False, False, False),
                 "qwen2": (True, False, False), "qwen3": (self.attention_bias, self.attention_bias, True)}[mt]
        if mt == "llama" and self.attention_bias != self.o_bias:
            raise ValueError("model_type 'llama' needs attention_bias == o_bias (HF uses one flag for both)")
        if (self.attention_bias, self.o_bias, self.qk_norm) != wants or (self.mlp_bias and mt != "llama"):
            raise ValueError(f"this config (attention_bias={self.attention_bias}, o_bias={self.o_bias}, "
                             f"qk_norm={self.qk_norm}, mlp_bias={self.mlp_bias}) is not expressible as model_type "
                             f"{mt!r}")
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope = {**self.rope_scaling, "rope_theta": self.rope_theta}
        kw = dict(vocab_size=self.vocab_size, hidden_size=self.dim, num_hidden_layers=self.n_layers,
                  num_attention_heads=self.n_heads, num_key_value_heads=self.n_kv_heads, head_dim=self.head_dim,
                  intermediate_size=self.intermediate_size, rms_norm_eps=self.rms_norm_eps, hidden_act="silu",
                  tie_word_embeddings=self.tie_word_embeddings, max_position_embeddings=self.max_position_embeddings,
                  bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
                  rope_parameters=rope, initializer_range=self.initializer_range)
        if mt in ("llama", "qwen3"):
            kw["attention_bias"] = self.attention_bias
        if mt == "llama":
            kw["mlp_bias"] = self.mlp_bias
        if mt == "mistral":
            kw["sliding_window"] = self.sliding_window
        return AutoConfig.for_model(mt, **kw)


# ---------------------------------------------------------------------------------------------------
# modules


class RMSNorm(nn.Module):
    """`w * x / sqrt(mean(x^2) + eps)`, normalised in float32 (as transformers), cast back before the weight.

    The result has x's dtype: under bf16 autocast a bf16 input (q and k with qk_norm) stays bf16 although the
    weight is a float32 master weight, so q, k and v keep one dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        dtype = x.dtype
        x32 = x.float() if dtype != torch.float64 else x
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (self.weight * x32.to(dtype)).to(dtype)


def rope_inv_freq(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies [Dh/2] (float64), with linear or llama3 scaling applied."""
    dh = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dh, 2, dtype=torch.float64, device=device) / dh))
    sc = cfg.rope_scaling or {}
    kind = sc.get("rope_type", sc.get("type", "default"))
    if kind == "linear":
        inv = inv / sc["factor"]
    elif kind == "llama3":
        factor, lo, hi = sc["factor"], sc["low_freq_factor"], sc["high_freq_factor"]
        old = sc["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = torch.where(wavelen > old / lo, inv / factor, torch.where(wavelen < old / hi, inv, mid))
    return inv


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_j, x_{j+Dh/2}) in the angles' dtype, returned in x's dtype.

    The rotation runs in float32 (float64 for float64 models) whatever x's dtype, and the result is cast back, so
    q and k keep the dtype of v: under bf16 autocast the projections are bf16 and attention needs q, k, v alike.

    Shapes: x [B, T, H, Dh], cos/sin [B, T, Dh].
    """
    xr = x.to(cos.dtype)
    x1, x2 = xr.chunk(2, dim=-1)
    rot = torch.cat((-x2, x1), dim=-1)
    return (xr * cos[:, :, None] + rot * sin[:, :, None]).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin, attn: AttentionFn, layer_idx: int):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, Hq, Dh)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if torch.is_autocast_enabled(q.device.type):
            # q, k, v are already in the compute dtype; attention keeps its own (fp32) accumulation, which
            # autocast would otherwise round to 16 bits in the torch fallbacks' matmuls
            with torch.autocast(q.device.type, enabled=False):
                o = attn(layer_idx, q, k, v)
        else:
            o = attn(layer_idx, q, k, v)
        if o.shape != q.shape:
            raise ValueError(f"AttentionFn returned {tuple(o.shape)} at layer {layer_idx}, expected {tuple(q.shape)}")
        return self.o_proj(o.reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.dim, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.dim, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn: AttentionFn, layer_idx: int):
        h = x + self.self_attn(self.input_layernorm(x), cos, sin, attn, layer_idx)
        return h + self.mlp(self.post_attention_layernorm(h))


class Transformer(nn.Module):
    """Llama-family decoder without a KV cache: attention is delegated to an `AttentionFn`.

    Shapes:
        input_ids, positions: Long [B, T]    hidden: [B, T, D]    lm_head_weight: [V, D]    logits: [B, T, V]
    """

    supports_prefix_sharing = True

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False  # recompute each block in backward (torch.utils.checkpoint)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.rms_norm_eps)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self._inv_freq: dict = {}  # device -> float64 [Dh/2]; not a buffer, so `.to(bf16)` cannot round it

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """The output projection [V, D] (the embedding matrix when tied)."""
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos, sin [B, T, Dh] for integer positions [B, T], in float32 (float64 for float64 models) whatever the
        model's dtype: `apply_rope` rotates in that precision and casts back to the activations' dtype."""
        dev = positions.device
        if dev not in self._inv_freq:
            self._inv_freq[dev] = rope_inv_freq(self.config, dev)
        adt = torch.float64 if dtype == torch.float64 else torch.float32
        ang = positions[..., None].to(adt) * self._inv_freq[dev].to(adt)  # (B, T, Dh/2)
        ang = torch.cat((ang, ang), dim=-1)
        return ang.cos(), ang.sin()

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] of tokens at the given positions, attention delegated to `attn`."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(f"input_ids must be Long [B, T], got {input_ids.dtype} {tuple(input_ids.shape)}")
        if positions.shape != input_ids.shape or positions.dtype != torch.long:
            raise ValueError(f"positions must be Long {tuple(input_ids.shape)} like input_ids, got "
                             f"{positions.dtype} {tuple(positions.shape)}")
        x = self.embed_tokens(input_ids)  # (B, T, D)
        cos, sin = self.rope(positions, x.dtype)
        ckpt = self.gradient_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if ckpt:
                x = checkpoint(layer, x, cos, sin, attn, i, use_reentrant=False)
            else:
                x = layer(x, cos, sin, attn, i)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Plain causal logits [B, T, V] (positions default to 0..T-1)."""
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        return F.linear(self.hidden(input_ids, positions, CausalAttention()), self.lm_head_weight)

    # --- Hugging Face naming ------------------------------------------------------------------------

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict under Hugging Face keys (`model.` prefix; no `lm_head.weight` when tied)."""
        return {hf_key(k): v for k, v in self.state_dict().items()}

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors that both `load_model` and transformers read."""
        from safetensors.torch import save_file

        from bonfast.checkpoint import atomic_write
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.to_hf().save_pretrained(path)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.hf_state_dict().items()}
        # atomic: a crash never leaves half a checkpoint
        atomic_write(str(path / "model.safetensors"), lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def hf_key(name: str) -> str:
    """Our parameter name -> the Hugging Face checkpoint key."""
    return name if name.startswith("lm_head.") else f"model.{name}"


def from_config(config: ModelConfig, *, dtype: torch.dtype | None = None, device=None) -> Transformer:
    """A randomly initialised `Transformer` (normal(0, initializer_range) weights, unit norms, zero biases)."""
    model = Transformer(config)
    std = config.initializer_range
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            nn.init.ones_(p)
        elif name.endswith(".bias"):
            nn.init.zeros_(p)
        else:
            nn.init.normal_(p, mean=0.0, std=std)
    return model.to(dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------------
# any other architecture


class HFAdapter(nn.Module):
    """Wraps any transformers `AutoModelForCausalLM` behind the `Transformer` interface.

    `hidden` runs the base model (its own attention; `attn` is only read for a `CausalAttention`'s
    key-padding mask), so there is no prefix sharing: `bonfast.packing` falls back to one row per
    prompt + response. Log-probs still go through the fused LM-head kernels, which is exact only when
    `logits = hidden @ W^T` (no logit soft-capping or scaling): checked here.
    """

    supports_prefix_sharing = False

    def __init__(self, hf_model):
        super().__init__()
        cfg = hf_model.config
        for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
            if getattr(cfg, attr, None) not in (None, 1.0):
                raise ValueError(f"HFAdapter: config.{attr}={getattr(cfg, attr)!r} makes logits != hidden @ W^T; "
                                 "this model cannot use bonfast's fused log-probs")
        head = hf_model.get_output_embeddings()
        if head is None or getattr(head, "bias", None) is not None:
            raise ValueError("HFAdapter: the model needs a bias-free linear output embedding (lm_head)")
        self.hf = hf_model
        self.config = cfg
        self.gradient_checkpointing = False  # forwarded to transformers' own checkpointing on the next call
        self._hf_checkpointing = False

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.hf.get_output_embeddings().weight

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttentionFn) -> torch.Tensor:
        if not isinstance(attn, CausalAttention):
            raise ValueError(f"HFAdapter supports only CausalAttention (no prefix sharing), got {type(attn).__name__}")
        if self.gradient_checkpointing != self._hf_checkpointing and self.hf.supports_gradient_checkpointing:
            if self.gradient_checkpointing:
                self.hf.gradient_checkpointing_enable({"use_reentrant": False})
            else:
                self.hf.gradient_checkpointing_disable()
            self._hf_checkpointing = self.gradient_checkpointing
        mask = None if attn.key_padding_mask is None else attn.key_padding_mask.long()
        out = self.hf.base_model(input_ids=input_ids, position_ids=positions, attention_mask=mask, use_cache=False)
        return out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        if positions is None:
            positions = torch.arange(input_ids.shape[-1], device=input_ids.device).expand_as(input_ids)
        return F.linear(self.hidden(input_ids, positions, CausalAttention()), self.lm_head_weight)


# ---------------------------------------------------------------------------------------------------
# loading


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a local checkpoint and, per key, the file it came from (for error messages)."""
    from safetensors.torch import load_file
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        tensors, origin = {}, {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).exists():
                raise ValueError(f"{index} names shard {shard!r}, which does not exist in {path}")
            part = load_file(path / shard)
            tensors.update(part)
            origin.update(dict.fromkeys(part, shard))
        return tensors, origin
    if single.exists():
        tensors = load_file(single)
        return tensors, dict.fromkeys(tensors, single.name)
    binary = path / "pytorch_model.bin"
    if binary.exists():
        tensors = torch.load(binary, map_location="cpu", weights_only=True)
        return tensors, dict.fromkeys(tensors, binary.name)
    raise ValueError(f"no weights in {path}: expected model.safetensors, model.safetensors.index.json "
                     "or pytorch_model.bin")


def _lean_from_state_dict(cfg: ModelConfig, tensors: dict[str, torch.Tensor], origin: dict[str, str],
                          where: str) -> Transformer:
    """Build a `Transformer` from HF-keyed tensors, checking every key and shape."""
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = {hf_key(k): tuple(v.shape) for k, v in model.state_dict().items()}
    state = {}
    for name, (key, shape) in zip(model.state_dict(), expected.items()):
        if key not in tensors:
            raise ValueError(f"{where}: missing tensor {key!r} (expected shape {list(shape)})")
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{where}: tensor {key!r} in {origin.get(key, '?')} has shape "
                             f"{list(tensors[key].shape)}, expected {list(shape)}")
        state[name] = tensors[key]
    ignorable = ("rotary_emb.inv_freq", "lm_head.weight")  # lm_head.weight is sometimes stored although tied
    extra = [k for k in tensors if k not in expected and not k.endswith(ignorable)]
    if extra:
        warnings.warn(f"{where}: ignoring {len(extra)} unexpected tensors, e.g. {extra[:3]}", stacklevel=3)
    model.load_state_dict(state, assign=True)
    model._inv_freq = {}
    return model


def _tokenizer(path: Path, gguf_file: str | None):
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    if gguf_file is None and not any((path / n).exists() for n in names):
        return None
    from transformers import AutoTokenizer
    kw = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(path, local_files_only=True, **kw)


def load_model(path: str | os.PathLike, *, gguf_file: str | None = None, dtype: torch.dtype | None = None,
               device=None, allow_adapter: bool = True):
    """Load a local Hugging Face checkpoint as `(model, tokenizer)`; nothing is downloaded.

    `path` is a directory with config.json and safetensors weights (single file or sharded index; a
    pytorch_model.bin also works), or, with `gguf_file`, a directory holding that GGUF file (read by
    transformers, dequantised to float32). Llama / Mistral / Qwen2 / Qwen3 become the lean
    `Transformer`; any other causal LM becomes an `HFAdapter` unless `allow_adapter=False`, which raises
    instead. `dtype` defaults to float32, `device` to CPU. The tokenizer is None when the directory has
    none.
    """
    from transformers import AutoConfig
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"load_model: path {str(path)!r} is not a directory")
    dtype = torch.float32 if dtype is None else dtype
    if gguf_file is not None:
        if not (path / gguf_file).exists():
            raise ValueError(f"load_model: GGUF file {str(path / gguf_file)!r} does not exist")
        from transformers import AutoModelForCausalLM
        hf = AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=torch.float32,
                                                  local_files_only=True)
        if hf.config.model_type in SUPPORTED_MODEL_TYPES:
            tensors = hf.state_dict()
            model = _lean_from_state_dict(ModelConfig.from_hf(hf.config), tensors, {},
                                          str(path / gguf_file))
            del hf
        else:
            model = _adapter(hf, allow_adapter, str(path / gguf_file))
        return model.to(dtype=dtype, device=device), _tokenizer(path, gguf_file)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; the directory holds {', '.join(ggufs)}: pass gguf_file={ggufs[0]!r}" if ggufs else ""
        raise ValueError(f"load_model: {cfg_file} not found (a checkpoint directory needs config.json){hint}")
    model_type = json.loads(cfg_file.read_text()).get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        cfg = ModelConfig.from_hf(AutoConfig.from_pretrained(path, local_files_only=True))
        if cfg.sliding_window is not None and cfg.sliding_window < cfg.max_position_embeddings:
            warnings.warn(f"{cfg_file}: sliding_window={cfg.sliding_window} is not applied (full attention); "
                          "sequences longer than the window differ from the reference model", stacklevel=2)
        tensors, origin = _read_state_dict(path)
        model = _lean_from_state_dict(cfg, tensors, origin, str(path))
    else:
        model = _adapter_from_path(path, model_type, allow_adapter)
    return model.to(dtype=dtype, device=device), _tokenizer(path, None)


def _adapter(hf, allow_adapter: bool, where: str):
    if not allow_adapter:
        raise ValueError(f"{where}: model_type {hf.config.model_type!r} is not supported by the lean decoder; "
                         f"supported: {list(SUPPORTED_MODEL_TYPES)}")
    return HFAdapter(hf)


def _adapter_from_path(path: Path, model_type, allow_adapter: bool):
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    if not allow_adapter or model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        also = "" if not allow_adapter else " (or any transformers AutoModelForCausalLM architecture)"
        raise ValueError(f"{path / 'config.json'}: model_type {model_type!r} is not supported; supported: "
                         f"{list(SUPPORTED_MODEL_TYPES)}{also}")
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    return HFAdapter(hf)
