"""Files a run writes and reads back: one atomic-write helper, training checkpoints, the warm-start cache.

    out_dir/checkpoint.safetensors   model.* + optim.<param>.<slot> + rng.torch, metadata {"step": str}
    out_dir/checkpoint_dcp/          the sharded form written by multi-process runs (`bonfast.distributed`)
    $BONFAST_CACHE/warmstart-<hash>.safetensors   supervised warm-start weights, keyed by the config fields
                                                  that determine them (default cache: ~/.cache/bonfast)

Every file is written through `atomic_write` (temporary file, fsync, rename): a reader or a resumed run sees
the previous file or the new one, never half of one.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch

from bonfast import distributed

__all__ = ["CHECKPOINT", "UserError", "atomic_write", "save_checkpoint", "load_checkpoint", "load_model_weights",
           "checkpoint_step", "cache_dir", "load_cached_weights", "save_cached_weights"]

CHECKPOINT = "checkpoint.safetensors"


class UserError(ValueError):
    """A problem with the input that the user can fix (run directory, checkpoint, model file, task vs tokenizer).

    The message names the field or file and what was expected; `bonfast` prints it as one line and exits 2."""


def checkpoint_step(out_dir: str) -> tuple[str, int, str] | None:
    """(format, step, path) of out_dir's newest checkpoint, or None; UserError when it cannot be read."""
    try:
        latest = distributed.newest_checkpoint(out_dir, CHECKPOINT)
    except Exception as e:  # noqa: BLE001 - safetensors / json / OS errors of a truncated or foreign file
        raise UserError(f"{os.path.join(out_dir, CHECKPOINT)}: expected a bonfast checkpoint, the file cannot be "
                        f"read ({_first_line(e)})") from e
    if latest is None:
        return None
    name = CHECKPOINT if latest[0] == "safetensors" else distributed.DCP_DIR
    return latest[0], latest[1], os.path.join(out_dir, name)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)`, fsync the file, then rename it onto `path` (atomic on POSIX).

    The temporary file sits next to `path` (same file system) and is removed if `write` raises.
    """
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a reader sees the old or the new file, never half of one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _save_safetensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_checkpoint(out_dir: str, model, opt, step: int) -> None:
    """Model, AdamW state and the torch RNG state at `step` (sharded DCP directory when world > 1)."""
    if distributed.world_size() > 1:  # sharded: DCP directory checkpoint_dcp/ (bonfast.distributed.save_dcp)
        distributed.save_dcp(out_dir, model, opt, step)
        return
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    names = {p: n for n, p in model.named_parameters()}
    for p, state in opt.state.items():
        for k, v in state.items():
            tensors[f"optim.{names[p]}.{k}"] = torch.as_tensor(v).detach().clone().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    _save_safetensors(tensors, os.path.join(out_dir, CHECKPOINT), metadata={"step": str(step)})


def load_checkpoint(out_dir: str, model, opt, device) -> int:
    """Restore model and optimizer state from the newest checkpoint (safetensors or DCP, written by any
    number of ranks, loaded into a sharded or plain model); returns the step it was written at."""
    from safetensors import safe_open
    latest = distributed.newest_checkpoint(out_dir, CHECKPOINT)
    if latest is not None and latest[0] == "dcp":  # written by a multi-process run
        return distributed.load_dcp(out_dir, model, opt)
    path = os.path.join(out_dir, CHECKPOINT)
    with safe_open(path, framework="pt", device=str(device)) as f:
        step = int(f.metadata()["step"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if distributed.is_sharded(model):  # every rank keeps its shard of the full tensors
        optim = {}
        for key, v in tensors.items():
            if key.startswith("optim."):
                name, slot = key[len("optim."):].rsplit(".", 1)
                optim.setdefault(name, {})[slot] = v
        distributed.load_full_state(model, opt, {k[len("model."):]: v for k, v in tensors.items()
                                                 if k.startswith("model.")}, optim)
        return step
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for key, v in tensors.items():
        if key.startswith("optim."):
            name, slot = key[len("optim."):].rsplit(".", 1)
            opt.state[params[name]][slot] = v
    torch.set_rng_state(tensors["rng.torch"].cpu())
    return step


def load_model_weights(out_dir: str, model, device) -> str | None:
    """Load only the model weights of out_dir's newest checkpoint; returns where they came from (None: none)."""
    latest = distributed.newest_checkpoint(out_dir, CHECKPOINT)
    if latest is not None and latest[0] == "dcp":  # written by a multi-process run
        distributed.load_dcp(out_dir, model)
        return os.path.join(out_dir, distributed.DCP_DIR)
    path = os.path.join(out_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    from safetensors.torch import load_file
    state = load_file(path, device=str(device))
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    return path


def cache_dir() -> str:
    """$BONFAST_CACHE, else ~/.cache/bonfast."""
    return os.environ.get("BONFAST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "bonfast"))


def load_cached_weights(path: str, model, device) -> bool:
    """Load a cached state dict into `model` if `path` exists; returns whether it did."""
    if not os.path.exists(path):
        return False
    from safetensors.torch import load_file
    model.load_state_dict(load_file(path, device=str(device)))
    return True


def save_cached_weights(path: str, model) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _save_safetensors({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path)
