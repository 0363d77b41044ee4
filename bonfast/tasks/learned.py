"""A learned verifier: a small reward model trained to predict whether a response to a prompt is correct.

    r(x, y) = sigmoid(w . h_last(x, y) + b)      h_last: the final-norm hidden state [D] of the tiny decoder at the
                                                 response's last token (<eos>), after reading prompt + response

Unlike the noisy verifier (errors from a hash of the response) and the biased one (a hand-written length rule), its
errors are systematic and correlated with the responses, as a reward model's are. The recipe is fixed
(`LearnedVerifierConfig`, one verifier per policy seed):

    base policy    the seed's supervised warm start (`bonfast.build.warm_start`, cached)
    data           `prompts` training-split problems; `samples` responses each from the base policy, the sampling
                   temperature cycling through `temperatures` over the prompts; label y = 1{R >= 0.5} (task reward,
                   0 for a response cut at max_new_tokens, as in training)
    model          the warm start's decoder (its weights copied) + a scalar head (weight 0, bias logit of the label
                   mean: it starts at the base rate)
    training       `steps` AdamW steps of `batch` sequences (lr `lr`, 10-step warmup, cosine to 0.1 lr), binary
                   cross-entropy, order drawn from the seed
    calibration    on `heldout_prompts` test-split prompts (held out: never trained on), `samples` responses
                   each at every temperature: `calibration_metrics` (accuracy, AUC, false-positive / false-negative
                   rate at `threshold`, Brier score) and the selection numbers BoK / pass@k / Bo1 (`calibration`)

Training prompts come from the training split only: a config with another split, or a file whose training prompts
meet the task's test split, is refused (`check_train_only`). Deterministic given the config (CPU, one process).
Cached like the warm start: `$BONFAST_CACHE/learned-verifier-<hash>.safetensors` (weights; metadata: the config,
the training prompts) beside `<same>.json` (config and calibration report); `ensure` trains once, then loads.

    verifier = get_verifier("learned", task, train_config=cfg)          # or path="....safetensors"
    python -m bonfast.tasks.learned --seed 1                             # train / load, print the calibration

The calibration of a verifier on another policy's samples (what it is asked about drifts as the policy trains):
`calibration(verifier, policy, tokenizer, task, examples, ...)`.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from .base import Task
from .verifiers import Verifier, _check_responses

__all__ = ["LearnedVerifierConfig", "LearnedVerifier", "RewardModel", "RECIPE", "verifier_path", "ensure",
           "load", "check_train_only", "calibration_metrics", "calibration", "format_calibration"]

RECIPE_VERSION = 2  # bump when the training code changes what a config trains (it is part of the cache key)
# The fixed recipe (`LearnedVerifierConfig` fields beside `policy` and `seed`); a TrainConfig's verifier uses it.
RECIPE = {"prompts": 2048, "samples": 8, "temperatures": (0.5, 1.0, 1.5), "steps": 300, "batch": 128, "lr": 3e-4,
          "heldout_prompts": 256, "threshold": 0.5, "split": "train"}
# TrainConfig fields that determine the base policy (bonfast.build.WARM_START_KEYS) are copied into `policy`.


@dataclass
class LearnedVerifierConfig:
    """Everything that determines a learned verifier's weights (its cache key)."""
    policy: dict                      # the base policy: TrainConfig warm-start fields (model, task, tiny_*, sft_*)
    seed: int                         # the verifier's seed (the policy's seed: one verifier per seed)
    prompts: int = RECIPE["prompts"]  # training-split prompts whose base-policy samples are the training data
    samples: int = RECIPE["samples"]  # responses per prompt
    temperatures: tuple = RECIPE["temperatures"]  # sampling temperatures, cycled over the prompts
    steps: int = RECIPE["steps"]      # AdamW steps
    batch: int = RECIPE["batch"]      # sequences per step
    lr: float = RECIPE["lr"]          # peak learning rate
    heldout_prompts: int = RECIPE["heldout_prompts"]  # calibration prompts (test split: held out from training)
    threshold: float = RECIPE["threshold"]  # accept iff r > threshold (the false-positive rate's threshold)
    split: str = RECIPE["split"]      # the split of the training prompts: "train" only (anything else is refused)

    def validate(self) -> "LearnedVerifierConfig":
        for name in ("seed", "prompts", "samples", "steps", "batch", "heldout_prompts"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "seed" else 1):
                what = "a non-negative int" if name == "seed" else "a positive int"
                raise ValueError(f"LearnedVerifierConfig.{name}: expected {what}, got {v!r}")
        if self.split != "train":
            raise ValueError("LearnedVerifierConfig.split: expected 'train' (a verifier is trained on training "
                             "prompts only; one fit to test prompts would grade the evaluation it is used in), got "
                             f"{self.split!r}")
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError("LearnedVerifierConfig.temperatures: expected positive temperatures, got "
                             f"{self.temperatures!r}")
        if not 0 < self.threshold < 1 or not self.lr > 0:
            raise ValueError(f"LearnedVerifierConfig.threshold / lr: expected a threshold in (0, 1) and lr > 0, got "
                             f"{self.threshold!r} / {self.lr!r}")
        if self.policy.get("model") != "tiny":
            raise ValueError("LearnedVerifierConfig.policy: expected model 'tiny' (the learned verifier is built on "
                             f"the tiny decoder and its tokenizer), got {self.policy.get('model')!r}")
        return self

    @classmethod
    def from_train_config(cls, cfg, device=None, **overrides) -> "LearnedVerifierConfig":
        """The verifier of a run: the run's base policy (its warm-start fields and precision) and seed, the RECIPE."""
        from bonfast import precision
        from bonfast.build import WARM_START_KEYS, resolve_device
        policy = {k: getattr(cfg, k) for k in WARM_START_KEYS}
        policy = {k: (list(v) if isinstance(v, tuple) else v) for k, v in policy.items()}
        policy["precision"] = precision.resolve(cfg.precision, device or resolve_device(cfg)).name
        recipe = {k: v for k, v in RECIPE.items()}
        recipe.update(overrides)
        return cls(policy=policy, seed=cfg.seed, **recipe).validate()

    def key(self) -> str:
        fields = {**dataclasses.asdict(self), "temperatures": list(self.temperatures), "recipe": RECIPE_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def verifier_path(vcfg: LearnedVerifierConfig) -> str:
    """Cache file of the verifier's weights; its calibration report is the same name with .json."""
    from bonfast.checkpoint import cache_dir
    return os.path.join(cache_dir(), f"learned-verifier-{vcfg.key()}.safetensors")


def _seed(vcfg: LearnedVerifierConfig, purpose: str) -> int:
    digest = hashlib.sha256(f"learned-verifier/{vcfg.seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


# ------------------------------------------------------------------------------------------------------------
# the model


class RewardModel(nn.Module):
    """The tiny decoder read at the last token, with a scalar head: logits [B] for right-padded ids [B, T]."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.dim, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        from bonfast.attention import CausalAttention
        B, T = ids.shape
        positions = torch.arange(T, device=ids.device).expand(B, T)
        h = self.backbone.hidden(ids, positions, CausalAttention())        # (B, T, D); causal: pads come after
        last = h[torch.arange(B, device=ids.device), lengths - 1]          # (B, D)
        return self.head(last).squeeze(-1)                                 # (B,)


def _pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids.to(device), torch.tensor([len(s) for s in seqs], device=device)


def _policy_config(vcfg: LearnedVerifierConfig, device):
    from bonfast.config import TrainConfig
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vcfg.policy.items() if k != "precision"}
    return TrainConfig(**fields, precision=vcfg.policy.get("precision", "fp32"), device=torch.device(device).type,
                       progress=False)


def _backbone(vcfg: LearnedVerifierConfig, tokenizer, device) -> nn.Module:
    from bonfast.build import tiny_model_config
    from bonfast.model import from_config
    return from_config(tiny_model_config(_policy_config(vcfg, "cpu"), tokenizer)).to(device)


# ------------------------------------------------------------------------------------------------------------
# the verifier


class LearnedVerifier(Verifier):
    """Scores responses with a trained `RewardModel`: r in (0, 1), an estimate of P(correct | prompt, response).

    `path`: a file written by `ensure` (refused if its training prompts are not training-split prompts of `task`);
    or `train_config`: a run's TrainConfig, whose verifier (the RECIPE on its base policy) is trained once and cached.
    """

    name = "learned"

    def __init__(self, task: Task, path: str | None = None, train_config=None, device: str | None = None):
        super().__init__(task)
        if path is None and train_config is None:
            raise ValueError("LearnedVerifier: expected path=<a learned-verifier .safetensors file> or "
                             "train_config=<the run's TrainConfig> (verifier trained from its warm start and cached)")
        if device is None:
            from bonfast.build import resolve_device
            device = str(resolve_device(train_config)) if train_config is not None else "cpu"
        if path is None:
            path = ensure(LearnedVerifierConfig.from_train_config(train_config, torch.device(device)), device)
        self.path = path
        self.model, self.config = load(path, task, device)
        from bonfast.tasks.tokenizer import ArithmeticTokenizer
        self.tokenizer = ArithmeticTokenizer()
        self.device = device

    def score(self, example, responses, *, logprobs=None):
        _check_responses(responses)
        return self.score_many([example], [list(responses)])[0]

    def score_many(self, examples, responses) -> list[list[float]]:
        """r for every response of every prompt: responses[g] are the responses to examples[g]."""
        return _score_many(self.model, self.tokenizer, self.task, int(self.config.policy["max_new_tokens"]),
                           self.device, examples, responses)


@torch.no_grad()
def _score_many(model, tokenizer, task, max_new_tokens, device, examples, responses, chunk: int = 1024):
    from bonfast import rollout
    seqs, where = [], []
    for g, (ex, rows) in enumerate(zip(examples, responses)):
        prompt = task.prompt_ids(ex, tokenizer)
        for text in rows:
            seqs.append(prompt + rollout.encode_response(tokenizer, text, max_new_tokens))
            where.append(g)
    out = []
    for i in range(0, len(seqs), chunk):
        ids, lengths = _pad(seqs[i:i + chunk], tokenizer.pad_token_id or 0, device)
        out += torch.sigmoid(model(ids, lengths).double()).cpu().tolist()
    scores = [[] for _ in examples]
    for g, s in zip(where, out):
        scores[g].append(s)
    return scores


def check_train_only(prompts: list[str], split: str, task: Task, origin: str) -> None:
    """Refuse a verifier whose training prompts are not training-split prompts of `task` (ValueError naming it)."""
    if split != "train":
        raise ValueError(f"{origin}: expected a verifier trained on training prompts only, this one was trained on "
                         f"the {split!r} split (refused: it would grade the evaluation it was fit to)")
    test = {ex.prompt for ex in task.examples("test")}
    leaked = [p for p in prompts if p in test]
    if leaked:
        raise ValueError(f"{origin}: expected a verifier trained on training prompts only, {len(leaked)} of its "
                         f"{len(prompts)} training prompts are test prompts of task {task.name!r} (e.g. "
                         f"{leaked[0]!r}); refused")


def _read(path: str, weights: bool = True) -> tuple[dict, LearnedVerifierConfig, dict]:
    """(metadata, config, tensors or {}) of a learned-verifier file written by `ensure`."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise ValueError(f"learned verifier {path}: expected a learned-verifier .safetensors file, not found")
    with safe_open(path, framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()} if weights else {}
    if meta.get("format") != "bonfast-learned-verifier":
        raise ValueError(f"learned verifier {path}: expected a file written by bonfast.tasks.learned.ensure")
    fields = json.loads(meta["config"])
    fields.pop("recipe", None)
    return meta, LearnedVerifierConfig(**{**fields, "temperatures": tuple(fields["temperatures"])}), tensors


def load(path: str, task: Task, device="cpu") -> tuple[RewardModel, LearnedVerifierConfig]:
    """(model, config) of a learned-verifier file, after `check_train_only`."""
    meta, vcfg, tensors = _read(path)
    if vcfg.policy.get("task") != getattr(task, "name", None):
        raise ValueError(f"learned verifier {path}: expected task {vcfg.policy.get('task')!r} (the one it was trained "
                         f"on), got {getattr(task, 'name', task)!r}")
    check_train_only(json.loads(meta["train_prompts"]), vcfg.split, task, f"learned verifier {path}")
    from bonfast.tasks.tokenizer import ArithmeticTokenizer
    model = RewardModel(_backbone(vcfg, ArithmeticTokenizer(), "cpu"))
    model.load_state_dict(tensors)
    return model.to(device).eval().requires_grad_(False), vcfg


def ensure(vcfg: LearnedVerifierConfig, device="cpu", log=print) -> str:
    """The cached verifier of `vcfg`: trained (and its calibration report written) if absent; returns its path."""
    vcfg.validate()
    path = verifier_path(vcfg)
    if os.path.exists(path):
        return path
    t0 = time.time()
    model, prompts, report = _train(vcfg, torch.device(device))
    from safetensors.torch import save_file

    from bonfast.checkpoint import atomic_write
    os.makedirs(os.path.dirname(path), exist_ok=True)
    config = {**dataclasses.asdict(vcfg), "temperatures": list(vcfg.temperatures), "recipe": RECIPE_VERSION}
    meta = {"format": "bonfast-learned-verifier", "config": json.dumps(config), "train_prompts": json.dumps(prompts)}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    report = {"config": config, "seconds": time.time() - t0, "path": path, **report}

    def write_report(tmp):
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
    atomic_write(path[:-len(".safetensors")] + ".json", write_report)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))  # last: its existence means complete
    log(f"learned verifier trained in {report['seconds']:.0f} s: {path}")
    return path


def report_path(path: str) -> str:
    return path[:-len(".safetensors")] + ".json"


def _samples(policy, tokenizer, task, examples, n: int, temperature: float, seed: int, max_new_tokens: int):
    """(texts [G][n], R [G, n]) of the policy's samples, judged as the trainer judges them."""
    from bonfast import rollout
    from bonfast.engine import Engine
    prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
    roll = Engine(policy).sample(prompts, n, max_new_tokens=max_new_tokens, temperature=temperature,
                                 stop_token_ids=rollout.stop_ids(tokenizer), seed=seed)
    from .verifiers import OracleVerifier
    R, _, _ = rollout.judge(task, OracleVerifier(task), examples, roll, tokenizer)  # R as the trainer judges it
    return [[rollout.decode(tokenizer, t) for t in row] for row in roll.tokens], R


def _train(vcfg: LearnedVerifierConfig, device) -> tuple[RewardModel, list[str], dict]:
    """Sample the base policy on training prompts, fit the reward model, calibrate it on held-out prompts."""
    from bonfast import rollout
    from bonfast.build import build, warm_start
    cfg = _policy_config(vcfg, device)
    policy, tokenizer, task, _ = build(cfg, device)
    warm_start(cfg, policy, tokenizer, task, device, log=lambda record: None)
    policy.eval()
    examples = task.examples(vcfg.split, n=vcfg.prompts, seed=_seed(vcfg, "prompts"))
    check_train_only([ex.prompt for ex in examples], vcfg.split, task, "LearnedVerifierConfig")
    seqs, labels = [], []
    temps = vcfg.temperatures
    for i, temp in enumerate(temps):  # prompt g is sampled at temperature temps[g % len(temps)]
        part = examples[i::len(temps)]
        if not part:
            continue
        texts, R = _samples(policy, tokenizer, task, part, vcfg.samples, temp, _seed(vcfg, f"samples/{temp:g}"),
                            cfg.max_new_tokens)
        for ex, rows, rewards in zip(part, texts, R.tolist()):
            prompt = task.prompt_ids(ex, tokenizer)
            seqs += [prompt + rollout.encode_response(tokenizer, t, cfg.max_new_tokens) for t in rows]
            labels += [float(r >= 0.5) for r in rewards]
    y = torch.tensor(labels, dtype=torch.float32)
    rate = float(y.mean())
    warning = None
    if rate in (0.0, 1.0):  # e.g. an untrained smoke-test policy: the code path runs, the report says so
        warning = (f"the base policy's {len(labels)} training samples are all {'correct' if rate else 'wrong'}: "
                   "this verifier learned nothing about correctness")
        rate = min(max(rate, 1e-3), 1 - 1e-3)
    model = RewardModel(copy.deepcopy(policy)).to(device).train()
    with torch.no_grad():  # start at the base rate: weight 0, bias logit(rate)
        model.head.weight.zero_()
        model.head.bias.fill_(math.log(rate / (1 - rate)))
    opt = torch.optim.AdamW(model.parameters(), lr=vcfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(_seed(vcfg, "order"))
    order = torch.cat([torch.randperm(len(seqs), generator=gen)
                       for _ in range(-(-vcfg.steps * vcfg.batch // len(seqs)))])
    for step in range(vcfg.steps):
        for group in opt.param_groups:
            warm = min(1.0, (step + 1) / 10)
            group["lr"] = vcfg.lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / vcfg.steps)))
        idx = order[step * vcfg.batch:(step + 1) * vcfg.batch].tolist()
        ids, lengths = _pad([seqs[i] for i in idx], tokenizer.pad_token_id or 0, device)
        loss = nn.functional.binary_cross_entropy_with_logits(model(ids, lengths), y[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval().requires_grad_(False)
    # held out: test-split prompts (never trained on; the distribution the verifier selects on). Training-split
    # prompts minus the training ones would under-represent level 1, whose few problems the training set covers.
    report = {"train": {"sequences": len(seqs), "positive_rate": float(y.mean()), "final_loss": loss.item(),
                        "warning": warning},
              "heldout": _heldout(vcfg, cfg, model, policy, tokenizer, task, temps, device)}
    return model, [ex.prompt for ex in examples], report


def _heldout(vcfg, cfg, model, policy, tokenizer, task, temperatures, device) -> dict:
    """`calibration` on the held-out prompts and samples of `vcfg` (the same for any temperature subset)."""
    held = task.examples("test", n=vcfg.heldout_prompts, seed=_seed(vcfg, "heldout"))
    scorer = _Scorer(model, tokenizer, task, cfg.max_new_tokens, device)
    return calibration(scorer, policy, tokenizer, task, held, n=vcfg.samples, temperatures=temperatures,
                       seed=_seed(vcfg, "heldout-samples"), max_new_tokens=cfg.max_new_tokens,
                       threshold=vcfg.threshold)


def heldout_calibration(path: str, temperatures: tuple[float, ...] | None = None, device: str = "cpu") -> dict:
    """The held-out calibration of the learned verifier at `path`, recomputed: the same prompts and samples as the
    report `ensure` wrote (its base policy from the warm-start cache), with every metric `calibration` has now (a
    report written before a metric existed lacks it). On the machine that trained the verifier the numbers the
    report has are reproduced bitwise; elsewhere a warm start missing from the cache is retrained, and a different
    CPU may make it another policy: compare with the report before reading the new metrics."""
    from bonfast.build import build, warm_start
    _, vcfg, _ = _read(path, weights=False)
    dev = torch.device(device)
    cfg = _policy_config(vcfg, dev)
    policy, tokenizer, task, _ = build(cfg, dev)
    warm_start(cfg, policy, tokenizer, task, dev, log=lambda record: None)
    policy.eval()
    model, _ = load(path, task, dev)
    return _heldout(vcfg, cfg, model, policy, tokenizer, task, temperatures or vcfg.temperatures, dev)


class _Scorer:
    """`score_many` of a model still in memory (before it is written and loaded as a LearnedVerifier)."""

    def __init__(self, model, tokenizer, task, max_new_tokens, device):
        self.args = (model, tokenizer, task, max_new_tokens, device)

    def score_many(self, examples, responses):
        return _score_many(*self.args, examples, responses)


# ------------------------------------------------------------------------------------------------------------
# calibration


def calibration_metrics(scores, labels, threshold: float = 0.5) -> dict:
    """How well scores r separate correct (label 1) from wrong (label 0) responses.

        accuracy = mean 1{(r > threshold) == y}      fpr = P(r > threshold | y = 0)    fnr = P(r <= threshold | y = 1)
        auc      = P(r_pos > r_neg) + P(r_pos = r_neg) / 2   (Mann-Whitney; None without both classes)
        brier    = mean (r - y)^2                    base_rate = mean y,  mean_score = mean r

    Shapes: scores, labels: any shape, flattened (labels in {0, 1}).
    """
    r = torch.as_tensor(scores, dtype=torch.float64).flatten()
    y = torch.as_tensor(labels, dtype=torch.float64).flatten()
    if r.shape != y.shape or r.numel() == 0:
        raise ValueError(f"scores and labels: expected the same non-zero number of values, got {r.numel()} and "
                         f"{y.numel()}")
    pos, accept = y > 0.5, r > threshold
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    auc = None
    if n_pos and n_neg:  # average ranks (ties share their mean rank)
        _, inverse, counts = torch.unique(r, return_inverse=True, return_counts=True)
        upper = counts.cumsum(0).double()
        mid_rank = upper - (counts.double() - 1) / 2
        ranks = mid_rank[inverse]
        auc = float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return {"n": r.numel(), "positives": n_pos, "base_rate": n_pos / r.numel(), "threshold": threshold,
            "accuracy": float((accept == pos).double().mean()), "auc": auc,
            "fpr": float(accept[~pos].double().mean()) if n_neg else None,
            "fnr": float((~accept[pos]).double().mean()) if n_pos else None,
            "brier": float(((r - y) ** 2).mean()), "mean_score": float(r.mean())}


def within_prompt_auc(scores, labels) -> dict:
    """How well scores rank the responses to one prompt: the AUC computed per prompt (Mann-Whitney, ties count 1/2),
    averaged over the prompts that have both a correct and a wrong response. Best-of-N selection depends on this,
    not on the pooled AUC of `calibration_metrics`, which a verifier can earn by scoring how hard a prompt is.

        auc_within = mean over mixed prompts g of  P(r_gi > r_gj | y_gi = 1, y_gj = 0) + P(r_gi = r_gj | ...) / 2

    Shapes: scores, labels: [G, n] (labels in {0, 1}). Returns {"auc_within": float or None, "mixed_prompts": int}.
    """
    r = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64) > 0.5
    if r.dim() != 2 or r.shape != y.shape:
        raise ValueError(f"scores and labels: expected the same [G, n] shape, got {tuple(r.shape)} and "
                         f"{tuple(y.shape)}")
    pos, neg = y.unsqueeze(2), (~y).unsqueeze(1)                      # [G, n, 1], [G, 1, n]
    diff = r.unsqueeze(2) - r.unsqueeze(1)                            # [G, n, n]: r_i - r_j
    wins = ((diff > 0).double() + 0.5 * (diff == 0).double()) * (pos & neg)
    pairs = (pos & neg).sum((1, 2))
    mixed = pairs > 0
    if not bool(mixed.any()):
        return {"auc_within": None, "mixed_prompts": 0}
    per_prompt = wins.sum((1, 2))[mixed] / pairs[mixed]
    return {"auc_within": float(per_prompt.mean()), "mixed_prompts": int(mixed.sum())}


def calibration(verifier, policy, tokenizer, task, examples, *, n: int = 8, temperatures=(0.5, 1.0, 1.5),
                seed: int = 0, max_new_tokens: int = 8, threshold: float = 0.5) -> dict:
    """The verifier on samples of any `policy` (a model): per temperature, `calibration_metrics` of its scores
    against the task's labels, `within_prompt_auc`, and selection among the n samples: BoK (k = n, the verifier
    picks), pass@n (the oracle picks) and pass@1 (a random pick), as means over prompts."""
    from bonfast import metrics
    out = {"prompts": len(examples), "samples": n}
    for temp in temperatures:
        texts, R = _samples(policy, tokenizer, task, examples, n, temp, seed + int(100 * temp), max_new_tokens)
        r = torch.tensor(verifier.score_many(examples, texts), dtype=torch.float64)   # (G, n)
        correct = (R >= 0.5).double()
        count = torch.full((len(examples),), n)
        out[f"{temp:g}"] = {**calibration_metrics(r, correct, threshold), **within_prompt_auc(r, correct),
                            f"bo@{n}": float(metrics.bo_k(r, correct, n).mean()),
                            f"pass@{n}": float(metrics.pass_at_k(count, correct.sum(1), n).mean()),
                            "pass@1": float(correct.mean())}
    return out


def format_calibration(report: dict) -> str:
    """The held-out calibration of a report (`ensure`'s .json) as a markdown table."""
    held = report["heldout"]
    n = held["samples"]
    rows = [f"| T | samples | correct % | accuracy % | AUC | FPR % | FNR % | Brier | Bo{n} % | pass@{n} % | pass@1 % |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t, m in held.items():
        if not isinstance(m, dict):
            continue
        cell = [t, str(m["n"]), f"{100 * m['base_rate']:.1f}", f"{100 * m['accuracy']:.1f}",
                "-" if m["auc"] is None else f"{m['auc']:.3f}", "-" if m["fpr"] is None else f"{100 * m['fpr']:.1f}",
                "-" if m["fnr"] is None else f"{100 * m['fnr']:.1f}", f"{m['brier']:.3f}", f"{100 * m[f'bo@{n}']:.1f}",
                f"{100 * m[f'pass@{n}']:.1f}", f"{100 * m['pass@1']:.1f}"]
        rows.append("| " + " | ".join(cell) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict:
    """Train (or load) the learned verifier of the default preset at a seed; print its calibration report."""
    from bonfast.config import preset
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--overrides", default="{}", help="JSON of TrainConfig fields for the base policy")
    ap.add_argument("--recipe", default="{}", help="JSON of LearnedVerifierConfig recipe fields (tests, smoke runs)")
    ap.add_argument("--out", default="", help="also copy the report (.json) here")
    args = ap.parse_args(argv)
    cfg = preset("default", seed=args.seed, device="cpu", **json.loads(args.overrides))
    vcfg = LearnedVerifierConfig.from_train_config(cfg, torch.device("cpu"), **json.loads(args.recipe))
    path = ensure(vcfg, "cpu")
    with open(report_path(path)) as f:
        report = json.load(f)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(f"{path}\n{format_calibration(report)}")
    return report


if __name__ == "__main__":
    main()
