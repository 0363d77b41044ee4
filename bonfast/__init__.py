"""bonfast: Best-of-N-aware fine-tuning of language models (arXiv 2412.15287).

Public API (imported lazily, so `import bonfast` stays cheap):

    bonfast.objectives          per-sample BoN weights for every method of the paper
    bonfast.metrics             pass@k, BoK, majority@k, bootstrap intervals, co-scaling fit
    bonfast.reference           plain-PyTorch float64-capable oracles
    bonfast.linear_logprobs     fused hidden @ W.T / T -> log-softmax -> gather (logits never formed)
    bonfast.bon_loss            BoN-weighted reduction of token log-probs to a scalar
    bonfast.fused_bon_loss      hidden states + LM head -> BoN loss in one pass
    bonfast.load_model          lean Llama-family decoder from a local Hugging Face checkpoint
    bonfast.score               per-token log-probs of n responses per prompt (shared-prefix packing)
    bonfast.Engine              N-sample generation with a shared-prefix KV cache
    bonfast.TrainConfig, bonfast.train
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "linear_logprobs": "bonfast.ops",
    "bon_loss": "bonfast.ops",
    "fused_bon_loss": "bonfast.ops",
    "load_model": "bonfast.model",
    "score": "bonfast.packing",
    "Engine": "bonfast.engine",
    "Rollouts": "bonfast.engine",
    "TrainConfig": "bonfast.config",
    "train": "bonfast.train",
}
_SUBMODULES = {"objectives", "metrics", "reference", "ops", "model", "attention", "packing",
               "engine", "tasks", "config", "train", "cli", "kernels"}

__all__ = sorted(_EXPORTS) + sorted(_SUBMODULES)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"bonfast.{name}")
    raise AttributeError(f"module 'bonfast' has no attribute {name!r}")
