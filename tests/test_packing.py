"""Shared-prefix packing == scoring each prompt + response separately (log-probs and gradients)."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from bonfast.attention import available_backends
from bonfast.model import ModelConfig, from_config, load_model
from bonfast.packing import PackedAttention, pack, packed_hidden, packed_logprobs, score

V = 61


def tiny_model(dtype=torch.float64, **over):
    kw = dict(vocab_size=V, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=48,
              model_type="qwen2", attention_bias=True, tie_word_embeddings=True) | over
    model = from_config(ModelConfig(**kw), dtype=dtype)
    with torch.no_grad():  # non-trivial biases and norms
        for name, p in model.named_parameters():
            p.add_(0.1 * torch.randn_like(p) if ("norm" in name or "bias" in name) else 0.05 * torch.randn_like(p))
    return model


def ragged(G=3, n=3, P=(5, 1, 8), L=((2, 4, 0), (3, 1, 6), (1, 1, 2))):
    prompts = [torch.randint(1, V, (p,)).tolist() for p in P[:G]]
    responses = [[torch.randint(1, V, (x,)).tolist() for x in ls[:n]] for ls in L[:G]]
    return prompts, responses


def separate_logprobs(model, prompts, responses, temperature=1.0):
    """The definition: run every prompt + r_i on its own, log-softmax, gather (float64 plain PyTorch)."""
    out = []
    for p, rs in zip(prompts, responses):
        for r in rs:
            if not r:
                continue
            out_ = model(torch.tensor([p + r]))
            logits = getattr(out_, "logits", out_)[0, len(p) - 1:len(p) + len(r) - 1]
            out.append(torch.log_softmax(logits.double() / temperature, -1).gather(-1, torch.tensor(r)[:, None])[:, 0])
    return torch.cat(out)


def test_pack_layout_by_hand():
    b = pack([[7, 8, 9], [5]], [[[1, 2], [3]], [[4], [6, 6]]], pad_id=0)
    assert b.input_ids.tolist() == [[7, 8, 9, 1, 2, 3], [5, 4, 6, 6, 0, 0]]
    assert b.positions.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 1, 2, 0, 0]]
    assert b.segment.tolist() == [[0, 0, 0, 1, 1, 2], [0, 1, 2, 2, -1, -1]]
    # first token of every response is predicted by the last prompt row (2 in row 0, 6 + 0 in row 1)
    assert b.resp_rows.tolist() == [2, 3, 2, 6, 6, 8]
    assert b.targets.tolist() == [1, 2, 3, 4, 6, 6]
    assert b.sample_index.tolist() == [0, 0, 1, 2, 3, 3]
    assert b.lengths == [[2, 1], [1, 2]] and b.prompt_lens.tolist() == [3, 1]
    mask = b.dense_mask()[0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True]  # r_2 sees the prompt and itself only
    d = pack([[7, 8, 9], [5]], [[[1, 2], [3]], [[4], [6, 6]]], share_prefix=False)
    assert d.input_ids.tolist() == [[7, 8, 9, 1, 2], [7, 8, 9, 3, 0], [5, 4, 0, 0, 0], [5, 6, 6, 0, 0]]
    assert d.resp_rows.tolist() == [2, 3, 7, 10, 15, 16]


MODES = [("sdpa", "concat"), ("sdpa", "dense")] + [(b, "concat") for b in available_backends("cpu") if b != "sdpa"]


@pytest.mark.parametrize("backend,layout", MODES)
@pytest.mark.parametrize("shape", ["ragged", "uniform", "n1"])
def test_packed_logprobs_equal_separate_float64(backend, layout, shape):
    model = tiny_model()
    prompts, responses = {"ragged": ragged(), "uniform": ragged(2, 4, (6, 6), ((3,) * 4,) * 2),
                          "n1": ragged(3, 1)}[shape]
    batch = pack(prompts, responses)
    assert (batch.resp_mask is None) == (shape == "uniform")
    with torch.no_grad():
        logp, sidx = packed_logprobs(model, batch, 0.7, impl="torch", backend=backend, layout=layout)
        ref = separate_logprobs(model, prompts, responses, 0.7)
    assert logp.dtype == torch.float64 and sidx.tolist() == batch.sample_index.tolist()
    torch.testing.assert_close(logp, ref, rtol=1e-10, atol=1e-10)


def test_all_responses_empty():
    model = tiny_model()
    out = score(model, [[3, 4], [5]], [[[], []], [[], []]], impl="torch")
    assert [[t.numel() for t in rs] for rs in out] == [[0, 0], [0, 0]]
    out = score(model, [[3, 4], [5]], [[[], [7]], [[], []]], impl="torch")
    torch.testing.assert_close(out[0][1], separate_logprobs(model, [[3, 4]], [[[7]]]), rtol=1e-10, atol=1e-10)


def _grads(model, logp, up):
    model.zero_grad()
    (logp * up).sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("layout", ["concat", "dense"])
def test_packed_gradients_equal_separate(dtype, tol, layout):
    model = tiny_model(dtype)
    prompts, responses = ragged()
    batch = pack(prompts, responses)
    logp, _ = packed_logprobs(model, batch, impl="torch", backend="sdpa", layout=layout)
    up = torch.randn(logp.shape, dtype=logp.dtype)  # random upstream gradient per token
    g_packed = _grads(model, logp, up)
    ref = separate_logprobs(model, prompts, responses).to(logp.dtype)
    g_sep = _grads(model, ref, up)
    torch.testing.assert_close(logp, ref, rtol=tol, atol=tol)
    for k in g_sep:
        scale = g_sep[k].abs().max().item()
        torch.testing.assert_close(g_packed[k], g_sep[k], rtol=tol, atol=tol * max(scale, 1.0), msg=k)


def test_duplicated_layout_and_checkpointing_match():
    model = tiny_model()
    prompts, responses = ragged()
    dup = pack(prompts, responses, share_prefix=False)
    lp_dup, _ = packed_logprobs(model, dup, impl="torch")
    up = torch.randn(lp_dup.shape, dtype=lp_dup.dtype)
    g_dup = _grads(model, lp_dup, up)
    model.gradient_checkpointing = True
    lp, _ = packed_logprobs(model, pack(prompts, responses), impl="torch")
    g = _grads(model, lp, up)
    torch.testing.assert_close(lp, lp_dup, rtol=1e-10, atol=1e-10)
    for k in g:
        torch.testing.assert_close(g[k], g_dup[k], rtol=1e-10, atol=1e-10, msg=k)


def test_packed_hidden_feeds_fused_loss_head():
    model = tiny_model()
    prompts, responses = ragged()
    batch = pack(prompts, responses)
    h = packed_hidden(model, batch)
    assert h.shape == (batch.targets.shape[0], 32)
    lp = torch.log_softmax(h @ model.lm_head_weight.T, -1).gather(-1, batch.targets[:, None])[:, 0]
    torch.testing.assert_close(lp, separate_logprobs(model, prompts, responses), rtol=1e-10, atol=1e-10)


def test_score_equals_transformers(tmp_path):
    cfg = ModelConfig(vocab_size=V, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=80,
                      model_type="qwen2", attention_bias=True, tie_word_embeddings=True)
    hf = AutoModelForCausalLM.from_config(cfg.to_hf(), dtype=torch.float32)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    prompts, responses = ragged()
    out = score(model, prompts, responses, temperature=0.7)
    assert [[t.shape[0] for t in rs] for rs in out] == [[len(r) for r in rs] for rs in responses]
    hf.eval()
    for g, (p, rs) in enumerate(zip(prompts, responses)):
        for i, r in enumerate(rs):
            with torch.no_grad():
                logits = hf(torch.tensor([p + r])).logits[0, len(p) - 1:len(p) + len(r) - 1] / 0.7
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(r, dtype=torch.long)[:, None])[:, 0]
            assert out[g][i].dtype == torch.float32
            assert (out[g][i] - ref).abs().max() <= 1e-4 if r else out[g][i].numel() == 0


def test_score_hf_adapter_falls_back_to_duplicated_rows(tmp_path):
    hf = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                                         bos_token_id=1, eos_token_id=1))
    hf.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    prompts, responses = ragged()
    out = score(model, prompts, responses, impl="torch")
    ref = separate_logprobs(hf.eval(), prompts, responses)
    assert (torch.cat([t for rs in out for t in rs]) - ref).abs().max() <= 1e-5
    with torch.no_grad():  # a shared-prefix batch given to a non-sharing model runs its duplicated layout
        lp, sidx = packed_logprobs(model, pack(prompts, responses), impl="torch")
    assert (lp - ref).abs().max() <= 1e-5 and sidx.tolist() == pack(prompts, responses).sample_index.tolist()


@pytest.mark.parametrize("prompts,responses,match", [
    ([[1, 2], []], [[[1]], [[2]]], r"prompts\[1\] must be a non-empty list"),
    ([[1, 2], [3]], [[[1]]], r"responses must be a list of 2 lists"),
    ([[1, 2], [3]], [[[1], [2]], [[2]]], r"responses\[1\] must be a list of n=2 responses"),
    ([[1, 2]], [[5]], r"responses\[0\]\[0\] must be a list of token ids"),
    ([[1, -2]], [[[5]]], r"token ids must be >= 0, found -2"),
    ([], [], r"prompts must be a non-empty list"),
])
def test_pack_errors(prompts, responses, match):
    with pytest.raises(ValueError, match=match):
        pack(prompts, responses)


def test_packed_attention_errors():
    prompts, responses = ragged()
    with pytest.raises(ValueError, match=r"needs a shared-prefix batch"):
        PackedAttention(pack(prompts, responses, share_prefix=False))
    attn = PackedAttention(pack(prompts, responses))
    q = torch.randn(2, 5, 4, 8)
    with pytest.raises(ValueError, match=r"q must be \[3, 12, Hq, Dh\] like the packed batch"):
        attn(0, q, q, q)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["sdpa", "flex", "xformers"])
def test_cuda_packed_gradients_equal_separate(backend):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not installed")
    model = tiny_model(torch.float32, dim=64).cuda()  # head dim 64 / 4 = 16: the compiled CUDA flex kernel's least
    prompts, responses = ragged()
    logp, _ = packed_logprobs(model, pack(prompts, responses).to("cuda"), backend=backend, autocast=False,
                              impl="torch")
    up = torch.randn(logp.shape, device="cuda")
    g = _grads(model, logp, up)
    ref = separate_logprobs(copy.deepcopy(model).double().cpu(), prompts, responses).float()
    torch.testing.assert_close(logp, ref.cuda(), rtol=1e-4, atol=1e-4)
    lp_dup, _ = packed_logprobs(model, pack(prompts, responses, share_prefix=False).to("cuda"), autocast=False,
                                impl="torch")
    g_dup = _grads(model, lp_dup, up)
    for k in g:
        torch.testing.assert_close(g[k], g_dup[k], rtol=1e-4, atol=1e-4, msg=k)
