r"""bonfast's BoN-aware objectives as verl advantage estimators, plus an exact REINFORCE policy loss.

Importing this module registers, in verl's own registries (``verl.trainer.ppo.core_algos``):

    bonfast_<method>    an advantage estimator for each method whose weights need only the task reward R [G, n]
                        (rl, pass_at_k, bon_rl_s, bon_rlb, bon_rlb_p); ``algorithm.adv_estimator=bonfast_<method>``
    bonfast_<method>    for rl_v, bon_rl_v, sft and bon_sft: an estimator that refuses with the reason
                        (a verifier score separate from the reward, or a gold response, is not visible to it)
    bonfast_reinforce   the policy loss -A_t log p_t with no ratio and no clip, which refuses the actor settings
                        that break exactness; ``actor_rollout_ref.actor.policy_loss.loss_mode=bonfast_reinforce``

verl loads the module without a fork: through the ``verl.plugins`` entry-point group (bonfast declares one) or
``VERL_USE_EXTERNAL_MODULES=bonfast.integrations.verl`` (docs/integrations.md). Without verl installed the module
still imports and its estimator functions work; only ``register()`` (called on import, and silent then) needs verl.

What an estimator computes (per verl batch of B rows, each a response to a prompt with uid ``index[b]``):

    R_b   = Σ_t token_level_rewards[b, t] · response_mask[b, t]          (the sequence reward)
    w     = bonfast.objectives.weights(method, R [G, n], n_bon=N', **options)      (rows grouped by uid)
    A_b,t = n · w_{g(b), i(b)} · response_mask[b, t]                   (advantages = returns)

With verl's ``loss_agg_mode="seq-mean-token-sum"`` over a mini-batch of B = G·n sequences, the policy-gradient
term of ``bonfast_reinforce`` is -(1/B) Σ_b Σ_t A_b,t log p_b,t = -(1/G) Σ_g Σ_i w_gi log π(y_gi), i.e. bonfast's
``bon_loss`` with normaliser G (and "seq-mean-token-sum-norm" with ``loss_scale_factor=L`` gives normaliser G·L,
bonfast's trainer's G·max_new_tokens). Options are read from ``algorithm.bonfast`` (``+algorithm.bonfast.n_bon=4``
on verl's command line); see ``read_options``.

Shapes:
    token_level_rewards, response_mask [B, L]; index [B] (any hashable uids) -> advantages, returns [B, L]
"""
from __future__ import annotations

import inspect
import numbers
from collections import Counter
from collections.abc import Callable, Mapping

import torch

from bonfast.objectives import OBJECTIVES, weights

__all__ = ["SUPPORTED", "REFUSED", "ESTIMATORS", "POLICY_LOSS", "EXACT_AGG_MODES", "compute_advantages",
           "read_options", "make_estimator", "bonfast_reinforce", "check_actor_config", "register"]

# Methods whose weights are a function of the task reward alone: everything a verl estimator can compute.
SUPPORTED = tuple(m for m, o in OBJECTIVES.items() if not o.scores and not o.expert)
_WHY_SCORES = ("needs a verifier score r separate from the task reward R, and a verl advantage estimator sees one "
               "reward per response (token_level_rewards)")
_WHY_EXPERT = ("needs a gold (expert) response per prompt and a likelihood term on it, and verl's policy update "
               "trains only on the sampled responses")
_INSTEAD = {"rl_v": "bonfast_rl with the verifier score as verl's reward trains RL-V's objective E[r]",
            "bon_rl_v": "bonfast_bon_rl_s with the verifier score as verl's reward trains bon_rl_v's "
                        "reward='verifier' objective E[max of N' scores]"}
REFUSED = {m: (_WHY_EXPERT if o.expert else _WHY_SCORES) + (f"; {_INSTEAD[m]}" if m in _INSTEAD else "")
           for m, o in OBJECTIVES.items() if m not in SUPPORTED}

# Adapter options (besides n_bon and the method's own): see read_options.
GROUP_ORDERS = ("random", "batch")
# Options of the weight functions that are not settings: the reward and score tensors, and a true failure rate.
_NOT_OPTIONS = {"rewards", "scores", "n_bon", "check_values", "p", "target"}


def _method_options(method: str) -> dict:
    """The method's keyword options and their defaults, read from its weight function's signature."""
    params = inspect.signature(OBJECTIVES[method].fn).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _NOT_OPTIONS}


def _plain(value):
    """An OmegaConf / dataclass value as a plain python one (ListConfig -> tuple)."""
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, numbers.Number):
        return value
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in value}
    try:
        return tuple(_plain(v) for v in value)
    except TypeError:
        return value


def read_options(method: str, config=None) -> tuple[int, str, int, dict]:
    """The settings of ``bonfast_<method>`` from verl's algorithm config: its ``bonfast`` mapping.

    ``config`` is what verl passes as ``config=`` (``config.algorithm``: a DictConfig, an ``AlgoConfig``, a dict)
    or None (every option at its default). Keys of ``config.bonfast``:

        n_bon         N', the BoN size the objective is aware of (required; rl takes only 1, its default)
        group_order   "random" (default) or "batch": the order of a prompt's rows for the forms that split the
                      n samples into disjoint N'-groups in sample order (bon_rlb / bon_rlb_p with sample_source
                      "bon", bon_rl_s with credit "winner"). verl reorders rows by length (trainer.balance_batch),
                      so "batch" order may depend on the samples and bias those forms; "random" draws a fresh
                      content-independent order per call. "batch" only if the batch order is the sampling order.
        seed          the seed of the "random" order's generator (default 0; one generator per seed and process)
        <option>      the method's own options, as in ``bonfast.objectives.weights`` (e.g. credit, baseline,
                      sample_source, p_estimator, clip, negative_sign, eps); None means the default.

    Returns (n_bon, group_order, seed, options). An unknown key raises ValueError naming it and the accepted keys.
    """
    section = None
    if config is not None:
        section = config.get("bonfast", None) if hasattr(config, "get") else getattr(config, "bonfast", None)
    given = {} if section is None else _plain(section)
    if not isinstance(given, dict):
        raise TypeError(f"algorithm.bonfast: expected a mapping of bonfast options, got {type(section).__name__}")
    allowed = _method_options(method)
    unknown = sorted(set(given) - set(allowed) - {"n_bon", "group_order", "seed"})
    if unknown:
        raise ValueError(f"algorithm.bonfast.{unknown[0]}: not an option of bonfast_{method}; expected keys "
                         f"{['n_bon', 'group_order', 'seed', *allowed]}")
    bon_aware = OBJECTIVES[method].bon_aware
    n_bon = given.get("n_bon", None if bon_aware else 1)
    if n_bon is None:
        raise ValueError(f"algorithm.bonfast.n_bon: expected an int N' >= 1 (the BoN size) for bonfast_{method}, "
                         "got nothing (set +algorithm.bonfast.n_bon=...)")
    if isinstance(n_bon, bool) or not isinstance(n_bon, numbers.Integral):
        raise TypeError(f"algorithm.bonfast.n_bon: expected an int >= 1, got {n_bon!r}")
    group_order = given.get("group_order", "random")
    if group_order not in GROUP_ORDERS:
        raise ValueError(f"algorithm.bonfast.group_order: expected one of {list(GROUP_ORDERS)}, got {group_order!r}")
    seed = given.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"algorithm.bonfast.seed: expected an int, got {seed!r}")
    options = {k: v for k, v in given.items() if k in allowed and v is not None}
    descends = OBJECTIVES[method].descends
    problem = descends(int(n_bon), {**allowed, **options}) if descends else None
    if problem is not None:
        raise ValueError(f"algorithm.bonfast.{problem[0]}: expected {problem[1]}")
    return int(n_bon), group_order, int(seed), options


def _splits_groups(method: str, options: dict) -> bool:
    """Whether the method's weights depend on the order of a prompt's samples (disjoint N'-groups in order)."""
    opts = {**_method_options(method), **options}
    if method == "bon_rl_s":
        return opts["credit"] == "winner"
    return method in ("bon_rlb", "bon_rlb_p") and opts["sample_source"] == "bon"


_GENERATORS: dict[int, torch.Generator] = {}


def _group_rows(index, keep: list[bool], name: str) -> torch.Tensor:
    """Row numbers [G, n] of each uid's kept rows, groups in first-appearance order, rows in batch order."""
    keys = index.tolist() if hasattr(index, "tolist") else list(index)
    groups: dict = {}
    for row, (key, kept) in enumerate(zip(keys, keep)):
        if kept:
            groups.setdefault(key, []).append(row)
    sizes = Counter(len(rows) for rows in groups.values())
    if len(sizes) > 1:
        counts = ", ".join(f"{c} uid(s) with {s}" for s, c in sorted(sizes.items()))
        small = min(groups, key=lambda k: len(groups[k]))
        raise ValueError(f"{name}: index (verl's uid): every prompt needs the same number n of responses; got "
                         f"{counts} responses (e.g. uid {small!r} has {len(groups[small])})")
    return torch.tensor(list(groups.values()), dtype=torch.long).reshape(len(groups), -1)


def compute_advantages(method: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index,
                       config=None) -> tuple[torch.Tensor, torch.Tensor]:
    """verl advantages for ``method``: A_b,t = n · w_{g(b), i(b)} · response_mask[b, t] (module docstring).

    Rows are grouped by ``index`` (verl's uid; rows need not be contiguous). Rows without a response token
    (verl's synthetic padding rows) are left out and get 0. Returns (advantages, returns), both that tensor.

    Shapes:
        token_level_rewards, response_mask [B, L]; index [B] -> ([B, L], [B, L]) in token_level_rewards' dtype.
    """
    name = f"bonfast_{method}"
    if method in REFUSED:
        raise ValueError(f"{name}: {method} cannot run as a verl advantage estimator: it {REFUSED[method]}")
    if method not in SUPPORTED:
        raise ValueError(f"{name}: expected a method in {list(SUPPORTED)}, got {method!r}")
    x, mask = token_level_rewards, response_mask
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.dtype.is_floating_point:
        raise ValueError(f"{name}: token_level_rewards: expected a float tensor [B, L], got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not isinstance(mask, torch.Tensor) or mask.shape != x.shape:
        raise ValueError(f"{name}: response_mask: expected a tensor of shape {list(x.shape)} (token_level_rewards), "
                         f"got {list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if index is None or len(index) != x.shape[0]:
        raise ValueError(f"{name}: index (verl's uid): expected {x.shape[0]} uids, one per row, got "
                         f"{None if index is None else len(index)}")
    if config is not None and bool(config.get("use_kl_in_reward", False) if hasattr(config, "get") else False):
        raise ValueError(f"{name}: algorithm.use_kl_in_reward: expected False: the in-reward KL changes the reward R "
                         "the weights are computed from (use actor_rollout_ref.actor.use_kl_loss for the KL term)")
    n_bon, group_order, seed, options = read_options(method, config)
    m = mask.to(torch.float64)
    rewards = (x.to(torch.float64) * m).sum(-1)  # (B,)
    keep = (m.sum(-1) > 0).tolist()  # one host sync for the grouping, as verl's own estimators do
    rows = _group_rows(index, keep, name).to(x.device)  # (G, n)
    adv = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    if rows.numel():
        if group_order == "random" and _splits_groups(method, options):
            gen = _GENERATORS.setdefault(seed, torch.Generator().manual_seed(seed))
            order = torch.stack([torch.randperm(rows.shape[1], generator=gen) for _ in range(rows.shape[0])])
            rows = rows.gather(1, order.to(rows.device))
        try:
            w = weights(method, rewards[rows], n_bon=n_bon, **options)  # (G, n) float64
        except (ValueError, TypeError) as e:
            raise type(e)(f"{name} (options from algorithm.bonfast): {e}") from None
        adv[rows.reshape(-1)] = (rows.shape[1] * w).reshape(-1)
    advantages = (adv[:, None] * m).to(x.dtype)  # (B, L)
    return advantages, advantages


def make_estimator(method: str) -> Callable:
    """The verl advantage estimator ``bonfast_<method>`` (verl's signature; a refusing one for REFUSED methods)."""
    if method not in OBJECTIVES:
        raise ValueError(f"method: expected one of {list(OBJECTIVES)}, got {method!r}")

    def estimator(token_level_rewards, response_mask, index=None, epsilon=1e-6, norm_adv_by_std_in_grpo=True,
                  config=None, **kwargs):
        # epsilon and norm_adv_by_std_in_grpo belong to verl's GRPO estimators: bonfast never std-normalises
        return compute_advantages(method, token_level_rewards, response_mask, index, config)

    estimator.__name__ = estimator.__qualname__ = f"bonfast_{method}"
    estimator.__doc__ = (f"verl advantage estimator for bonfast's {method} (bonfast.integrations.verl."
                         "compute_advantages); options from algorithm.bonfast.")
    return estimator


ESTIMATORS: dict[str, Callable] = {f"bonfast_{m}": make_estimator(m) for m in OBJECTIVES}
globals().update(ESTIMATORS)  # bonfast_rl, bonfast_bon_rlb_p, ...: importable by name

# ----------------------------------------------------------------------------------------------------------------
# The exact policy loss
# ----------------------------------------------------------------------------------------------------------------

# loss_agg_mode -> the normaliser N of bonfast's bon_loss that it equals, with A = n·w (G prompts per mini-batch).
EXACT_AGG_MODES = {"seq-mean-token-sum": "G", "seq-mean-token-sum-norm": "G * loss_scale_factor",
                   "token-sum": "1 / n"}
POLICY_LOSS = "bonfast_reinforce"


def _get(config, key, default=None):
    if config is None:
        return default
    return config.get(key, default) if hasattr(config, "get") else getattr(config, key, default)


def check_actor_config(loss_agg_mode: str, config=None, rollout_is_weights=None) -> None:
    """Refuse the actor settings under which verl's update is not bonfast's gradient (one clear error each).

    ``config`` is verl's actor config (``actor_rollout_ref.actor``); None skips the checks that need it.
    """
    where = "actor_rollout_ref.actor"
    if loss_agg_mode not in EXACT_AGG_MODES:
        raise ValueError(f"{POLICY_LOSS}: {where}.loss_agg_mode: expected one of {list(EXACT_AGG_MODES)}, got "
                         f"{loss_agg_mode!r}: a per-token mean divides by the (random, length-dependent) token "
                         "count, so the update is no longer bonfast's unbiased fixed-normaliser sum")
    if loss_agg_mode == "seq-mean-token-sum-norm" and config is not None and _get(config, "loss_scale_factor") is None:
        raise ValueError(f"{POLICY_LOSS}: {where}.loss_scale_factor: expected a constant (e.g. "
                         "data.max_response_length) with seq-mean-token-sum-norm, got None (verl then divides by "
                         "each micro-batch's padded length)")
    if rollout_is_weights is not None:
        raise ValueError(f"{POLICY_LOSS}: algorithm.rollout_correction: expected no importance-sampling weights "
                         "(rollout_is=null): they reweight the samples bonfast's weights already account for")
    if float(_get(config, "entropy_coeff", 0.0) or 0.0) != 0.0:
        raise ValueError(f"{POLICY_LOSS}: {where}.entropy_coeff: expected 0 (an entropy bonus is not part of "
                         f"bonfast's objective), got {_get(config, 'entropy_coeff')}")
    if int(_get(config, "ppo_epochs", 1) or 1) != 1:
        raise ValueError(f"{POLICY_LOSS}: {where}.ppo_epochs: expected 1 (one update per batch of samples), got "
                         f"{_get(config, 'ppo_epochs')}")
    if _get(config, "use_kl_loss", False) and _get(config, "kl_loss_type") not in ("k3", "low_var_kl"):
        raise ValueError(f"{POLICY_LOSS}: {where}.kl_loss_type: expected 'k3' or 'low_var_kl' (bonfast's k3 "
                         f"penalty), got {_get(config, 'kl_loss_type')!r}")


def bonfast_reinforce(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode="seq-mean-token-sum",
                      config=None, rollout_is_weights=None):
    """verl policy loss: agg_loss(-A_t log p_t) with no ratio and no clip (REINFORCE; needs verl's agg_loss).

    With A from a bonfast estimator and ``loss_agg_mode`` in EXACT_AGG_MODES its gradient is bonfast's ``bon_loss``
    gradient with the normaliser listed there. verl's PPO clip loss ("vanilla") has the same gradient when the
    ratio is 1 (one update per batch: the first step sees log_prob == old_log_prob); this loss is exact for
    every micro-batch regardless. Settings that break exactness are refused (``check_actor_config``).

    Shapes:
        old_log_prob, log_prob, advantages, response_mask [B, L] -> (scalar loss, metrics dict)
    """
    check_actor_config(loss_agg_mode, config, rollout_is_weights)
    from verl.trainer.ppo.core_algos import agg_loss
    from verl.utils.torch_functional import masked_mean

    batch_info = dict(_get(config, "global_batch_info", None) or {})
    loss = agg_loss(loss_mat=-advantages * log_prob, loss_mask=response_mask, loss_agg_mode=loss_agg_mode,
                    **batch_info)
    # how far this micro-batch's policy is from the sampling one: 0 on a single on-policy update
    ppo_kl = masked_mean(old_log_prob - log_prob.detach(), response_mask)
    return loss, {"actor/ppo_kl": ppo_kl.item()}


# ----------------------------------------------------------------------------------------------------------------
# Registration in verl
# ----------------------------------------------------------------------------------------------------------------


def register() -> None:
    """Put every ``bonfast_*`` estimator and ``bonfast_reinforce`` into verl's registries (idempotent).

    Raises ImportError (with the install command) when verl is missing, and ValueError if another package already
    registered one of the names.
    """
    try:
        from verl.trainer.ppo import core_algos
    except ImportError as e:
        raise ImportError("bonfast.integrations.verl.register() needs verl (pip install 'bonfast[verl]', "
                          f"verl >= 0.9.1): {e}") from e
    for name, fn in [*ESTIMATORS.items(), (POLICY_LOSS, bonfast_reinforce)]:
        registry = core_algos.POLICY_LOSS_REGISTRY if name == POLICY_LOSS else core_algos.ADV_ESTIMATOR_REGISTRY
        old = registry.get(name)
        if old is not None and old is not fn and getattr(old, "__module__", None) != __name__:
            raise ValueError(f"verl already has {name!r} registered by {getattr(old, '__module__', old)}: "
                             "bonfast's would shadow it")
        if old is None:  # verl's public decorators for a first registration
            decorator = core_algos.register_policy_loss if name == POLICY_LOSS else core_algos.register_adv_est
            decorator(name)(fn)
        else:  # ours from an earlier import of this module (e.g. importlib.reload): replace it
            registry[name] = fn


try:  # on import, so that verl's plug-in loading (entry point or VERL_USE_EXTERNAL_MODULES) registers everything
    register()
except ImportError:
    pass  # no verl: the functions above still work; register() itself says what is missing
