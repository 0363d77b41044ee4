"""The precision policy (bonfast.precision) on CPU: the bf16 policy a GPU run uses by default, exercised here with
`precision="bf16"` (CPU supports bf16 autocast and bf16 tensors), and the fp32 policy as the unchanged old path.

bf16 parity tolerance (sampling vs scoring). The engine and `score` run the same bf16 body through different
attention code (prefill SDPA + decode prefix attention with a log-sum-exp merge, versus packed concat SDPA) and
round intermediate activations to bf16 at different points. bf16 keeps 8 significant bits (unit roundoff 2^-9),
so each path's own log-probs differ from the float64 truth by a few hundredths of a nat on this model (measured:
up to ~0.08 with logits up to ~4.5); the two paths must agree at least as well as either agrees with the truth:
max |sample - score| <= max |score - truth| + 0.01, and absolutely within 0.1 nat max / 0.02 nat mean. Under fp32
the same comparison holds to 1e-4.
"""
import contextlib
import json
import math

import pytest
import torch

import bonfast.engine
import bonfast.ops
from bonfast import precision
from bonfast.build import build, warm_start_path
from bonfast.config import TrainConfig
from bonfast.engine import Engine
from bonfast.model import ModelConfig, apply_rope, from_config
from bonfast.packing import PackedAttention, pack, packed_logprobs, score
from bonfast.train import Run, rl_step

PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16]]
PARITY_MAX, PARITY_MEAN = 0.1, 0.02  # nats per token, bf16 policy (module docstring)


def tiny_model(qk_norm=False, init=0.2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, intermediate_size=128,
                      qk_norm=qk_norm, model_type="qwen3" if qk_norm else "llama")
    model = from_config(cfg)
    for p in model.parameters():
        if p.dim() == 2:  # larger weights than the default init: logits of a few nats, like a trained model
            torch.nn.init.normal_(p, std=init)
    return model


def batch_of(responses):
    return pack(PROMPTS, responses)


RESPONSES = [[[20, 21, 22], [23]], [[24, 25], [26, 27, 28, 29]], [[30], [31, 32]]]


# ---- the policy itself ------------------------------------------------------------------------------------


def test_resolve_per_device_and_model_dtype():
    assert precision.resolve("auto", "cpu").name == "fp32"
    assert precision.resolve("auto", "cuda").name == "bf16"
    assert precision.resolve("auto", "cuda").compute_dtype == torch.bfloat16
    assert precision.resolve("bf16", "cpu").compute_dtype == torch.bfloat16
    assert precision.resolve("fp32", "cuda").compute_dtype is None
    # a model that is not float32 computes in its own dtype under every policy
    assert precision.resolve("bf16", "cpu", torch.float64).compute_dtype is None
    assert precision.resolve("bf16", "cpu", torch.bfloat16).compute_dtype is None
    with pytest.raises(ValueError, match="precision: expected one of auto, fp32, bf16, got 'fp16'"):
        precision.resolve("fp16", "cpu")
    with pytest.raises(TypeError, match="precision"):
        precision.resolve(16, "cpu")


def test_config_field_validated():
    assert TrainConfig().precision == "auto"
    with pytest.raises(ValueError, match="TrainConfig.precision: expected"):
        TrainConfig(precision="fp16").validate()
    with pytest.raises(TypeError, match="TrainConfig.precision: expected"):
        TrainConfig(precision=16).validate()
    with pytest.raises(ValueError, match="precision: expected one of"):
        Engine(tiny_model(), precision="half")


def test_fp32_policy_is_the_old_path(monkeypatch):
    """precision "fp32" (the CPU default) enters no autocast context and computes exactly what the code did
    before the policy existed: float32 hidden states and W straight into the loss head."""
    model = tiny_model()
    batch = batch_of(RESPONSES)
    seen = []
    hidden = model.hidden

    def spy(*args):
        seen.append(torch.is_autocast_enabled("cpu"))
        return hidden(*args)
    monkeypatch.setattr(model, "hidden", spy)
    for kw in ({}, {"precision": "fp32"}, {"precision": "auto"}, {"autocast": False}):
        logp, _ = packed_logprobs(model, batch, **kw)
        h = hidden(batch.input_ids, batch.positions, PackedAttention(batch))
        old = bonfast.ops.linear_logprobs(h.reshape(-1, h.shape[-1])[batch.resp_rows], model.lm_head_weight,
                                          batch.targets)
        assert torch.equal(logp, old), kw
    assert seen == [False] * 4
    assert isinstance(precision.resolve("fp32", "cpu").autocast(), contextlib.nullcontext)
    packed_logprobs(model, batch, precision="bf16")
    assert seen[-1] is True


# ---- the autocast / RoPE regression ------------------------------------------------------------------------


def _old_apply_rope(x, cos, sin):
    """RoPE before the fix: the rotation in the angles' dtype, returned in it (fp32 q, k from bf16 projections)."""
    x1, x2 = x.chunk(2, dim=-1)
    rot = torch.cat((-x2, x1), dim=-1)
    return x * cos[:, :, None] + rot * sin[:, :, None]


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3-qk-norm"])
def test_bf16_autocast_step_runs(qk_norm, monkeypatch):
    """The crash this guards against: bf16 autocast around an fp32 model gave fp32 q, k (RoPE in fp32, and
    RMSNorm over q, k with an fp32 weight) next to a bf16 v, and attention raised "q, k, v must share a dtype"."""
    model = tiny_model(qk_norm=qk_norm)
    batch = batch_of(RESPONSES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, _ = packed_logprobs(model, batch, autocast=False)
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    (-logp.sum()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    x = torch.randn(1, 3, 2, model.config.head_dim, dtype=torch.bfloat16)
    cos, sin = model.rope(torch.arange(3)[None], torch.float32)
    assert apply_rope(x, cos, sin).dtype == torch.bfloat16
    # the same step with the RoPE of before the fix still raises: the test reproduces the crash
    monkeypatch.setattr("bonfast.model.apply_rope", _old_apply_rope)
    with pytest.raises(ValueError, match="share a dtype"), torch.autocast("cpu", dtype=torch.bfloat16):
        packed_logprobs(model, batch, autocast=False)


# ---- the bf16 policy end to end --------------------------------------------------------------------------


def _spy_loss_head(monkeypatch):
    calls = []
    real = bonfast.ops.linear_logprobs

    def spy(hidden, weight, *args, **kwargs):
        calls.append((hidden.dtype, weight.dtype, weight.grad_fn is not None))
        return real(hidden, weight, *args, **kwargs)
    monkeypatch.setattr(bonfast.ops, "linear_logprobs", spy)
    return calls


def _spy_prefix_attention(monkeypatch):
    calls = []
    real = bonfast.engine.prefix_attention

    def spy(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, *args, **kwargs):
        calls.append({q.dtype, prefix_k.dtype, prefix_v.dtype, suffix_k.dtype, suffix_v.dtype})
        return real(q, prefix_k, prefix_v, prefix_lens, suffix_k, suffix_v, *args, **kwargs)
    monkeypatch.setattr(bonfast.engine, "prefix_attention", spy)
    return calls


def test_bf16_training_step(tmp_path, monkeypatch):
    """rl_step through the real trainer objects under precision="bf16": finite loss, the loss head fed bf16 h and
    a bf16 W cast under autograd, fp32 master weights, grads and AdamW state, a bf16 KV cache when sampling."""
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))
    # sft: the reference response carries weight, so an untrained policy (all rewards 0) still gets a gradient
    cfg = TrainConfig(precision="bf16", device="cpu", method="sft", n_bon=1, tiny_dim=32, tiny_layers=2,
                      tiny_heads=2, n=4, prompts_per_step=4, max_new_tokens=6, sft_steps=0, steps=1, warmup_steps=1,
                      out_dir=str(tmp_path / "run"), progress=False).validate()
    device = torch.device("cpu")
    model, tokenizer, task, verifier = build(cfg, device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    engine = Engine(model, device=device, precision=cfg.precision)
    run = Run(cfg, model, None, engine, opt, tokenizer, task, verifier, device)
    head, attn = _spy_loss_head(monkeypatch), _spy_prefix_attention(monkeypatch)
    before = [p.detach().clone() for p in model.parameters()]
    record = rl_step(run, 0)
    assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"]) and record["grad_norm"] > 0
    assert head == [(torch.bfloat16, torch.bfloat16, True)]  # one micro-batch: one loss-head call
    assert attn and all(dtypes == {torch.bfloat16} for dtypes in attn)  # q and the whole KV cache in bf16
    for p, p0 in zip(model.parameters(), before):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert opt.state[p]["exp_avg"].dtype == torch.float32
    assert any(not torch.equal(p, p0) for p, p0 in zip(model.parameters(), before))  # the fp32 masters moved
    assert model.lm_head_weight.grad.abs().sum() > 0  # the gradient came back through the bf16 cast of W


def test_bf16_sampling_matches_scoring():
    """The engine's reported log-probs equal what `score` recomputes for the same tokens, under each policy
    (tolerances in the module docstring)."""
    model = tiny_model()
    reference = tiny_model().double()
    reference.load_state_dict(model.state_dict())
    for policy in ("fp32", "bf16"):
        roll = Engine(model, precision=policy).sample(PROMPTS, 4, max_new_tokens=10, seed=0)
        scored = score(model, PROMPTS, roll.tokens, precision=policy)
        truth = score(reference, PROMPTS, roll.tokens)
        sampled, scored, truth = (torch.cat([t.double() for row in x for t in row])
                                  for x in (roll.logprobs, scored, truth))
        assert torch.isfinite(sampled).all() and torch.isfinite(scored).all()
        gap = (sampled - scored).abs()
        if policy == "fp32":
            assert gap.max() < 1e-4
            assert roll.stats["kv_cache_bytes"] % 4 == 0
            fp32_bytes = roll.stats["kv_cache_bytes"]
            continue
        assert gap.max() <= (scored - truth).abs().max() + 0.01, (gap.max(), (scored - truth).abs().max())
        assert gap.max() < PARITY_MAX and gap.mean() < PARITY_MEAN, (gap.max(), gap.mean())
        assert (sampled - truth).abs().max() > 1e-4  # bf16 really ran (not the fp32 path)
        assert roll.stats["kv_cache_bytes"] * 2 == fp32_bytes  # the KV cache is 16-bit


def test_score_bf16_dtypes(monkeypatch):
    head = _spy_loss_head(monkeypatch)
    out = score(tiny_model(), PROMPTS, RESPONSES, precision="bf16")
    assert head == [(torch.bfloat16, torch.bfloat16, False)]  # no gradient under score's no_grad
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for row in out for t in row)


def test_bonfast_train_cli_bf16(tmp_path, monkeypatch):
    """`bonfast train --precision bf16` with tiny settings: the config records the policy, and the step's loss is
    finite."""
    from bonfast.cli import main
    monkeypatch.setenv("BONFAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    main(["train", "--precision", "bf16", "--device", "cpu", "--out_dir", str(out), "--steps", "1",
          "--sft_steps", "0", "--eval_prompts", "8", "--eval_n", "4", "--eval_ks", "1,4", "--n", "4", "--n_bon", "2",
          "--prompts_per_step", "4", "--max_new_tokens", "6", "--tiny_dim", "32", "--tiny_layers", "1",
          "--tiny_heads", "2", "--progress", "false", "--ckpt_every", "0"])
    assert json.loads((out / "config.json").read_text())["precision"] == "bf16"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 1 and math.isfinite(train[0]["loss"])


def test_warm_start_key():
    """fp32 warm starts keep the cache key they had before the precision field; bf16 ones get their own."""
    cfg = TrainConfig(device="cpu")
    assert warm_start_path(cfg) == warm_start_path(TrainConfig(device="cpu", precision="fp32"))
    assert warm_start_path(cfg) != warm_start_path(TrainConfig(device="cpu", precision="bf16"))
    assert warm_start_path(TrainConfig(precision="auto"), "cuda") == warm_start_path(
        TrainConfig(precision="bf16"), "cuda")
