"""A run's parts from its config: device, model, tokenizer, task, verifier, seeds, and the supervised warm start.

    TrainConfig --build--> model (tiny: random weights from cfg.seed; else a local checkpoint), tokenizer,
                           task (bonfast.tasks), verifier
                --warm_start--> supervised steps on the task's reference responses (cached by config hash)

Seeds: every random draw of a run (prompts, samples, warm-start batches) is seeded by `step_seed(cfg, step,
purpose)`, a function of (seed, step, purpose) only, so a resumed run draws what an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time

import torch

from bonfast import checkpoint, distributed, precision, rollout, tasks
from bonfast.config import TrainConfig
from bonfast.packing import pack, packed_logprobs

__all__ = ["resolve_device", "step_seed", "tiny_model_config", "build", "warm_start", "sft_lr_at", "progress",
           "check_task_encodable", "check_model_files"]

# config fields that determine the warm-start weights (its cache key)
WARM_START_KEYS = ("model", "task", "task_levels", "tiny_dim", "tiny_layers", "tiny_heads", "sft_steps", "sft_lr",
                   "sft_batch", "seed", "max_new_tokens")


def resolve_device(cfg: TrainConfig) -> torch.device:
    """cfg.device, with "auto" meaning CUDA when available."""
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def step_seed(cfg: TrainConfig, step: int, salt: str) -> int:
    """A seed that depends only on (run seed, step, purpose): resumed runs redraw the same prompts and samples."""
    digest = hashlib.sha256(f"{cfg.seed}/{step}/{salt}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def tiny_model_config(cfg: TrainConfig, tokenizer):
    """The `ModelConfig` of the embedded tiny decoder (cfg.tiny_*) for the arithmetic tokenizer."""
    from bonfast.model import ModelConfig
    heads = cfg.tiny_heads
    return ModelConfig(
        vocab_size=tokenizer.vocab_size, dim=cfg.tiny_dim, n_layers=cfg.tiny_layers, n_heads=heads,
        n_kv_heads=max(1, heads // 2), head_dim=cfg.tiny_dim // heads, intermediate_size=cfg.tiny_dim * 3,
        rope_theta=10000.0, rope_scaling=None, rms_norm_eps=1e-5, tie_word_embeddings=True,
        attention_bias=False, qk_norm=False, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build(cfg: TrainConfig, device: torch.device):
    """Model, tokenizer, task and verifier for a config (the tiny model starts from random weights)."""
    from bonfast.model import from_config, load_model
    task = tasks.get_task(cfg.task, **cfg.task_kwargs())
    if cfg.model == "tiny":
        from bonfast.tasks.tokenizer import ArithmeticTokenizer
        tokenizer = ArithmeticTokenizer()
        check_task_encodable(cfg, task, tokenizer)  # before any work: the tiny tokenizer covers arithmetic only
        torch.manual_seed(cfg.seed)
        model = from_config(tiny_model_config(cfg, tokenizer)).to(device)
    else:
        check_model_files(cfg)
        model, tokenizer = load_model(cfg.model, gguf_file=cfg.gguf_file, dtype=torch.float32, device=device)
        if tokenizer is None:
            raise ValueError(f"TrainConfig.model: no tokenizer found with the checkpoint {cfg.model!r}")
        check_task_encodable(cfg, task, tokenizer)
    verifier = tasks.get_verifier(cfg.verifier, task, **cfg.verifier_kwargs())
    return model, tokenizer, task, verifier


def check_task_encodable(cfg: TrainConfig, task, tokenizer, count: int = 4) -> None:
    """Encode a few of the task's prompts and reference answers (milliseconds): a task the model's tokenizer
    cannot write fails here, naming the field, instead of after the warm start."""
    try:
        for ex in task.examples("train", n=count, seed=cfg.seed):
            task.prompt_ids(ex, tokenizer)
            reference = task.reference_response(ex)
            if reference is not None:
                rollout.encode_response(tokenizer, reference, cfg.max_new_tokens)
    except (ValueError, KeyError) as e:
        model = "the tiny model (its tokenizer writes arithmetic only)" if cfg.model == "tiny" else cfg.model
        raise checkpoint.UserError(f"TrainConfig.task: expected a task the tokenizer of {model} can encode; "
                                   f"{cfg.task!r} cannot be ({e}); pass --model with a checkpoint whose "
                                   "tokenizer covers the task") from None


def check_model_files(cfg: TrainConfig) -> None:
    """A model directory without safetensors / config.json but with a .gguf file needs gguf_file: say so."""
    if cfg.gguf_file is not None or not os.path.isdir(cfg.model):
        return
    names = os.listdir(cfg.model)
    ggufs = sorted(n for n in names if n.endswith(".gguf"))
    if ggufs and "config.json" not in names:
        raise checkpoint.UserError(f"TrainConfig.gguf_file: {cfg.model} holds no config.json / safetensors "
                                   f"checkpoint but GGUF file(s) {', '.join(ggufs)}; pass --gguf_file {ggufs[0]}")


def progress(cfg: TrainConfig, total: int, desc: str):
    """A tqdm bar, shown only with cfg.progress, on rank 0, and when stderr is a terminal (quiet in logs)."""
    from tqdm.auto import tqdm
    show = cfg.progress and distributed.is_main() and sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=not show, dynamic_ncols=True)


def sft_lr_at(cfg: TrainConfig, step: int) -> float:
    """Warm-start learning rate: linear warmup over 20 steps times a cosine from sft_lr to 0.1 sft_lr.

    Not the RL schedule (`bonfast.train.lr_at`): the warmup multiplies the cosine here, and cached warm starts
    were made with this schedule (changing it changes every warm start)."""
    warm = min(1.0, (step + 1) / 20)
    return cfg.sft_lr * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.sft_steps)))


def warm_start_path(cfg: TrainConfig, device=None) -> str:
    """Cache file of the warm-start weights of `cfg` on `device` (default: the config's device).

    A warm start trained under the bf16 policy has its own key; fp32 keeps the key it had before precision
    was a field, so existing fp32 caches stay valid."""
    fields = {k: getattr(cfg, k) for k in WARM_START_KEYS}
    policy = precision.resolve(cfg.precision, device if device is not None else resolve_device(cfg))
    if policy.name != "fp32":
        fields["precision"] = policy.name
    key = hashlib.sha256(json.dumps(fields, default=str).encode())
    return os.path.join(checkpoint.cache_dir(), f"warmstart-{key.hexdigest()[:16]}.safetensors")


def warm_start(cfg: TrainConfig, model, tokenizer, task, device, log) -> None:
    """Supervised steps on gold answers (loss through the same packed path and precision policy), cached by config
    hash."""
    if cfg.sft_steps == 0:
        return
    path = warm_start_path(cfg, device)
    if checkpoint.load_cached_weights(path, model, device):
        log({"kind": "sft", "cached": path})
        return
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    bar = progress(cfg, cfg.sft_steps, "warm start (SFT)")
    t0 = time.time()
    for step in range(cfg.sft_steps):
        for group in opt.param_groups:
            group["lr"] = sft_lr_at(cfg, step)
        examples = task.examples("train", n=cfg.sft_batch, seed=step_seed(cfg, step, "sft"))
        prompts = [task.prompt_ids(ex, tokenizer) for ex in examples]
        answers = [[rollout.encode_response(tokenizer, task.reference_response(ex), cfg.max_new_tokens)]
                   for ex in examples]
        batch = pack(prompts, answers, pad_id=tokenizer.pad_token_id or 0)
        logp, _ = packed_logprobs(model, batch.to(device), temperature=1.0, precision=cfg.precision)
        loss = -logp.sum() / logp.numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.update(1)
        if not bar.disable and (step % 10 == 9 or step == cfg.sft_steps - 1):
            bar.set_postfix(loss=f"{loss.item():.3f}")  # a host sync every 10 steps, for a shown bar only
    bar.close()
    checkpoint.save_cached_weights(path, model)
    log({"kind": "sft", "steps": cfg.sft_steps, "final_loss": loss.item(), "seconds": time.time() - t0})
