"""bonfast.integrations.verl: the estimators with verl's signature (no verl needed), and, in a slow test, the real
verl 0.9.1 registry, its plug-in loading paths and the grpo_passk cross-check in a venv of its own.

verl cannot share the main venv (0.9.1 pins transformers < 5.11), so the slow test builds one under
~/.cache/bonfast (keyed by the versions; reused when it exists) and runs a probe script in it.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bonfast import objectives as ob
from bonfast.integrations import verl as bv

REPO = Path(__file__).resolve().parents[1]
TORCH_VERSION, VERL_VERSION = "2.13.0", "0.9.1"


def verl_venv() -> tuple[Path, float | None]:
    """A venv with torch and verl (built once, cached by versions) and bonfast installed editable from REPO.

    Returns (the venv's python, seconds spent building it, or None when the cached venv was reused).
    """
    py = f"py{sys.version_info[0]}.{sys.version_info[1]}"
    root = Path(os.environ.get("BONFAST_CACHE", Path.home() / ".cache" / "bonfast"))
    venv = root / f"verl-venv-torch{TORCH_VERSION}-verl{VERL_VERSION}-{py}"
    python, done = venv / "bin" / "python", venv / ".built"
    built = None
    if not done.exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # torch first: pip resolves this pin to the local CPU build (verl alone would pull a CUDA torch)
        subprocess.run(pip + [f"torch=={TORCH_VERSION}"], check=True)
        subprocess.run(pip + [f"verl=={VERL_VERSION}"], check=True)
        built = time.perf_counter() - start
        done.write_text(f"{built:.1f}\n")
    # bonfast itself on every run (seconds): the cached venv then always sees this checkout and its setup.py
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], check=True)
    return python, built


# ------------------------------------------------------------------------------------------------------------------
# The estimators without verl: a verl-shaped batch built here
# ------------------------------------------------------------------------------------------------------------------

# (method, algorithm.bonfast options); group_order "batch" so the rows' batch order is the samples' order
CASES = [
    ("rl", {}),
    ("rl", {"baseline": "none"}),
    ("pass_at_k", {"n_bon": 3}),
    ("bon_rl_s", {"n_bon": 3}),
    ("bon_rl_s", {"n_bon": 2, "credit": "winner"}),
    ("bon_rlb", {"n_bon": 2}),
    ("bon_rlb", {"n_bon": 3, "sample_source": "policy_group", "clip": [3, 3], "p_estimator": "group"}),
    ("bon_rlb_p", {"n_bon": 2}),
    ("bon_rlb_p", {"n_bon": 4, "sample_source": "policy_group"}),
]
BINARY = {"pass_at_k", "bon_rlb", "bon_rlb_p"}


def make_batch(method, G=5, n=6, L=7, seed=0, shuffle=True):
    """A verl-like batch: G prompts x n responses in shuffled rows, string uids, ragged response masks (>= 1
    token), the reward split over two response tokens and garbage outside the mask. Returns (token_level_rewards
    [B, L], response_mask [B, L], index [B] object array, R [G, n] in each uid's batch order, the uids in
    first-appearance order)."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randint(0, 2, (G, n), generator=g).double() if method in BINARY else \
        torch.randint(0, 4, (G, n), generator=g).double() / 2  # real-valued, with ties
    lengths = torch.randint(1, L + 1, (G * n,), generator=g)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()  # (G*n, L)
    tlr = torch.randn(G * n, L, generator=g) * (1 - mask)  # garbage where the mask is 0
    last = lengths - 1
    tlr[torch.arange(G * n), last] += R.flatten() * 0.25
    tlr[torch.arange(G * n), 0] += R.flatten() * 0.75  # same token when the length is 1: still sums to R
    uids = [f"uid-{seed}-{k}" for k in range(G)]
    index = np.array([uids[k] for k in range(G) for _ in range(n)], dtype=object)
    perm = torch.randperm(G * n, generator=g) if shuffle else torch.arange(G * n)
    tlr, mask, index, flat = tlr[perm], mask[perm], index[perm.numpy()], R.flatten()[perm]
    order = list(dict.fromkeys(index.tolist()))  # uids in first-appearance order
    R_batch = torch.stack([flat[torch.from_numpy(index == u)] for u in order])  # (G, n) rows in batch order
    return tlr, mask, index, R_batch, order


def expected(method, options, index, order, R_batch, mask):
    """n · weights(method, R) per uid, placed on that uid's rows (in batch order), times the response mask."""
    opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()
            if k not in ("n_bon", "group_order", "seed")}
    w = ob.weights(method, R_batch, n_bon=options.get("n_bon", 1), **opts)  # (G, n)
    adv = torch.zeros(len(index), dtype=torch.float64)
    for g, u in enumerate(order):
        adv[torch.from_numpy(index == u)] = R_batch.shape[1] * w[g]
    return adv[:, None] * mask


def run(method, tlr, mask, index, options, group_order="batch"):
    config = {"bonfast": {**options, "group_order": group_order}, "norm_adv_by_std_in_grpo": True}
    return bv.ESTIMATORS[f"bonfast_{method}"](token_level_rewards=tlr, response_mask=mask, index=index,
                                              config=config)


def test_supported_methods_are_those_of_the_task_reward_alone():
    assert bv.SUPPORTED == ("rl", "pass_at_k", "bon_rl_s", "bon_rlb", "bon_rlb_p")
    assert set(bv.REFUSED) == {"sft", "bon_sft", "rl_v", "bon_rl_v"}
    assert set(bv.ESTIMATORS) == {f"bonfast_{m}" for m in ob.OBJECTIVES}
    assert bv.bonfast_bon_rlb_p is bv.ESTIMATORS["bonfast_bon_rlb_p"]
    assert bv.bonfast_bon_rlb_p.__name__ == "bonfast_bon_rlb_p"


@pytest.mark.parametrize("method,options", CASES)
def test_equals_bonfast_weights_on_shuffled_ragged_batch(method, options):
    tlr, mask, index, R_batch, order = make_batch(method)
    adv, ret = run(method, tlr, mask, index, options)
    assert adv.dtype == tlr.dtype and adv.shape == tlr.shape and ret is adv
    torch.testing.assert_close(adv.double(), expected(method, options, index, order, R_batch, mask),
                               rtol=1e-6, atol=1e-7)
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("method,options", CASES)
def test_permutation_invariance(method, options):
    """Exchangeable forms: any row permutation permutes the advantages. Forms that split a prompt's samples into
    disjoint N'-groups in order: any permutation that keeps each uid's rows in the same relative order."""
    tlr, mask, index, _, _ = make_batch(method, shuffle=False)
    adv, _ = run(method, tlr, mask, index, options)
    g = torch.Generator().manual_seed(1)
    perm = torch.randperm(len(index), generator=g)
    if bv._splits_groups(method, {k: v for k, v in options.items() if k != "n_bon"}):
        # a random interleaving of the uids that keeps each uid's rows in order
        slots = index[perm.numpy()]
        queues = {u: [i for i in range(len(index)) if index[i] == u] for u in dict.fromkeys(index.tolist())}
        perm = torch.tensor([queues[u].pop(0) for u in slots])
    adv_p, _ = run(method, tlr[perm], mask[perm], index[perm.numpy()], options)
    torch.testing.assert_close(adv_p, adv[perm], rtol=1e-6, atol=0)


@pytest.mark.parametrize("method,options", [("bon_rlb_p", {"n_bon": 2}), ("bon_rl_s", {"n_bon": 3, "credit": "winner"}),
                                            ("bon_rlb", {"n_bon": 2, "p_estimator": "loo"})])
def test_random_group_order_is_a_fresh_content_independent_permutation(method, options):
    """group_order "random": each uid's rows are reordered by a permutation from a generator seeded by `seed`
    (drawn per call, in first-appearance order of the uids), then weighted as bonfast does."""
    tlr, mask, index, R_batch, order = make_batch(method, seed=3)
    seed = 987654
    bv._GENERATORS.pop(seed, None)
    adv, _ = run(method, tlr, mask, index, {**options, "seed": seed}, group_order="random")
    gen = torch.Generator().manual_seed(seed)
    want = torch.zeros(len(index), dtype=torch.float64)
    n = R_batch.shape[1]
    for gi, u in enumerate(order):
        rows = torch.from_numpy(np.flatnonzero(index == u))[torch.randperm(n, generator=gen)]
        R = (tlr[rows].double() * mask[rows]).sum(-1)
        opts = {k: v for k, v in options.items() if k != "n_bon"}
        want[rows] = n * ob.weights(method, R[None], n_bon=options["n_bon"], **opts)[0]
    torch.testing.assert_close(adv.double(), want[:, None] * mask, rtol=1e-6, atol=1e-7)
    # exchangeable forms are untouched by the option
    tlr, mask, index, _, _ = make_batch("bon_rl_s", seed=4)
    a, _ = run("bon_rl_s", tlr, mask, index, {"n_bon": 2}, group_order="random")
    b, _ = run("bon_rl_s", tlr, mask, index, {"n_bon": 2}, group_order="batch")
    assert torch.equal(a, b)


def test_padding_rows_are_left_out():
    """verl's synthetic padding rows (no response token, a uid of their own) get 0 and are not a group."""
    tlr, mask, index, R_batch, order = make_batch("bon_rlb_p")
    pad_tlr, pad_mask = torch.zeros(3, tlr.shape[1]), torch.zeros(3, tlr.shape[1])
    index2 = np.concatenate([index, np.array(["pad-x"] * 3, dtype=object)])
    adv, _ = run("bon_rlb_p", torch.cat([tlr, pad_tlr]), torch.cat([mask, pad_mask]), index2, {"n_bon": 2})
    assert (adv[-3:] == 0).all()
    torch.testing.assert_close(adv[:-3].double(), expected("bon_rlb_p", {"n_bon": 2}, index, order, R_batch, mask),
                               rtol=1e-6, atol=1e-7)


class Section(dict):
    """An attribute-style config object (as verl's dataclass configs are): options under `.bonfast`."""


@pytest.mark.parametrize("form", ["dict", "attribute", "none-values"])
def test_options_from_config_objects(form):
    tlr, mask, index, R_batch, order = make_batch("bon_rlb", seed=5)
    opts = {"n_bon": 3, "clip": [2.0, 3.0], "negative_sign": -1, "group_order": "batch"}
    if form == "dict":
        config = {"bonfast": opts}
    elif form == "attribute":
        config = type("Algo", (), {"bonfast": opts})()
    else:
        config = {"bonfast": {**opts, "p_estimator": None, "eps": None}}  # None: the function's default
    n_bon, group_order, seed, options = bv.read_options("bon_rlb", config)
    assert (n_bon, group_order, seed) == (3, "batch", 0)
    assert options == {"clip": (2.0, 3.0), "negative_sign": -1}
    adv, _ = bv.bonfast_bon_rlb(tlr, mask, index, config=config)
    torch.testing.assert_close(adv.double(), expected("bon_rlb", opts, index, order, R_batch, mask),
                               rtol=1e-6, atol=1e-7)
    assert bv.read_options("rl", None) == (1, "random", 0, {})  # rl: N' = 1 by default


@pytest.mark.parametrize("method", sorted(bv.REFUSED))
def test_refused_methods_say_why(method):
    tlr, mask, index, _, _ = make_batch("rl")
    with pytest.raises(ValueError, match=f"bonfast_{method}: {method} cannot run as a verl advantage estimator: "
                                         f"it needs a (verifier score|gold)"):
        bv.ESTIMATORS[f"bonfast_{method}"](tlr, mask, index, config={"bonfast": {"n_bon": 2}})


@pytest.mark.parametrize("config,match", [
    ({"bonfast": {"n_bon": 2, "credit": "exact"}}, r"algorithm.bonfast.credit: not an option of bonfast_bon_rlb_p"),
    ({"bonfast": {}}, r"algorithm.bonfast.n_bon: expected an int N' >= 1"),
    (None, r"algorithm.bonfast.n_bon: expected an int N' >= 1"),
    ({"bonfast": {"n_bon": 2, "group_order": "sorted"}}, r"algorithm.bonfast.group_order: expected one of"),
    ({"bonfast": {"n_bon": 7}}, r"bonfast_bon_rlb_p \(options from algorithm.bonfast\): n_bon: expected an int in "
                                r"\[1, 6\]"),
    ({"bonfast": {"n_bon": 2, "sample_source": "all"}}, r"sample_source: expected one of"),
    ({"bonfast": {"n_bon": 2}, "use_kl_in_reward": True}, r"algorithm.use_kl_in_reward: expected False"),
])
def test_bad_options_refused(config, match):
    tlr, mask, index, _, _ = make_batch("bon_rlb_p")
    with pytest.raises(ValueError, match=match):
        bv.bonfast_bon_rlb_p(tlr, mask, index, config=config)


def test_descending_setting_refused():
    tlr, mask, index, _, _ = make_batch("bon_rlb")
    config = {"bonfast": {"n_bon": 2, "negative_sign": 1, "sample_source": "policy_group"}}
    with pytest.raises(ValueError, match=r"algorithm.bonfast.negative_sign: expected -1 when sample_source"):
        bv.bonfast_bon_rlb(tlr, mask, index, config=config)


def test_unequal_groups_and_bad_inputs_refused():
    tlr, mask, index, _, _ = make_batch("bon_rl_s", G=4, n=5)
    keep = np.delete(np.arange(len(index)), np.flatnonzero(index == index[0])[-1])  # one uid loses a row
    with pytest.raises(ValueError, match=r"bonfast_bon_rl_s: index \(verl's uid\): every prompt needs the same "
                                         r"number n of responses; got 1 uid\(s\) with 4, 3 uid\(s\) with 5"):
        bv.bonfast_bon_rl_s(tlr[keep], mask[keep], index[keep], config={"bonfast": {"n_bon": 2}})
    with pytest.raises(ValueError, match=r"index \(verl's uid\): expected 20 uids, one per row, got 19"):
        bv.bonfast_bon_rl_s(tlr, mask, index[:-1], config={"bonfast": {"n_bon": 2}})
    with pytest.raises(ValueError, match=r"response_mask: expected a tensor of shape \[20, 7\]"):
        bv.bonfast_bon_rl_s(tlr, mask[:, :3], index, config={"bonfast": {"n_bon": 2}})
    with pytest.raises(ValueError, match=r"rewards: expected binary values \(0 or 1\) for bon_rlb_p"):
        bv.bonfast_bon_rlb_p(tlr * 3, mask, index, config={"bonfast": {"n_bon": 2}})


@pytest.mark.parametrize("mode,config,rollout_is,match", [
    ("token-mean", None, None, r"actor_rollout_ref.actor.loss_agg_mode: expected one of"),
    ("seq-mean-token-mean", None, None, r"actor_rollout_ref.actor.loss_agg_mode: expected one of"),
    ("seq-mean-token-sum-norm", {"loss_scale_factor": None}, None,
     r"actor_rollout_ref.actor.loss_scale_factor: expected a constant"),
    ("seq-mean-token-sum", None, torch.ones(2, 3), r"algorithm.rollout_correction: expected no importance"),
    ("seq-mean-token-sum", {"entropy_coeff": 0.01}, None, r"actor_rollout_ref.actor.entropy_coeff: expected 0"),
    ("seq-mean-token-sum", {"ppo_epochs": 2}, None, r"actor_rollout_ref.actor.ppo_epochs: expected 1"),
    ("token-sum", {"use_kl_loss": True, "kl_loss_type": "k1"}, None,
     r"actor_rollout_ref.actor.kl_loss_type: expected 'k3'"),
])
def test_policy_loss_refuses_inexact_settings(mode, config, rollout_is, match):
    with pytest.raises(ValueError, match=f"bonfast_reinforce: {match}"):
        bv.bonfast_reinforce(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3),
                             loss_agg_mode=mode, config=config, rollout_is_weights=rollout_is)


def test_exact_actor_settings_pass_the_checks():
    for mode in bv.EXACT_AGG_MODES:
        bv.check_actor_config(mode, {"loss_scale_factor": 64, "entropy_coeff": 0, "ppo_epochs": 1,
                                     "use_kl_loss": True, "kl_loss_type": "low_var_kl"})


def test_register_without_verl_says_what_is_missing():
    try:
        import verl  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"needs verl \(pip install 'bonfast\[verl\]'"):
            bv.register()
    else:
        pytest.skip("verl is installed here: the slow test covers registration")


# ------------------------------------------------------------------------------------------------------------------
# The real verl 0.9.1, in a venv of its own (slow: ~2.5 min to build once on 2 cores, ~40 s per run after)
# ------------------------------------------------------------------------------------------------------------------

# Run inside the verl venv (bonfast importable there). Prints one JSON line of findings; asserts as it goes.
PROBE = r'''
import json, os, sys, time
start = time.perf_counter()
import numpy as np
import torch
import verl
from omegaconf import OmegaConf, open_dict
from verl import DataProto
from verl.trainer.ppo import core_algos
from verl.workers.config import ActorConfig
from verl.workers.config.actor import PolicyLossConfig

import bonfast.integrations.verl as bv
from bonfast import objectives as ob
from bonfast.ops import bon_loss
out = {"verl": verl.__version__, "import_s": round(time.perf_counter() - start, 2)}

# 1. verl's registries return bonfast's functions; register() again changes nothing
bv.register(); bv.register()
for name, fn in bv.ESTIMATORS.items():
    assert core_algos.get_adv_estimator_fn(name) is fn, name
assert core_algos.get_policy_loss_fn("bonfast_reinforce") is bv.bonfast_reinforce
out["registered"] = sorted(n for n in core_algos.ADV_ESTIMATOR_REGISTRY if n.startswith("bonfast_"))

# 2. verl's own algorithm config (the generated ppo_trainer defaults), with +algorithm.bonfast.* added as Hydra does
defaults = OmegaConf.load(os.path.join(os.path.dirname(verl.__file__), "trainer/config/_generated_ppo_trainer.yaml"))
def algo(estimator, **bonfast_opts):
    cfg = defaults.algorithm.copy()
    OmegaConf.set_struct(cfg, True)
    with open_dict(cfg):
        cfg.adv_estimator, cfg.norm_adv_by_std_in_grpo = estimator, False
        cfg.bonfast = bonfast_opts
    return cfg

def batch(G, n, L, seed, binary=True):
    g = torch.Generator().manual_seed(seed)
    R = torch.randint(0, 2, (G, n), generator=g).float() if binary else torch.randint(0, 4, (G, n), generator=g) / 2.
    lengths = torch.randint(1, L + 1, (G * n,), generator=g)
    mask = (torch.arange(L)[None] < lengths[:, None]).float()
    tlr = torch.zeros(G * n, L); tlr[torch.arange(G * n), lengths - 1] = R.flatten()  # verl: reward on the last token
    uid = np.array([f"u{k}" for k in range(G) for _ in range(n)], dtype=object)
    perm = torch.randperm(G * n, generator=g)
    data = DataProto.from_dict(tensors={"token_level_rewards": tlr[perm], "response_mask": mask[perm]},
                               non_tensors={"uid": uid[perm.numpy()]})
    return data, R.double(), perm

def through_verl(data, estimator, cfg):
    # the call verl's ray_trainer.compute_advantage makes for a registered estimator (that module itself needs
    # verl's serving dependencies, cachetools / uvicorn / ..., which verl does not declare)
    fn = core_algos.get_adv_estimator_fn(estimator)
    return fn(token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
              config=cfg, index=data.non_tensor_batch["uid"])[0]

# 3. verl's registry call + verl's OmegaConf config == n x bonfast weights on each uid's rows
G, n, L = 6, 4, 9
data, R, perm = batch(G, n, L, 0)
cfg = algo("bonfast_bon_rlb_p", n_bon=2, group_order="batch")
adv = through_verl(data, "bonfast_bon_rlb_p", cfg)
uid, mask = data.non_tensor_batch["uid"], data.batch["response_mask"]
rows = {u: np.flatnonzero(uid == u) for u in dict.fromkeys(uid.tolist())}
want = torch.zeros(G * n, dtype=torch.float64)
for u, r in rows.items():
    want[r] = n * ob.weights("bon_rlb_p", R.flatten()[perm][r][None], n_bon=2)[0]
torch.testing.assert_close(adv.double(), want[:, None] * mask.double(), rtol=1e-6, atol=1e-7)
# an AlgoConfig dataclass (no bonfast section): rl runs at its defaults, a BoN method asks for n_bon
from verl.utils.config import omega_conf_to_dataclass
algo_dc = omega_conf_to_dataclass(defaults.algorithm)
out["algo_config_type"] = type(algo_dc).__name__
through_verl(data, "bonfast_rl", algo_dc)
try:
    through_verl(data, "bonfast_bon_rlb_p", algo_dc); raise AssertionError("no error")
except ValueError as e:
    out["missing_n_bon"] = str(e)
try:
    through_verl(data, "bonfast_bon_rl_v", cfg); raise AssertionError("no error")
except ValueError as e:
    out["refused"] = str(e)

# 4. cross-check against verl's grpo_passk (std scaling off): bon_rl_s at N' = n gives the best sample
#    R_max - R_second and 0 elsewhere (ties: 0), which is grpo_passk's advantage; bonfast's advantages are n x w.
worst = 0.0
for seed in range(5):
    data, R, perm = batch(8, 5, 6, 10 + seed, binary=seed % 2 == 0)
    a = through_verl(data, "bonfast_bon_rl_s", algo("bonfast_bon_rl_s", n_bon=5))
    b = through_verl(data, "grpo_passk", algo("grpo_passk"))
    torch.testing.assert_close(a, 5 * b, rtol=1e-6, atol=1e-6)
    worst = max(worst, (a - 5 * b).abs().max().item())
out["grpo_passk_max_abs_diff"] = worst

# 5. bonfast_reinforce's gradient (verl's agg_loss, two micro-batches summed as verl's engine does) equals
#    bon_loss's gradient with the normaliser of each exact loss_agg_mode; PPO's clip loss ("vanilla") at ratio 1
#    too. KL: verl's k3 with kl_loss_coef = n * beta equals bon_loss's kl_coef = beta.
G, n, L = 5, 4, 8
data, R, perm = batch(G, n, L, 3)
adv = through_verl(data, "bonfast_bon_rlb_p", algo("bonfast_bon_rlb_p", n_bon=2))
mask = data.batch["response_mask"]
B = G * n
g = torch.Generator().manual_seed(7)
logp0 = -torch.rand(B, L, generator=g, dtype=torch.float64) * 3
ref = logp0 + 0.1 * torch.randn(B, L, generator=g, dtype=torch.float64)
w_row = adv[:, 0].double() / n  # each row's bonfast weight
sample_index = torch.where(mask.bool(), torch.arange(B)[:, None], -1)
beta = 0.05
results = {}
for mode, loss_mode, norm in [("seq-mean-token-sum", "bonfast_reinforce", G),
                              ("seq-mean-token-sum-norm", "bonfast_reinforce", G * L),
                              ("token-sum", "bonfast_reinforce", 1 / n),
                              ("seq-mean-token-sum", "vanilla", G)]:
    actor = ActorConfig(strategy="fsdp", rollout_n=n, ppo_mini_batch_size=G, ppo_micro_batch_size_per_gpu=B // 2,
                        loss_agg_mode=mode, loss_scale_factor=L if mode.endswith("norm") else None,
                        use_kl_loss=True, kl_loss_type="low_var_kl", kl_loss_coef=n * beta,
                        policy_loss=PolicyLossConfig(loss_mode=loss_mode))
    actor.global_batch_info.update(dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=B,
                                   loss_scale_factor=actor.loss_scale_factor)
    fn = core_algos.get_policy_loss_fn(actor.policy_loss.loss_mode)
    logp = logp0.clone().requires_grad_(True)
    for mb in (slice(0, B // 2), slice(B // 2, B)):  # verl: loss.backward() per micro-batch, gradients summed
        lp = logp[mb]
        pg, _ = fn(old_log_prob=lp.detach(), log_prob=lp, advantages=adv[mb].double(), response_mask=mask[mb].bool(),
                   loss_agg_mode=mode, config=actor, rollout_is_weights=None)
        kld = core_algos.kl_penalty(logprob=lp, ref_logprob=ref[mb], kl_penalty=actor.kl_loss_type)
        kl = core_algos.agg_loss(loss_mat=kld, loss_mask=mask[mb].bool(), loss_agg_mode=mode,
                                 **actor.global_batch_info)
        (pg + kl * actor.kl_loss_coef).backward()
    x = logp0.clone().requires_grad_(True)
    bon_loss(x, sample_index, w_row, normaliser=norm, ref_logp=ref, kl_coef=beta, impl="torch").backward()
    rel = ((logp.grad - x.grad).norm() / x.grad.norm()).item()
    assert rel < 1e-10, (mode, loss_mode, rel)
    results[f"{loss_mode}/{mode}"] = rel
out["grad_rel_err"] = results
actor = ActorConfig(strategy="fsdp", rollout_n=n, ppo_mini_batch_size=G, ppo_micro_batch_size_per_gpu=B)
try:  # verl's default loss_agg_mode "token-mean" is refused by bonfast_reinforce
    bv.bonfast_reinforce(logp0, logp0, adv, mask, loss_agg_mode=actor.loss_agg_mode, config=actor)
    raise AssertionError("no error")
except ValueError as e:
    out["refused_agg"] = str(e)
print(json.dumps(out))
'''

# Which process loaded bonfast, and whether verl's registry has its estimator, after a bare `import verl`.
LOAD_CHECK = r'''
import json, sys
import verl
from verl.trainer.ppo import core_algos
loaded = "bonfast.integrations.verl" in sys.modules
fn = core_algos.ADV_ESTIMATOR_REGISTRY.get("bonfast_bon_rlb_p")
print(json.dumps({"loaded": loaded, "estimator": getattr(fn, "__module__", None),
                  "loss": getattr(core_algos.POLICY_LOSS_REGISTRY.get("bonfast_reinforce"), "__module__", None)}))
'''


def run_in(python, code, env=None, timeout=300):
    env = {**os.environ, **(env or {})}
    proc = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_real_verl_registry_plugin_loading_and_grpo_passk(tmp_path):
    start = time.perf_counter()
    python, built = verl_venv()
    setup_s = time.perf_counter() - start
    out = run_in(python, PROBE)
    assert out["verl"] == VERL_VERSION
    assert set(out["registered"]) == set(bv.ESTIMATORS)
    assert out["missing_n_bon"].startswith("algorithm.bonfast.n_bon: expected an int N' >= 1")
    assert "bonfast_bon_rl_v: bon_rl_v cannot run as a verl advantage estimator" in out["refused"]
    assert out["grpo_passk_max_abs_diff"] < 1e-6
    assert out["refused_agg"].startswith("bonfast_reinforce: actor_rollout_ref.actor.loss_agg_mode: expected one of")

    # plug-in path 1: VERL_USE_EXTERNAL_MODULES (entry points off, so this variable alone does it)
    via_env = run_in(python, LOAD_CHECK, {"VERL_USE_EXTERNAL_MODULES": "bonfast.integrations.verl",
                                          "VERL_USE_EXTERNAL_PLUGINS": "none"})
    # plug-in path 2: the verl.plugins entry point. bonfast's own metadata declares it once setup.py does;
    # until then a distribution declaring only that entry point stands in for it (what pip writes from setup.py)
    own = run_in(python, "import json, importlib.metadata as m; print(json.dumps("
                         "[e.value for e in m.entry_points(group='verl.plugins') if e.dist.name == 'bonfast']))")
    env = {"VERL_USE_EXTERNAL_MODULES": ""}
    if "bonfast.integrations.verl" not in own:
        info = tmp_path / "bonfast_verl_plugin_probe-0.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bonfast-verl-plugin-probe\nVersion: 0.0\n")
        (info / "entry_points.txt").write_text("[verl.plugins]\nbonfast = bonfast.integrations.verl\n")
        env["PYTHONPATH"] = str(tmp_path)
    via_entry_point = run_in(python, LOAD_CHECK, env)
    without = run_in(python, LOAD_CHECK, {"VERL_USE_EXTERNAL_MODULES": "", "VERL_USE_EXTERNAL_PLUGINS": "none"})
    for found in (via_env, via_entry_point):
        assert found == {"loaded": True, "estimator": "bonfast.integrations.verl",
                         "loss": "bonfast.integrations.verl"}, found
    assert without == {"loaded": False, "estimator": None, "loss": None}
    print(f"\nverl venv: {'built in %.0f s' % built if built is not None else 'cached'}; setup {setup_s:.0f} s; "
          f"probe {json.dumps(out)}; entry point from {'setup.py' if own else 'a stand-in distribution'}; "
          f"total {time.perf_counter() - start:.0f} s")
