"""Beyond one device: torchrun processes, FSDP2 sharding, cross-rank metrics, DCP checkpoints.

    torchrun --nproc_per_node=K -m bonfast.cli train ...        (one node; --nnodes + --rdzv-* for several)

Data parallel over R = world ranks. Every rank draws the same global micro-batch of G prompts and keeps
the slice [rank::R] (`bonfast.train.rl_step`); the loss of rank k is

    L_k = -(1 / (N / R)) sum_{t in rank k} w_{s(t)} log p_t,      N = prompts_per_step * max_new_tokens,

so the average the gradient reduction computes, (1/R) sum_k grad L_k = -(1/N) sum_t w_{s(t)} grad log p_t,
is exactly the single-process gradient of the same global batch (up to float rounding of the sum).

What runs where:
  * policy: FSDP2 (`torch.distributed.fsdp.fully_shard`) per decoder block, then the root (embedding,
    final norm, LM head). The trainer calls `model.hidden`, not `forward`: it is registered as an FSDP
    forward method, so blocks and root unshard around it. The root group is not resharded after forward
    (FSDP2's default for the root), so `model.lm_head_weight` read right after `hidden` is the unsharded
    parameter that autograd accumulates into: the fused loss head's dW (tied or untied head) reaches the
    reduce-scatter at the end of backward like every other gradient.
  * sampling: a plain, unsharded replica of the policy per rank (`sampling_replica`), refreshed after each
    optimizer step by gathering the shards (`copy_weights`). Sampling through the sharded model would
    all-gather every block at every decode step, and would deadlock: ranks stop decoding at different
    steps (their samples finish at different times), while FSDP needs every rank in every collective.
    Cost: one full copy of the weights per rank (bf16 with mixed precision) and one all-gather of the
    weights per optimizer step.
  * reference model (kl_coef > 0): sharded like the policy, frozen, forward only.
  * metrics: train-record scalars are averaged over ranks (`all_reduce_mean`; equal prompt counts per
    rank, so the mean of means is the global mean); evaluation prompts are dealt [rank::R] and the judged
    rows gathered back in prompt order (`gather_rows`), so every rank computes the full table.
  * checkpoints: world = 1 writes `checkpoint.safetensors` (bonfast.checkpoint); world > 1 writes DCP
    (`torch.distributed.checkpoint`) into `checkpoint_dcp/` (see `save_dcp`). Either loads on any number
    of ranks: the newest one wins (`newest_checkpoint`).

Backend: nccl on CUDA (device cuda:LOCAL_RANK), gloo on CPU. Without torchrun's environment (or with
WORLD_SIZE=1) everything here is a no-op and the trainer runs as a single process.
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import shutil
import warnings

import torch
import torch.distributed as dist

DCP_DIR = "checkpoint_dcp"
_OWNS_GROUP = False  # init() created the process group (shutdown() destroys only that one)


# ------------------------------------------------------------------------------------------------------------
# process group


def init(device: torch.device | str = "auto") -> tuple[int, int, torch.device]:
    """Join the process group described by torchrun's environment; returns (rank, world, device).

    Reads RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR / MASTER_PORT through `env://`). Without them, or
    with WORLD_SIZE=1, nothing is initialised and `(0, 1, device)` comes back. With a CUDA `device` ("auto":
    CUDA when available), rank k uses cuda:LOCAL_RANK and nccl; otherwise gloo on CPU. An already
    initialised process group (e.g. one made by a test harness) is reused.
    """
    global _OWNS_GROUP
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if not dist.is_initialized():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return 0, 1, device
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {}
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30), **kwargs)
        _OWNS_GROUP = True
    elif device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return dist.get_rank(), dist.get_world_size(), device


def shutdown() -> None:
    """Destroy the process group if `init` created it (end of a torchrun program)."""
    global _OWNS_GROUP
    if _OWNS_GROUP and dist.is_initialized():
        if dist.get_world_size() > 1 and dist.get_backend() == "gloo":
            # let every rank finish its outstanding collectives first: a gloo group destroyed while a peer still
            # talks to it can abort the process at exit ("terminate called without an active exception")
            try:
                dist.monitored_barrier(timeout=datetime.timedelta(seconds=60))
            except RuntimeError:
                pass  # a peer already failed; its error is the one worth reporting
        dist.destroy_process_group()
    _OWNS_GROUP = False


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that prints, logs, plots and renames files."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def check_config(cfg, world: int) -> None:
    """ValueError naming the field when a config cannot be split evenly over `world` ranks.

    Equal prompt counts per rank keep the mean of per-rank metrics equal to the global mean, and give every
    rank at least one prompt (each rank must join every forward and backward of a sharded model).
    """
    if world == 1:
        return
    micro = cfg.prompts_per_step // cfg.grad_accum
    if micro % world:
        raise ValueError(f"TrainConfig.prompts_per_step: expected prompts_per_step / grad_accum (= {micro}) to be a "
                         f"multiple of the world size {world}, got {cfg.prompts_per_step}")
    if cfg.eval_prompts < world:
        raise ValueError(f"TrainConfig.eval_prompts: expected at least one prompt per rank (>= {world}), "
                         f"got {cfg.eval_prompts}")


# ------------------------------------------------------------------------------------------------------------
# collectives on host values


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_mean(values):
    """Mean over ranks of a tensor, or of a dict of scalars (python numbers or 0-d tensors), in float64.

    One collective for a whole dict. Returns the same structure (dict values as 0-d float64 CPU tensors);
    a single process gets its input back (dict values converted the same way).
    """
    if isinstance(values, torch.Tensor):
        if world_size() == 1:
            return values
        out = values.detach().to(_comm_device(), torch.float64).clone()
        dist.all_reduce(out)
        return (out / world_size()).to(values.device, values.dtype)
    keys = list(values)
    flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).detach().cpu().reshape(()) for k in keys])
    if world_size() > 1:
        flat = flat.to(_comm_device())
        dist.all_reduce(flat)
        flat = (flat / world_size()).cpu()
    return dict(zip(keys, flat.unbind(0)))


def gather_objects(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (pickled); [obj] in a single process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    """Rank `src`'s `obj` on every rank (pickled); `obj` itself in a single process."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def interleave(parts: list[list]) -> list:
    """Undo dealing: `parts[k] = items[k::R]` for R = len(parts) -> `items`."""
    R = len(parts)
    total = sum(len(p) for p in parts)
    return [parts[g % R][g // R] for g in range(total)]


def gather_rows(*per_prompt):
    """Gather per-prompt rows that each rank computed for its prompts [rank::world], back in prompt order.

    Each argument is a tensor [G_rank, ...] or a list of G_rank items; each comes back as the same kind
    with all G rows. A single process gets its arguments back.
    """
    if world_size() == 1:
        return per_prompt
    rows = [list(x.unbind(0)) if isinstance(x, torch.Tensor) else list(x) for x in per_prompt]
    parts = gather_objects(rows)
    out = []
    for i, x in enumerate(per_prompt):
        merged = interleave([p[i] for p in parts])
        out.append(torch.stack(merged) if isinstance(x, torch.Tensor) else merged)
    return tuple(out)


# ------------------------------------------------------------------------------------------------------------
# sharding


def _blocks(model) -> list:
    """The decoder blocks of a bonfast Transformer (`model.layers`) or an HFAdapter (`hf.base_model.layers`)."""
    if hasattr(model, "layers"):
        return list(model.layers)
    base = getattr(getattr(model, "hf", None), "base_model", None)
    if base is not None and hasattr(base, "layers"):
        return list(base.layers)
    raise ValueError(f"model: expected a bonfast Transformer or HFAdapter with decoder blocks in .layers, "
                     f"got {type(model).__name__}")


def shard(model, cfg=None, *, mixed_precision: bool | None = None):
    """FSDP2-shard `model` over all ranks: each decoder block, then the root; returns the same module.

    Every rank first receives rank 0's weights (one broadcast), so ranks need not build identical models.
    `mixed_precision` (default: `cfg.fsdp_mixed_precision`): bf16 parameters in forward and backward,
    fp32 sharded master weights (what the optimizer updates and checkpoints hold) and fp32 gradient
    reduction. `model.hidden` is registered as a forward method. A single process gets `model` unchanged.
    """
    if model is None or world_size() == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    if mixed_precision is None:
        mixed_precision = bool(getattr(cfg, "fsdp_mixed_precision", False))
    device = next(model.parameters()).device
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t, src=0)
    mesh = init_device_mesh(device.type, (world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision \
        else MixedPrecisionPolicy()
    for block in _blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "hidden")
    return model


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


def _reshard(model) -> None:
    """Register the sharded parameters everywhere (FSDP2 leaves the root unsharded after a forward)."""
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def sampling_replica(model, cfg=None, *, mixed_precision: bool | None = None):
    """The module the engine samples from: `model` itself in a single process; with world > 1 a frozen,
    unsharded copy (bf16 under mixed precision, the dtype the sharded policy computes in). Call before
    `shard`, and `copy_weights(replica, model)` after every change of the policy's weights."""
    if world_size() == 1:
        return model
    if mixed_precision is None:
        mixed_precision = bool(getattr(cfg, "fsdp_mixed_precision", False))
    replica = copy.deepcopy(model).requires_grad_(False).eval()
    return replica.to(torch.bfloat16) if mixed_precision else replica


@torch.no_grad()
def copy_weights(dst, src) -> None:
    """dst <- the full weights of `src` (sharded parameters are all-gathered, one tensor at a time).

    A collective when `src` is sharded: every rank must call it. No-op when `dst is src`.
    """
    if dst is src:
        return
    from torch.distributed.tensor import DTensor
    _reshard(src)
    params = dict(dst.named_parameters())
    for name, p in src.named_parameters():
        params[name].copy_(p.full_tensor() if isinstance(p, DTensor) else p)


# ------------------------------------------------------------------------------------------------------------
# checkpoints


def _dcp_meta(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, DCP_DIR, "meta.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def newest_checkpoint(out_dir: str, safetensors_name: str = "checkpoint.safetensors") -> tuple[str, int] | None:
    """("safetensors" | "dcp", step) of the newest checkpoint in `out_dir` (safetensors on a tie), or None."""
    found = []
    path = os.path.join(out_dir, safetensors_name)
    if os.path.exists(path):
        from safetensors import safe_open
        with safe_open(path, framework="pt") as f:
            found.append((int(f.metadata()["step"]), 1, "safetensors"))
    meta = _dcp_meta(out_dir)
    if meta is not None:
        found.append((int(meta["step"]), 0, "dcp"))
    if not found:
        return None
    step, _, fmt = max(found)
    return fmt, step


@contextlib.contextmanager
def _single_process_dcp():
    """DCP warns that it 'assumes' a single process when there is no process group: here that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def save_dcp(out_dir: str, model, opt, step: int) -> str:
    """Write model + optimizer state with torch.distributed.checkpoint; returns the checkpoint directory.

    Layout: `out_dir/checkpoint_dcp.step-XXXXXXXX-<nonce>/` (one `__<rank>_0.distcp` file per rank, DCP's
    `.metadata`, and our `meta.json` with the step and world size), and `out_dir/checkpoint_dcp`, a
    symlink to the newest one. Atomic: ranks write into `<dir>.tmp`; rank 0 adds meta.json, renames the
    directory, then swaps the symlink with os.replace; a crash at any point leaves the previous checkpoint
    readable (the nonce keeps a second save of the same step from touching the linked directory). Older
    step directories are removed after the swap. Sharded state dicts (each rank writes its
    shards), so loading works on any number of ranks (`load_dcp`). A collective: every rank calls it.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    name = f"{DCP_DIR}.step-{step:08d}-{broadcast_object(os.urandom(4).hex())}"  # one name on every rank
    final, tmp = os.path.join(out_dir, name), os.path.join(out_dir, name + ".tmp")
    if is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    barrier()
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, opt)}
    with _single_process_dcp():
        dcp.save(state, checkpoint_id=tmp, no_dist=world_size() == 1)
    if is_main():
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"step": step, "world_size": world_size(), "format": "torch.distributed.checkpoint"}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        link, link_tmp = os.path.join(out_dir, DCP_DIR), os.path.join(out_dir, f".{DCP_DIR}.link-{os.getpid()}")
        if os.path.lexists(link_tmp):
            os.remove(link_tmp)
        os.symlink(name, link_tmp)
        os.replace(link_tmp, link)  # atomic: readers see the old or the new checkpoint
        for old in os.listdir(out_dir):
            if old.startswith(DCP_DIR + ".step-") and old != name:
                shutil.rmtree(os.path.join(out_dir, old), ignore_errors=True)
    barrier()
    return final


def load_dcp(out_dir: str, model, opt=None) -> int:
    """Load `out_dir/checkpoint_dcp` into `model` (and `opt` unless None), sharded or not, on any number of
    ranks; returns the step it was written at. (DCP reshards: a checkpoint from 4 ranks loads on 1, 2 or 8.)"""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    meta = _dcp_meta(out_dir)
    if meta is None:
        raise ValueError(f"out_dir: no DCP checkpoint in {out_dir} (expected {DCP_DIR}/meta.json)")
    # the optimizer's state is created lazily: get_optimizer_state_dict makes it (a zero-lr step) to load into
    state = {"model": get_model_state_dict(model)}
    if opt is not None:
        state["optim"] = get_optimizer_state_dict(model, opt)
    with _single_process_dcp():
        dcp.load(state, checkpoint_id=os.path.realpath(os.path.join(out_dir, DCP_DIR)), no_dist=world_size() == 1)
    set_model_state_dict(model, state["model"])
    if opt is not None:
        set_optimizer_state_dict(model, opt, state["optim"])
    return int(meta["step"])


def load_full_state(model, opt, model_state: dict, optim_state: dict[str, dict]) -> None:
    """Load full (unsharded) tensors into a sharded or plain `model` and its `opt`: each rank keeps its shard.

    `model_state`: {parameter name: full tensor}; `optim_state`: {parameter name: {slot: tensor}} (e.g.
    AdamW's step / exp_avg / exp_avg_sq), the layout of `bonfast.checkpoint.save_checkpoint`.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True)
    _reshard(model)
    set_model_state_dict(model, model_state, options=full)
    names = {p: n for n, p in model.named_parameters()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [names[p] for p in g["params"]]}
              for g in opt.param_groups]
    set_optimizer_state_dict(model, opt, {"state": optim_state, "param_groups": groups}, options=full)
