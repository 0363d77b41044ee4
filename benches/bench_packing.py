"""Shared-prefix packing vs duplicated prompts: one full BoN training step (forward, fused loss, backward).

Workload (issue [model]): tiny Llama D=256, 4 layers, 4 heads, V=32000, G=2 prompts of P=512 tokens,
n=16 responses of R=128 tokens each. "packed" runs 2 rows of P + n R = 2560 tokens, "duplicated" runs
32 rows of P + R = 640 tokens (n (P + R) per prompt); both score the same 4096 response tokens with the
same loss head (`bonfast.ops.fused_bon_loss`), so the difference is the decoder body.

    pytest benches/bench_packing.py --benchmark-columns=min,mean,rounds --benchmark-group-by=group -s

`test_body_fwd_bwd` times the decoder body alone (forward + backward of the hidden rows), the part
packing changes; `test_train_step` adds the LM-head loss, which costs the same for both providers
(at D=256, V=32000 it has ~2.5x the FLOPs of the packed body, which caps the full-step ratio).

Reports per provider: step time (pytest-benchmark table), the speed ratio duplicated / packed measured
in the same run, peak memory of one step (CUDA: max_memory_allocated; CPU: peak RSS growth of a fresh
process, from /proc VmHWM after resetting it) and the bytes autograd saves for backward.
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import platform

import pytest
import torch

from bonfast.model import ModelConfig, from_config
from bonfast.packing import pack, packed_hidden

G, N, P, R = 2, 16, 512, 128
CFG = dict(vocab_size=32000, dim=256, n_layers=4, n_heads=4, n_kv_heads=4, intermediate_size=704)
PROVIDERS = ["packed", "duplicated"]
_TIMES: dict[str, float] = {}


def _setup(provider: str, device: str):
    torch.manual_seed(0)
    model = from_config(ModelConfig(**CFG), device=device)
    prompts = torch.randint(1, CFG["vocab_size"], (G, P)).tolist()
    responses = torch.randint(1, CFG["vocab_size"], (G, N, R)).tolist()
    batch = pack(prompts, responses, share_prefix=provider == "packed").to(device)
    weights = torch.randn(G, N, dtype=torch.float64, device=device)  # per-sample BoN weights
    return model, batch, weights


def _loss_fn():
    try:
        from bonfast.ops import fused_bon_loss
        return lambda h, w, b, s: fused_bon_loss(h, w, b.targets, b.sample_index, s, normaliser=G * N * R)
    except ImportError:  # before ops.fused_bon_loss existed: linear_logprobs + weighted sum
        from bonfast.ops import linear_logprobs
        return lambda h, w, b, s: -(linear_logprobs(h, w, b.targets) * s.view(-1)[b.sample_index]).sum() / (G * N * R)


def _step(model, batch, weights, loss_fn):
    model.zero_grad(set_to_none=True)
    h = packed_hidden(model, batch, autocast=False)  # (T_resp, D) fp32 on both providers
    loss = loss_fn(h, model.lm_head_weight, batch, weights)
    loss.backward()
    return loss


def _saved_bytes(model, batch, weights, loss_fn) -> int:
    """Bytes of distinct storages autograd keeps for backward during one step."""
    seen: dict[int, int] = {}

    def pack_hook(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda t: t):
        _step(model, batch, weights, loss_fn)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(v for k, v in seen.items() if k not in params)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def _cpu_peak_child(provider: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    model, batch, weights = _setup(provider, "cpu")
    loss_fn = _loss_fn()
    _step(model, batch, weights, loss_fn)  # warm up lazy imports
    model.zero_grad(set_to_none=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS so it counts again below
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kib("VmRSS:")
    _step(model, batch, weights, loss_fn)
    queue.put((_rss_kib("VmHWM:") - base) * 1024)


def peak_memory(provider: str, device: str) -> int:
    """Peak extra memory (bytes) of one training step beyond the model and its batch."""
    if device == "cuda":
        model, batch, weights = _setup(provider, device)
        loss_fn = _loss_fn()
        _step(model, batch, weights, loss_fn)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        _step(model, batch, weights, loss_fn)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    ctx = mp.get_context("spawn")  # a fresh process: RSS of the other provider cannot hide this one's peak
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(provider, queue))
    proc.start()
    out = queue.get(timeout=600)
    proc.join()
    return out


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_body_fwd_bwd(benchmark, provider):
    """Decoder body only (forward + backward of the response hidden rows): what packing changes."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, batch, _ = _setup(provider, device)
    up = torch.randn(batch.targets.shape[0], CFG["dim"], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        model.zero_grad(set_to_none=True)
        packed_hidden(model, batch, autocast=False).backward(up)
        sync()
    benchmark.group = f"decoder body fwd+bwd G={G} n={N} P={P} R={R} D={CFG['dim']}"
    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    _TIMES["body " + provider] = benchmark.stats.stats.min
    benchmark.extra_info.update(device=_device_name(device), torch=torch.__version__,
                                rows_x_len=list(batch.input_ids.shape))
    if "body packed" in _TIMES and "body duplicated" in _TIMES:
        ratio = round(_TIMES["body duplicated"] / _TIMES["body packed"], 2)
        benchmark.extra_info["speedup_packed_vs_duplicated"] = ratio
        print(f"\n[body] duplicated / packed = {ratio}")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_train_step(benchmark, provider):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, batch, weights = _setup(provider, device)
    loss_fn = _loss_fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        _step(model, batch, weights, loss_fn)
        sync()
    benchmark.group = f"train step G={G} n={N} P={P} R={R} D={CFG['dim']} V={CFG['vocab_size']}"
    benchmark.pedantic(run, rounds=2, warmup_rounds=1, iterations=1)
    _TIMES[provider] = benchmark.stats.stats.min
    info = benchmark.extra_info
    info["device"] = _device_name(device)
    info["torch"] = torch.__version__
    info["rows x len"] = list(batch.input_ids.shape)
    info["body tokens"] = batch.input_ids.numel()
    info["saved_for_backward_MiB"] = round(_saved_bytes(model, batch, weights, loss_fn) / 2**20, 1)
    del model
    info["peak_step_memory_MiB"] = round(peak_memory(provider, device) / 2**20, 1)
    if "packed" in _TIMES and "duplicated" in _TIMES:
        info["speedup_packed_vs_duplicated"] = round(_TIMES["duplicated"] / _TIMES["packed"], 2)
    print(f"\n[{provider}] {info}")
