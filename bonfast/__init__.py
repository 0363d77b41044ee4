"""bonfast: Best-of-N-aware fine-tuning of language models (arXiv 2412.15287).

The training pipeline, one module per step (docs/method.md has the method, README the architecture):

    engine      sample      Engine: n samples per prompt with a shared-prefix KV cache
    rollout     reward      decode, judge -> rewards R, verifier scores r, answers
    objectives  weights     OBJECTIVES registry; weights(method, R, n_bon, scores=r) -> w [G, n]
    packing     log-probs   pack(prompts, responses) + packed_logprobs(model, batch)
    ops         loss        bon_loss / fused_bon_loss / linear_logprobs / prefix_attention (Triton or torch)
    train       step        rl_step(run, step) and the loop; build (model, task, warm start), evaluate,
                            checkpoint, config (TrainConfig), metrics, report, distributed around it

Public API (imported lazily, so `import bonfast` stays cheap; `bonfast.<name>` loads its module on first use):

    linear_logprobs, bon_loss, fused_bon_loss, prefix_attention   the ops (bonfast.ops)
    pack, packed_logprobs, score, PackedBatch                       shared-prefix packing (bonfast.packing)
    weights, OBJECTIVES, METHODS                                    per-sample BoN weights (bonfast.objectives)
    Engine, Rollouts                                                N-sample generation (bonfast.engine)
    load_model                                                      a local Hugging Face / GGUF checkpoint
    TrainConfig, train, evaluate_checkpoint                         the trainer
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "linear_logprobs": "bonfast.ops",
    "bon_loss": "bonfast.ops",
    "fused_bon_loss": "bonfast.ops",
    "prefix_attention": "bonfast.ops",
    "pack": "bonfast.packing",
    "packed_logprobs": "bonfast.packing",
    "score": "bonfast.packing",
    "PackedBatch": "bonfast.packing",
    "weights": "bonfast.objectives",
    "OBJECTIVES": "bonfast.objectives",
    "METHODS": "bonfast.objectives",
    "Engine": "bonfast.engine",
    "Rollouts": "bonfast.engine",
    "load_model": "bonfast.model",
    "TrainConfig": "bonfast.config",
    "train": "bonfast.train",
    "evaluate_checkpoint": "bonfast.evaluate",
}
_SUBMODULES = {"attention", "build", "checkpoint", "cli", "config", "distributed", "engine", "evaluate", "kernels",
               "metrics", "model", "objectives", "ops", "packing", "reference", "report", "rollout", "selection",
               "tasks", "train"}

# the public names: "train" is the function (its module is bonfast.train); tests/test_structure.py pins this list
__all__ = [
    "Engine", "METHODS", "OBJECTIVES", "PackedBatch", "Rollouts", "TrainConfig", "attention", "bon_loss", "build",
    "checkpoint", "cli", "config", "distributed", "engine", "evaluate", "evaluate_checkpoint", "fused_bon_loss",
    "kernels", "linear_logprobs", "load_model", "metrics", "model", "objectives", "ops", "pack", "packed_logprobs",
    "packing", "prefix_attention", "reference", "report", "rollout", "score", "selection", "tasks", "train",
    "weights",
]

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time __getattr__ imports on first use
    from bonfast.config import TrainConfig
    from bonfast.engine import Engine, Rollouts
    from bonfast.evaluate import evaluate_checkpoint
    from bonfast.model import load_model
    from bonfast.objectives import METHODS, OBJECTIVES, weights
    from bonfast.ops import bon_loss, fused_bon_loss, linear_logprobs, prefix_attention
    from bonfast.packing import PackedBatch, pack, packed_logprobs, score
    from bonfast.train import train


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"bonfast.{name}")
    raise AttributeError(f"module 'bonfast' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
