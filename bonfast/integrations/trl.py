"""BoN-aware fine-tuning inside TRL's ``GRPOTrainer``: its group advantages replaced by bonfast's weights.

``BoNGRPOTrainer`` (a ``GRPOTrainer`` subclass) keeps everything of TRL's trainer (generation, reward functions,
vLLM, PEFT, logging, distributed set-up) and changes one thing: the advantage of each completion is
``n * w_i``, where ``w = bonfast.objectives.weights(method, R, n_bon=N', scores=r, **options)`` are the per-sample
weights of the chosen BoN objective on the group of n = ``num_generations`` completions of a prompt.

Exactness
---------
With ``loss_type="dr_grpo"`` TRL's loss is ``Σ_t ℓ_t / (B · L_max)`` over the B completions of a micro-batch
(L_max = ``max_completion_length``), divided by the gradient-accumulation steps. When the policy is the sampler
(``num_iterations=1``, ``steps_per_generation <= gradient_accumulation_steps``) the ratio is 1 and the gradient of
TRL's clipped term ``-min(ρ A, clip(ρ) A)`` is ``-A ∇log π``. Summed over one optimizer step of G prompts x n
completions this is

    ∇L_TRL = -(1 / (G n L_max)) Σ_t A_{s(t)} ∇log π_t = -(1 / (G L_max)) Σ_t w_{s(t)} ∇log π_t   (A = n w),

the gradient of ``bonfast.ops.bon_loss(logp, sample_index, w, normaliser=G * L_max)``: bonfast's own trainer loss.
TRL's KL term ``β (e^{d} − d − 1)``, d = log π_ref − log π, shares that normaliser B · L_max (the policy term's is
G · L_max once A = n w), so it is bonfast's ``kl_coef`` term with ``beta = n * kl_coef``, when
``use_bias_correction_kl=False`` (TRL's default multiplies it by the ratio, which adds ``k3 ∇log π``).
``tests/test_integrations_trl.py`` checks, on TRL itself, that the advantages are ``n * w`` and that the
gradient of a step equals bonfast's within 1e-5.

Settings that break this equality are refused at construction with one error naming the setting
(``check_exact``), unless ``approximate=True`` is passed, which warns that the update is an approximation.

Reward functions: the task reward R is TRL's weighted sum (``reward_weights``) of the reward functions; for the
methods that select with a verifier (``rl_v``, ``bon_rl_v``), ``verifier=`` names the reward function whose output
is the verifier score r, which is then not part of R. ``sft`` and ``bon_sft`` are refused: they need the
log-likelihood of a gold response per prompt, a term GRPOTrainer's loss does not have.
"""
from __future__ import annotations

import inspect
import warnings

import torch

from bonfast.objectives import OBJECTIVES, weights

try:
    import trl
    from trl import GRPOTrainer
except ImportError as err:  # pragma: no cover - exercised only without trl
    raise ImportError("bonfast.integrations.trl needs TRL: pip install 'bonfast[trl]' (trl >= 1.16)") from err

__all__ = ["BoNGRPOTrainer", "BoNAdvantages", "check_exact", "SUPPORTED_TRL"]

SUPPORTED_TRL = "trl >= 1.16 (tested with 1.16.0)"

# The private GRPOTrainer methods this module overrides, with the parameters it relies on.
_OVERRIDES = {
    "_generate_and_score_completions": ["self", "inputs"],
    "_calculate_rewards": ["self", "inputs", "prompts", "completions", "completion_ids_list"],
}


def _check_trl_api() -> None:
    """Fail at import, with the supported versions, if TRL's private methods are not the ones this adapter wraps."""
    for name, params in _OVERRIDES.items():
        fn = getattr(GRPOTrainer, name, None)
        got = None if fn is None else list(inspect.signature(fn).parameters)
        if got != params:
            raise ImportError(f"bonfast.integrations.trl: GRPOTrainer.{name} of trl {trl.__version__} has "
                              f"parameters {got}, expected {params}; supported: {SUPPORTED_TRL}")


_check_trl_api()

# Sampling settings that draw from a distribution other than the tempered policy π^T (the weights' contract).
_SAMPLING_OFF = {"top_p": 1.0, "top_k": (0, None), "min_p": None, "repetition_penalty": 1.0}


def check_exact(args) -> list[str]:
    """The settings of a ``GRPOConfig`` under which TRL's gradient is not bonfast's ``bon_loss`` gradient.

    Returns one message per offending setting, each naming the field, the value it has and the value exactness
    needs (empty list: exact).
    """
    problems = []

    def need(field, ok, expected, why):
        value = getattr(args, field, None)
        if not ok(value):
            problems.append(f"GRPOConfig.{field}: expected {expected} for an exact BoN gradient, got {value!r} "
                            f"({why})")

    need("loss_type", lambda v: v == "dr_grpo", "'dr_grpo'",
         "its constant normaliser B * max_completion_length is bonfast's; grpo/sapo normalise by each "
         "completion's length, bnpo/dapo/cispo/vespo by token counts, luspo by sequence")
    need("max_completion_length", lambda v: isinstance(v, int) and v > 0, "a positive int",
         "dr_grpo divides by it")
    need("num_iterations", lambda v: v == 1, "1", "several updates per generation make the samples off-policy")
    need("steps_per_generation", lambda v: v is None or v <= args.gradient_accumulation_steps,
         f"<= gradient_accumulation_steps ({args.gradient_accumulation_steps})",
         "more optimizer steps than one per generation make later micro-batches off-policy")
    need("importance_sampling_level", lambda v: v in (None, "token"), "'token'",
         "the sequence level averages the log-ratio over tokens, a length-normalised gradient")
    need("mask_truncated_completions", lambda v: not v, "False",
         "dropping truncated completions biases the group's weights")
    need("top_entropy_quantile", lambda v: v is None or v >= 1.0, "1.0",
         "an entropy mask drops tokens from the gradient")
    need("entropy_coef", lambda v: not v, "0.0", "an entropy bonus is not part of the objective")
    need("use_adaptive_entropy", lambda v: not v, "False", "an entropy bonus is not part of the objective")
    need("off_policy_mask_threshold", lambda v: v is None, "None", "masking sequences changes the estimator")
    need("delta", lambda v: v is None or v >= 1.0, "None or >= 1", "it clamps the ratio below 1")
    if getattr(args, "use_vllm", False):
        need("vllm_importance_sampling_correction", lambda v: not v, "False",
             "the importance-sampling correction reweights each token by the sampler/trainer ratio")
    if getattr(args, "beta", 0.0):
        need("use_bias_correction_kl", lambda v: not v, "False when beta != 0",
             "it multiplies the KL term by the ratio, adding k3 * grad log pi")
    for field, off in _SAMPLING_OFF.items():
        allowed = off if isinstance(off, tuple) else (off,)
        need(field, lambda v, allowed=allowed: v in allowed, " or ".join(map(repr, allowed)),
             "the weights are unbiased for samples from the tempered policy, not a truncated one")
    gen = getattr(args, "generation_kwargs", None) or {}
    for key in sorted(set(gen) & (set(_SAMPLING_OFF) | {"temperature", "do_sample"})):
        problems.append(f"GRPOConfig.generation_kwargs[{key!r}]: expected unset for an exact BoN gradient, got "
                        f"{gen[key]!r} (it changes the sampling distribution)")
    return problems


class BoNAdvantages:
    """Mixin for a ``GRPOTrainer`` (sub)class: advantages = n x bonfast's BoN weights. See the module docstring.

    Keyword arguments (the rest go to the trainer):
        bon_method   a key of ``bonfast.objectives.OBJECTIVES`` except "sft" / "bon_sft".
        n_bon        N', the training-time BoN size (1 <= N' <= num_generations; 1 for rl and rl_v).
        bon_options  the method's options (``OBJECTIVES[bon_method].options``), e.g. {"credit": "winner"}.
        verifier     for rl_v / bon_rl_v: the reward function (its index in ``reward_funcs`` or its name) whose
                     output is the verifier score r; it is left out of the task reward R.
        approximate  allow settings that make the update differ from bonfast's gradient (warns once).
    """

    def __init__(self, *args, bon_method: str, n_bon: int = 1, bon_options: dict | None = None,
                 verifier: int | str | None = None, approximate: bool = False, **kwargs):
        objective = _check_method(bon_method, n_bon, bon_options or {}, verifier)
        super().__init__(*args, **kwargs)
        problems = check_exact(self.args)
        if problems and not approximate:
            raise ValueError(problems[0] + "; or pass approximate=True to train with an approximate BoN gradient")
        if problems:
            warnings.warn("BoNGRPOTrainer: the update is an approximation of the BoN gradient: " + "; ".join(problems),
                          stacklevel=2)
        for name, n in (("num_generations", self.num_generations), ("num_generations_eval", self.num_generations_eval)):
            if n_bon > n:
                raise ValueError(f"n_bon: expected <= GRPOConfig.{name} ({n}), the completions per prompt; got {n_bon}")
        self.bon_method, self.n_bon, self.bon_options = bon_method, n_bon, dict(bon_options or {})
        self._bon_score_column = None if not objective.scores else self._reward_column(verifier)
        self._bon_rewards = None

    def _reward_column(self, verifier) -> int:
        names = list(self.reward_func_names)
        if isinstance(verifier, str):
            if verifier not in names:
                raise ValueError(f"verifier: expected the name of a reward function, one of {names}; got {verifier!r}")
            return names.index(verifier)
        if not 0 <= verifier < len(names) or len(names) < 2:
            raise ValueError(f"verifier: expected the index of one of the {len(names)} reward functions {names}, "
                             f"another of which is the task reward; got {verifier!r}")
        return verifier

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._bon_rewards = rewards_per_func           # (B_global, F): gathered over processes by TRL
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        n = self.num_generations if mode == "train" else self.num_generations_eval
        adv = n * self.bon_weights(self._bon_rewards, n).reshape(-1)            # (B_global,)
        rank, B = self.accelerator.process_index, len(inputs)
        out["advantages"] = adv[rank * B:(rank + 1) * B].to(out["advantages"].device, out["advantages"].dtype)
        logged = self._logs["advantages"]              # TRL logged its own advantages: replace them with ours
        for _ in range(min(adv.numel(), len(logged))):
            logged.pop()
        logged.extend(adv.tolist())
        return out

    def bon_weights(self, rewards_per_func: torch.Tensor, n: int) -> torch.Tensor:
        """bonfast's weights w [G, n] (float64) for TRL's rewards (B_global, F), groups of n consecutive rows."""
        if torch.isnan(rewards_per_func).any():
            raise ValueError("rewards: a reward function returned None for a completion; BoN weights need every "
                             "completion's reward (and verifier score)")
        R_all = rewards_per_func.to(torch.float64)
        w_func = self.reward_weights.to(R_all.device, torch.float64)
        keep = torch.ones(R_all.shape[1], dtype=torch.bool, device=R_all.device)
        scores = None
        if self._bon_score_column is not None:
            keep[self._bon_score_column] = False
            scores = R_all[:, self._bon_score_column].reshape(-1, n)
        R = (R_all[:, keep] * w_func[keep]).sum(1).reshape(-1, n)           # (G, n)
        return weights(self.bon_method, R, n_bon=self.n_bon, scores=scores, **self.bon_options)


class BoNGRPOTrainer(BoNAdvantages, GRPOTrainer):
    """TRL's ``GRPOTrainer`` with bonfast's BoN weights as advantages (``BoNAdvantages`` has the arguments).

    Example::

        trainer = BoNGRPOTrainer(model=model, reward_funcs=[correct], train_dataset=ds, bon_method="bon_rlb_p",
                                 n_bon=4, args=GRPOConfig(loss_type="dr_grpo", num_generations=8, ...))
    """


def _check_method(method, n_bon, options, verifier):
    if method not in OBJECTIVES:
        raise ValueError(f"bon_method: expected one of {[m for m in OBJECTIVES if not OBJECTIVES[m].expert]}, "
                         f"got {method!r}")
    objective = OBJECTIVES[method]
    if objective.expert:
        raise ValueError(f"bon_method: {method!r} needs the log-likelihood of a gold response per prompt, a term "
                         "GRPOTrainer's loss does not have; train it with `bonfast train --method "
                         f"{method}` (or TRL's SFTTrainer for plain sft)")
    if not isinstance(n_bon, int) or isinstance(n_bon, bool) or n_bon < 1:
        raise ValueError(f"n_bon: expected an int >= 1, got {n_bon!r}")
    if not objective.bon_aware and n_bon != 1:
        raise ValueError(f"n_bon: expected 1 for the inference-unaware method {method!r}, got {n_bon}")
    for key, value in options.items():
        if key not in objective.options:
            raise ValueError(f"bon_options: {key!r} is not an option of {method!r}; its options: "
                             f"{sorted(objective.options)}")
        allowed = objective.options[key]
        if allowed is not None and value not in allowed:
            raise ValueError(f"bon_options[{key!r}]: expected one of {list(allowed)}, got {value!r}")
    if objective.descends is not None and (bad := objective.descends(n_bon, options)):
        raise ValueError(f"bon_options[{bad[0]!r}]: expected {bad[1]}")
    if objective.scores and verifier is None:
        raise ValueError(f"verifier: {method!r} selects with a verifier; pass verifier=<index or name of the "
                         "reward function that returns the verifier score>")
    if not objective.scores and verifier is not None:
        raise ValueError(f"verifier: expected None for {method!r}, which selects by the task reward itself")
    return objective
