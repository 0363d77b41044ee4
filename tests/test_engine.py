"""Engine: shared-prefix decoding == full recompute; sampling == a naive per-sample decoder with the same random
stream; batching invariance; stop tokens, ragged prompts, compaction; policy-versioned caches; validation."""
import math

import pytest
import torch

from bonfast.engine import Engine, Rollouts, sample_from_logits, sample_keys, sample_uniforms
from bonfast.model import ModelConfig, from_config

PROMPTS = [[5, 17, 3, 88, 41, 9, 60], [12, 7], [33, 2, 71, 71, 19]]   # ragged


def tiny_model(seed=0, init=0.2, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=64,
               initializer_range=init)
    return from_config(ModelConfig(**{**cfg, **kw})).eval()


@torch.no_grad()
def naive_decode(model, prompts, n, max_new_tokens, seed, stop=(), **sampling):
    """One sample at a time, every step a full forward over prompt + tokens so far (no cache at all)."""
    u = sample_uniforms(sample_keys(seed, prompts, n), max_new_tokens)           # (G, n, L)
    tokens, logprobs = [], []
    for g, prompt in enumerate(prompts):
        tokens.append([])
        logprobs.append([])
        for s in range(n):
            seq, lps = list(prompt), []
            for t in range(max_new_tokens):
                logits = model(torch.tensor([seq]))[0, -1:]
                tok, lp = sample_from_logits(logits, u[g, s, t:t + 1], **sampling)
                seq.append(int(tok))
                lps.append(float(lp))
                if int(tok) in stop:
                    break
            tokens[g].append(seq[len(prompt):])
            logprobs[g].append(torch.tensor(lps))
    return tokens, logprobs


def full_logprobs(model, prompt, response, temperature):
    """log_softmax(logits / T) of the response tokens from one full forward (T = 0: untempered)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + response]))[0, len(prompt) - 1:-1].double()
    logits = logits / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_step_logits_equal_full_recompute(impl, device):
    """Every decode step's logits (prefix KV once, suffix per sample, LSE merge) == model.forward.

    `device`: CUDA for impl="triton" on a GPU, the CPU under the interpreter; a clean skip otherwise."""
    model = tiny_model().to(device)
    engine = Engine(model, attention_impl=impl)
    record = []
    n, L = 3, 5
    prompts = [tuple(p) for p in PROMPTS]
    draws, _ = engine._generate(prompts, n, L, dict(temperature=1.0, top_p=1.0, top_k=0), (), 11,
                                on_step=lambda t, rows, logits: record.append((t, rows.clone(), logits.clone())))
    tokens = draws.tokens
    assert len(record) == L
    for t, rows, logits in record:
        for row, got in zip(rows.tolist(), logits):
            seq = list(prompts[row // n]) + tokens[row, :t].tolist()
            with torch.no_grad():
                want = model(torch.tensor([seq], device=device))[0, -1]
            torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.7, 0.9, 20), (1.3, 0.5, 0)])
def test_logprobs_equal_tempered_full_forward(temperature, top_p, top_k):
    model = tiny_model()
    roll = Engine(model).sample(PROMPTS, 4, max_new_tokens=6, temperature=temperature, top_p=top_p, top_k=top_k,
                                seed=3)
    for g, prompt in enumerate(PROMPTS):
        for s in range(4):
            want = full_logprobs(model, prompt, roll.tokens[g][s], temperature)
            assert roll.logprobs[g][s].dtype == torch.float32
            torch.testing.assert_close(roll.logprobs[g][s].double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.8, top_p=0.9, top_k=30),
                                      dict(temperature=0.0)])
def test_engine_equals_naive_per_sample_decode(sampling):
    """Stop tokens end samples early (compaction and re-layout run); tokens and log-probs match exactly."""
    model = tiny_model(init=0.4)
    stop = tuple(range(0, 97, 8))                                   # ~13% of the vocabulary stops a sample
    engine = Engine(model)
    roll = engine.sample(PROMPTS, 5, max_new_tokens=8, stop_token_ids=stop, seed=7, **sampling)
    tokens, logprobs = naive_decode(model, PROMPTS, 5, 8, 7, stop, **sampling)
    assert roll.tokens == tokens
    for g in range(len(PROMPTS)):
        for s in range(5):
            torch.testing.assert_close(roll.logprobs[g][s], logprobs[g][s], rtol=0, atol=1e-5)
            k = len(tokens[g][s])
            assert roll.lengths[g, s] == k
            hit = tokens[g][s][-1] in stop
            assert roll.finish_reasons[g][s] == ("stop" if hit else "length")
            assert not any(x in stop for x in tokens[g][s][:-1])
            assert hit or k == 8
    if sampling["temperature"] > 0:
        assert "stop" in sum(roll.finish_reasons, []) and int(roll.lengths.min()) < 8
        assert roll.stats["relayouts"] >= 1


def test_batching_invariance_and_duplicate_prompts():
    model = tiny_model()
    engine = Engine(model, prefix_cache_tokens=0)
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=40, seed=123)
    both = engine.sample([PROMPTS[0], PROMPTS[1]], 4, **kw)
    a = engine.sample([PROMPTS[0]], 4, **kw)
    b = engine.sample([PROMPTS[1]], 4, **kw)
    assert both.tokens == a.tokens + b.tokens
    torch.testing.assert_close(torch.cat(both.logprobs[1]), torch.cat(b.logprobs[0]), rtol=0, atol=1e-5)
    swapped = engine.sample([PROMPTS[1], PROMPTS[0]], 4, **kw)
    assert swapped.tokens == b.tokens + a.tokens
    dup = engine.sample([PROMPTS[0], PROMPTS[0]], 4, **kw)
    assert dup.tokens[0] == a.tokens[0] and dup.tokens[1] != dup.tokens[0]
    assert dup.stats["prefill_tokens"] == len(PROMPTS[0])          # a repeated prompt is prefilled once
    assert engine.sample([PROMPTS[0]], 4, **{**kw, "seed": 124}).tokens != a.tokens


def test_greedy_matches_transformers_generate():
    transformers = pytest.importorskip("transformers")
    model = tiny_model(init=0.3)
    hf = transformers.AutoModelForCausalLM.from_config(model.config.to_hf())
    hf.load_state_dict(model.hf_state_dict())
    hf.eval()
    prompt = PROMPTS[0]
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    roll = Engine(model).sample([prompt], 2, max_new_tokens=8, temperature=0.0)
    assert roll.tokens[0][0] == roll.tokens[0][1] == out[0, len(prompt):].tolist()


def test_policy_version_invalidates_caches():
    model = tiny_model()
    engine = Engine(model)
    kw = dict(max_new_tokens=5, seed=5)
    first = engine.sample(PROMPTS, 2, **kw)
    assert first.policy_version == 0 and first.stats["prefill_tokens"] == sum(map(len, PROMPTS))
    again = engine.sample(PROMPTS, 2, **kw)
    assert again.stats["prefill_tokens"] == 0 and again.tokens == first.tokens   # served from the prefix cache

    # an optimizer step, without telling the engine: the version counters give it away
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    model(torch.tensor([PROMPTS[0]])).logsumexp(-1).sum().backward()
    opt.step()
    after = engine.sample(PROMPTS, 2, **kw)
    fresh = Engine(model).sample(PROMPTS, 2, **kw)
    assert after.policy_version == 1 and after.stats["prefill_tokens"] == sum(map(len, PROMPTS))
    assert after.tokens == fresh.tokens
    for g in range(len(PROMPTS)):
        torch.testing.assert_close(torch.cat(after.logprobs[g]), torch.cat(fresh.logprobs[g]), rtol=0, atol=1e-6)
    assert after.tokens != first.tokens

    # the trainer's explicit bump drops the cache too
    assert engine.update_policy() == 2
    bumped = engine.sample(PROMPTS, 2, **kw)
    assert bumped.policy_version == 2 and bumped.stats["prefill_tokens"] == sum(map(len, PROMPTS))


def test_rollouts_shapes_n1_and_single_token():
    model = tiny_model()
    roll = Engine(model).sample(PROMPTS, 1, max_new_tokens=1, seed=0)
    assert isinstance(roll, Rollouts)
    assert roll.lengths.shape == (3, 1) and roll.lengths.dtype == torch.long
    assert all(len(roll.tokens[g][0]) == 1 for g in range(3))
    assert roll.finish_reasons == [["length"]] * 3
    roll = Engine(model).sample(PROMPTS, 2, max_new_tokens=4, seed=0, stop_token_ids=range(0, 97, 3))
    tokens, logprobs, mask = roll.padded(pad_id=-1)
    assert tokens.shape == logprobs.shape == mask.shape == (3, 2, int(roll.lengths.max()))
    assert torch.equal(mask.sum(-1), roll.lengths)
    assert (tokens[~mask] == -1).all()


def test_kv_memory_is_prefix_once_plus_suffix_per_sample():
    model = tiny_model()
    G, n, L, P = 2, 8, 6, 20
    prompts = [list(range(1, P + 1)), list(range(30, 30 + P))]
    roll = Engine(model).sample(prompts, n, max_new_tokens=L, seed=0)
    c = model.config
    per_token = c.n_layers * 2 * c.n_kv_heads * c.head_dim * 4
    assert roll.stats["kv_cache_bytes"] == (G * P + G * n * (L - 1)) * per_token   # vs G * n * (P + L) naive


def test_sampler_frequencies_and_truncation():
    torch.manual_seed(1)
    logits = torch.randn(1, 7) * 1.5
    N = 40000
    u = sample_uniforms(sample_keys(0, [[1]], 1), N)[0, 0]                  # one stream, N draws
    for top_k, top_p in [(0, 1.0), (3, 1.0), (0, 0.6)]:
        tok, lp = sample_from_logits(logits.expand(N, 7), u, temperature=0.9, top_k=top_k, top_p=top_p)
        p = torch.softmax(logits[0].double() / 0.9, -1)
        torch.testing.assert_close(lp.double(), p.log()[tok], rtol=0, atol=1e-6)      # before truncation
        order = torch.argsort(p, descending=True)
        keep = torch.zeros(7, dtype=torch.bool)
        if top_k:
            keep[order[:top_k]] = True
        elif top_p < 1:
            before = torch.cumsum(p[order], 0) - p[order]
            keep[order[before < top_p]] = True
        else:
            keep[:] = True
        q = torch.where(keep, p, 0.0)
        q = q / q.sum()
        freq = torch.bincount(tok, minlength=7).double() / N
        assert (freq[~keep] == 0).all()
        assert ((freq - q).abs() <= 4 * (q * (1 - q) / N).sqrt() + 1e-9).all(), (freq, q)
    greedy, lp0 = sample_from_logits(logits, u[:1], temperature=0.0)
    assert int(greedy) == int(logits.argmax()) and math.isclose(float(lp0), float(logits.log_softmax(-1).max()),
                                                                abs_tol=1e-6)


def test_uniforms_are_uniform_and_independent_of_batch():
    keys = sample_keys(9, [[1, 2], [3], [1, 2]], 4)
    u = sample_uniforms(keys, 5000)
    assert u.dtype == torch.float64 and u.shape == (3, 4, 5000)
    assert (u > 0).all() and (u < 1).all()
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.std()) - math.sqrt(1 / 12)) < 0.005
    assert len(torch.unique(u)) == u.numel()
    torch.testing.assert_close(sample_uniforms(sample_keys(9, [[3]], 4), 5000)[0], u[1], rtol=0, atol=0)


def test_validation_errors():
    engine = Engine(tiny_model())
    good = dict(prompts=PROMPTS, n=2, max_new_tokens=3)
    bad = [("prompts", dict(prompts=[])), (r"prompts\[1\]", dict(prompts=[[1], []])),
           (r"prompts\[0\]", dict(prompts=[[1, 97]])), (r"prompts\[0\]", dict(prompts=[[-1]])),
           ("n", dict(n=0)), ("max_new_tokens", dict(max_new_tokens=0)), ("temperature", dict(temperature=-0.1)),
           ("top_p", dict(top_p=0.0)), ("top_p", dict(top_p=1.5)), ("top_k", dict(top_k=-1)),
           ("stop_token_ids", dict(stop_token_ids=[97]))]
    wrong_type = [("prompts", dict(prompts="12")), (r"prompts\[0\]", dict(prompts=[[1.5]])), ("n", dict(n=2.0)),
                  ("seed", dict(seed=1.5)), ("temperature", dict(temperature="hot"))]
    for error, cases in ((ValueError, bad), (TypeError, wrong_type)):
        for name, change in cases:
            with pytest.raises(error, match=name):
                args = {**good, **change}
                engine.sample(args.pop("prompts"), args.pop("n"), **args)
    with pytest.raises(TypeError, match="model"):
        Engine(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="attention_impl"):
        Engine(tiny_model(), attention_impl="cuda")


def test_hf_adapter_fallback_equals_shared_prefix_path():
    """Models without prefix sharing decode through transformers' cache with the same sampler and streams."""
    transformers = pytest.importorskip("transformers")
    from bonfast.model import HFAdapter
    model = tiny_model(init=0.4)
    hf = transformers.AutoModelForCausalLM.from_config(model.config.to_hf())
    hf.load_state_dict(model.hf_state_dict())
    kw = dict(max_new_tokens=6, temperature=0.9, top_k=50, stop_token_ids=range(0, 97, 8), seed=21)
    lean = Engine(model).sample(PROMPTS, 3, **kw)
    adapted = Engine(HFAdapter(hf.eval())).sample(PROMPTS, 3, **kw)
    assert adapted.tokens == lean.tokens and adapted.finish_reasons == lean.finish_reasons
    for g in range(len(PROMPTS)):
        torch.testing.assert_close(torch.cat(adapted.logprobs[g]), torch.cat(lean.logprobs[g]), rtol=0, atol=1e-5)
