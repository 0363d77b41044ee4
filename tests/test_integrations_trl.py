"""bonfast's BoN weights inside TRL's GRPOTrainer (bonfast.integrations.trl), run against the real TRL on CPU.

A tiny random Llama and a character tokenizer are built here; GRPOTrainer runs 2 steps per method. Checked: the
advantages TRL uses are n x bonfast's weights (before and after TRL's shuffle), the gradient of step 1 equals the
gradient of bonfast's own `bon_loss` (with `linear_logprobs`) on the same samples within 1e-5 relative, the
parameters change, and every setting that breaks exactness is refused with one error naming it.
"""
from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

from tiny_hf import char_tokenizer, tiny_llama  # noqa: E402

from bonfast import bon_loss, linear_logprobs  # noqa: E402
from bonfast.integrations.trl import BoNGRPOTrainer, check_exact  # noqa: E402  (after importorskip)
from bonfast.objectives import weights  # noqa: E402

CHARS = "0123456789+-=abcdefgh"
N_GEN, G, L_MAX = 4, 2, 6


def correct(completions, **_):
    """Binary task reward: the completion's first character is a digit (about half the vocabulary)."""
    return [float(bool(c) and c[0].isdigit()) for c in completions]


def verifier_score(completions, **_):
    """A continuous verifier score: the share of digits in the completion (for rl_v / bon_rl_v)."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def grpo_config(tmp_path, **overrides):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, fp16=False,
              report_to="none", save_strategy="no", logging_steps=1, max_steps=2, learning_rate=1e-2,
              per_device_train_batch_size=G * N_GEN, num_generations=N_GEN, max_completion_length=L_MAX,
              loss_type="dr_grpo", seed=0, max_grad_norm=0.0, dataloader_num_workers=0)
    kw.update(overrides)
    return trl.GRPOConfig(**kw)


class Probe(BoNGRPOTrainer):
    """Records the generated batch, the batches the loss sees (after TRL's shuffle) and the step-1 gradient."""

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        self.probe_generated.append({"out": {k: v.clone() for k, v in out.items() if torch.is_tensor(v)},
                                     "rewards": self._bon_rewards.clone()})
        return out

    def _compute_loss(self, model, inputs):
        self.probe_used.append({k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)})
        return super()._compute_loss(model, inputs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.probe_grads is None:
            self.probe_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss


def make_trainer(tmp_path, method, n_bon, *, reward_funcs=(correct,), bon_options=None, verifier=None,
                 config=None, seed=0, **kw):
    tok = char_tokenizer(CHARS)
    model_dir = tmp_path / "model"           # a path, so that TRL can build its reference model from it (beta != 0)
    tiny_llama(len(tok), seed).save_pretrained(model_dir)
    prompts = ["12+34=", "56-78=", "9+10=0", "ab+cd="]                    # equal lengths: no left padding
    ds = datasets.Dataset.from_dict({"prompt": prompts * 4})
    trainer = Probe(model=str(model_dir), reward_funcs=list(reward_funcs), args=config or grpo_config(tmp_path),
                    train_dataset=ds, processing_class=tok, bon_method=method, n_bon=n_bon,
                    bon_options=bon_options, verifier=verifier, **kw)
    trainer.probe_generated, trainer.probe_used, trainer.probe_grads = [], [], None
    return trainer


def reference_grads(model, batch, w, temperature=1.0):
    """Gradient of bonfast's loss on TRL's samples: hidden states -> linear_logprobs -> bon_loss."""
    prompt_ids, completion_ids = batch["prompt_ids"], batch["completion_ids"]
    mask = batch["completion_mask"].bool()
    input_ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    model.zero_grad()
    hidden = model.model(input_ids=input_ids, attention_mask=attn).last_hidden_state      # (B, P + L, D)
    P, L = prompt_ids.shape[1], completion_ids.shape[1]
    h = hidden[:, P - 1:P + L - 1]                                                          # (B, L, D)
    logp = linear_logprobs(h, model.lm_head.weight, completion_ids, temperature=temperature)  # (B, L)
    B = completion_ids.shape[0]
    sample_index = torch.where(mask, torch.arange(B)[:, None].expand(B, L), -1)
    loss = bon_loss(logp, sample_index, w.reshape(-1).float(), normaliser=(B // N_GEN) * L_MAX)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


METHODS = [("rl", 1, {}, None), ("pass_at_k", 2, {}, None), ("bon_rl_s", 2, {}, None),
           ("bon_rl_v", 2, {}, "verifier_score"), ("bon_rlb", 3, {}, None), ("bon_rlb_p", 2, {}, None),
           ("bon_rl_v", 3, {"credit": "winner"}, 1), ("rl_v", 1, {}, 1)]


@pytest.mark.parametrize("method,n_bon,options,verifier", METHODS, ids=[f"{m[0]}-{m[1]}-{m[2]}" for m in METHODS])
def test_trl_advantages_and_gradient_are_bonfast(tmp_path, method, n_bon, options, verifier):
    funcs = (correct, verifier_score) if verifier is not None else (correct,)
    trainer = make_trainer(tmp_path, method, n_bon, reward_funcs=funcs, bon_options=options, verifier=verifier)
    initial = copy.deepcopy(trainer.model)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()

    first = trainer.probe_generated[0]
    rewards = first["rewards"].double()
    R = rewards[:, 0].reshape(-1, N_GEN)
    scores = rewards[:, 1].reshape(-1, N_GEN) if verifier is not None else None
    w = weights(method, R, n_bon=n_bon, scores=scores, **options)                          # (G, n)
    adv = first["out"]["advantages"]
    assert torch.equal(adv.double(), (N_GEN * w).reshape(-1).to(adv.dtype).double()), "advantages != n * w"
    used = trainer.probe_used[0]["advantages"]                                             # after TRL's shuffle
    assert torch.equal(torch.sort(used).values, torch.sort(adv).values)
    assert (w != 0).any(), "the test batch must carry a learning signal (mixed rewards in a group)"

    ref = reference_grads(initial, first["out"], w)
    assert set(ref) == set(trainer.probe_grads)
    for name, g in trainer.probe_grads.items():
        scale = ref[name].abs().max().clamp(min=1e-12)
        assert (g - ref[name]).abs().max() / scale <= 1e-5, name
    changed = any(not torch.equal(before[n], p.detach()) for n, p in trainer.model.named_parameters())
    assert changed and len(trainer.probe_generated) == 2


def test_trl_kl_term_maps_to_kl_coef(tmp_path):
    """TRL's beta with use_bias_correction_kl=False is n x bonfast's kl_coef (a perturbed reference model)."""
    beta = 0.3
    trainer = make_trainer(tmp_path, "bon_rlb_p", 2,
                           config=grpo_config(tmp_path, beta=beta, use_bias_correction_kl=False, max_steps=1))
    with torch.no_grad():
        for p in trainer.ref_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    initial, ref_model = copy.deepcopy(trainer.model), copy.deepcopy(trainer.ref_model)
    trainer.train()
    batch = trainer.probe_generated[0]["out"]
    w = weights("bon_rlb_p", trainer.probe_generated[0]["rewards"][:, 0].double().reshape(-1, N_GEN), n_bon=2)
    mask = batch["completion_mask"].bool()
    assert torch.allclose(batch["ref_per_token_logps"][mask], _logps(ref_model, batch)[mask], atol=1e-5)
    assert not torch.allclose(batch["ref_per_token_logps"][mask], _logps(initial, batch)[mask], atol=1e-2)
    grads = _grads_with_kl(initial, batch, w, batch["ref_per_token_logps"], beta / N_GEN)
    for name, g in trainer.probe_grads.items():
        assert (g - grads[name]).abs().max() / grads[name].abs().max() <= 1e-5, name


def _logps(model, batch):
    P = batch["prompt_ids"].shape[1]
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        hidden = model.model(input_ids=ids,
                             attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1))
        h = hidden.last_hidden_state[:, P - 1:-1]
        return linear_logprobs(h, model.lm_head.weight, batch["completion_ids"])


def _grads_with_kl(model, batch, w, ref_logp, beta):
    P, (B, L) = batch["prompt_ids"].shape[1], batch["completion_ids"].shape
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    hidden = model.model(input_ids=ids, attention_mask=torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1))
    logp = linear_logprobs(hidden.last_hidden_state[:, P - 1:-1], model.lm_head.weight, batch["completion_ids"])
    idx = torch.where(batch["completion_mask"].bool(), torch.arange(B)[:, None].expand(B, L), -1)
    bon_loss(logp, idx, w.reshape(-1).float(), normaliser=(B // N_GEN) * L_MAX, ref_logp=ref_logp,
             kl_coef=beta).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


REFUSED = [
    ({"loss_type": "grpo"}, "GRPOConfig.loss_type: expected 'dr_grpo'"),
    ({"loss_type": "dapo"}, "GRPOConfig.loss_type: expected 'dr_grpo'"),
    ({"loss_type": "sapo"}, "GRPOConfig.loss_type: expected 'dr_grpo'"),
    ({"num_iterations": 2}, "GRPOConfig.num_iterations: expected 1"),
    ({"steps_per_generation": 2}, "GRPOConfig.steps_per_generation: expected <= gradient_accumulation_steps"),
    ({"mask_truncated_completions": True}, "GRPOConfig.mask_truncated_completions: expected False"),
    ({"top_entropy_quantile": 0.5}, "GRPOConfig.top_entropy_quantile: expected 1.0"),
    ({"entropy_coef": 0.01}, "GRPOConfig.entropy_coef: expected 0.0"),
    ({"importance_sampling_level": "sequence"}, "GRPOConfig.importance_sampling_level: expected 'token'"),
    ({"beta": 0.1}, "GRPOConfig.use_bias_correction_kl: expected False when beta != 0"),
    ({"top_p": 0.9}, "GRPOConfig.top_p: expected 1.0"),
    ({"top_k": 5}, "GRPOConfig.top_k: expected 0 or None"),
]


@pytest.mark.parametrize("setting,message", REFUSED, ids=[next(iter(s)) + "-" + str(next(iter(s.values())))
                                                          for s, _ in REFUSED])
def test_trl_refuses_inexact_settings(tmp_path, setting, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as err:
        make_trainer(tmp_path, "bon_rlb_p", 2, config=grpo_config(tmp_path, **setting))
    assert "\n" not in str(err.value) and "approximate=True" in str(err.value)


def test_trl_approximate_flag_allows_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="approximation of the BoN gradient: GRPOConfig.loss_type"):
        trainer = make_trainer(tmp_path, "bon_rlb_p", 2, config=grpo_config(tmp_path, loss_type="grpo"),
                               approximate=True)
    assert check_exact(trainer.args) and trainer.bon_method == "bon_rlb_p"


@pytest.mark.parametrize("kwargs,message", [
    ({"bon_method": "bon_sft"}, "bon_method: 'bon_sft' needs the log-likelihood of a gold response"),
    ({"bon_method": "sft"}, "bon_method: 'sft' needs the log-likelihood of a gold response"),
    ({"bon_method": "nope"}, "bon_method: expected one of"),
    ({"bon_method": "rl", "n_bon": 2}, "n_bon: expected 1 for the inference-unaware method 'rl'"),
    ({"bon_method": "bon_rlb_p", "n_bon": 5}, r"n_bon: expected <= GRPOConfig.num_generations \(4\)"),
    ({"bon_method": "bon_rl_v", "n_bon": 2}, "verifier: 'bon_rl_v' selects with a verifier"),
    ({"bon_method": "bon_rl_s", "n_bon": 2, "verifier": 0}, "verifier: expected None for 'bon_rl_s'"),
    ({"bon_method": "bon_rl_s", "n_bon": 2, "bon_options": {"credit": "best"}},
     r"bon_options\['credit'\]: expected one of \['exact', 'winner'\]"),
    ({"bon_method": "bon_rl_s", "n_bon": 2, "bon_options": {"clip": 1}}, "bon_options: 'clip' is not an option"),
    ({"bon_method": "bon_rlb", "n_bon": 2, "bon_options": {"negative_sign": 1, "sample_source": "policy_group"}},
     r"bon_options\['negative_sign'\]: expected -1"),
])
def test_trl_refuses_bad_methods(tmp_path, kwargs, message):
    method = kwargs.pop("bon_method")
    n_bon = kwargs.pop("n_bon", 1)
    with pytest.raises(ValueError, match=message):
        make_trainer(tmp_path, method, n_bon, **kwargs)


def test_trl_unscorable_completion_is_a_clear_error(tmp_path):
    def sometimes_none(completions, **_):
        return [None] + [1.0] * (len(completions) - 1)

    trainer = make_trainer(tmp_path, "bon_rlb_p", 2, reward_funcs=(sometimes_none,))
    with pytest.raises(ValueError, match="rewards: a reward function returned None"):
        trainer.train()


def test_trl_private_api_is_checked(monkeypatch):
    """A TRL whose private methods changed is refused at import with the supported versions named."""
    import bonfast.integrations.trl as adapter

    monkeypatch.setattr(trl.GRPOTrainer, "_calculate_rewards", lambda self, inputs, prompts: None)
    with pytest.raises(ImportError, match=r"GRPOTrainer._calculate_rewards of trl .* supported: trl >= 1.16"):
        adapter._check_trl_api()
