"""Shared-prefix packing vs duplicated prompts: one full BoN training step (forward, fused loss, backward).

Workload (issue [model], shape "issue"): tiny Llama D=256, 4 layers, 4 heads, V=32000, G=2 prompts of P=512 tokens,
n=16 responses of R=128 tokens each. "packed" runs 2 rows of P + n R = 2560 tokens, "duplicated" runs
32 rows of P + R = 640 tokens (n (P + R) per prompt); both score the same 4096 response tokens with the
same loss head (`bonfast.ops.fused_bon_loss`), so the difference is the decoder body.

    pytest benches/bench_packing.py --benchmark-columns=min,mean,rounds --benchmark-group-by=group -s
    python benches/bench_packing.py --shape qwen0.5b --out cases.jsonl   # as benches/gpu_check.py runs it (CUDA, bf16)
    python benches/bench_packing.py --cpu-smoke                          # a tiny Qwen2-shaped model on the CPU

`test_body_fwd_bwd` times the decoder body alone (forward + backward of the hidden rows), the part
packing changes; `test_train_step` adds the LM-head loss, which costs the same for both providers
(at D=256, V=32000 it has ~2.5x the FLOPs of the packed body, which caps the full-step ratio).

Reports per provider: step time (pytest-benchmark table), the speed ratio duplicated / packed measured
in the same run, peak memory of one step (CUDA: max_memory_allocated; CPU: peak RSS growth of a fresh
process, from /proc VmHWM after resetting it) and the bytes autograd saves for backward.
"""
from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import os
import platform
import sys

import pytest
import torch
from bench_engine import QWEN_05B, QWEN_TINY
from benchkit import CaseLog, cuda_peak_extra_mb, summary_ms, time_ms

from bonfast.model import ModelConfig, from_config
from bonfast.packing import pack, packed_hidden

G, N, P, R = 2, 16, 512, 128
# "issue": the shape of issue [model]; its LM head has ~2.5x the FLOPs of its decoder body per token, so the
# shared loss head caps the full-step ratio. "llm-proportions": a body / head FLOP ratio of 1.6 per token,
# closer to real checkpoints (Qwen2.5-0.5B: 2.6, Llama-3-8B: 6); select with BONFAST_PACKING_SHAPES=issue,...
SHAPES = {
    "issue": dict(vocab_size=32000, dim=256, n_layers=4, n_heads=4, n_kv_heads=4, intermediate_size=704),
    "llm-proportions": dict(vocab_size=32000, dim=512, n_layers=8, n_heads=8, n_kv_heads=8, intermediate_size=1408),
    "qwen0.5b": QWEN_05B,   # the script's default on CUDA (random weights, bf16)
    "qwen-tiny": QWEN_TINY,  # --cpu-smoke
}
SELECTED = [s for s in os.environ.get("BONFAST_PACKING_SHAPES", "issue").split(",") if s]
PROVIDERS = ["packed", "duplicated"]
_TIMES: dict[str, float] = {}


def _setup(provider: str, device: str, shape: str = "issue", dtype=None, dims=(G, N, P, R)):
    g, n, p, r = dims
    torch.manual_seed(0)
    cfg = SHAPES[shape]
    model = from_config(ModelConfig(**cfg), dtype=dtype, device=device)
    prompts = torch.randint(1, cfg["vocab_size"], (g, p)).tolist()
    responses = torch.randint(1, cfg["vocab_size"], (g, n, r)).tolist()
    batch = pack(prompts, responses, share_prefix=provider == "packed").to(device)
    weights = torch.randn(g, n, dtype=torch.float64, device=device)  # per-sample BoN weights
    return model, batch, weights


def _loss_fn(normaliser=G * N * R):
    from bonfast.ops import fused_bon_loss
    return lambda h, w, b, s: fused_bon_loss(h, w, b.targets, b.sample_index, s, normaliser=normaliser)


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


def _cpu_peak_child(provider: str, shape: str, queue) -> None:
    torch.set_num_threads(torch.get_num_threads())
    model, batch, weights = _setup(provider, "cpu", shape)
    loss_fn = _loss_fn()
    _step(model, batch, weights, loss_fn)  # warm up lazy imports
    model.zero_grad(set_to_none=True)
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back to the OS so it counts again below
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kib("VmRSS:")
    _step(model, batch, weights, loss_fn)
    queue.put((_rss_kib("VmHWM:") - base) * 1024)


def peak_memory(provider: str, device: str, shape: str = "issue") -> int:
    """Peak extra memory (bytes) of one training step beyond the model and its batch."""
    if device == "cuda":
        model, batch, weights = _setup(provider, device, shape)
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
    proc = ctx.Process(target=_cpu_peak_child, args=(provider, shape, queue))
    proc.start()
    out = queue.get(timeout=600)
    proc.join()
    return out


def _device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or 'cpu'} ({torch.get_num_threads()} threads)"


def _rounds(shape):
    return (3, 1) if shape == "issue" else (1, 1)  # (rounds, warm-up rounds): a bigger shape takes ~40 s a step


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", SELECTED)
def test_body_fwd_bwd(benchmark, provider, workload):
    shape = workload
    """Decoder body only (forward + backward of the response hidden rows): what packing changes."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = SHAPES[shape]
    model, batch, _ = _setup(provider, device, shape)
    up = torch.randn(batch.targets.shape[0], cfg["dim"], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        model.zero_grad(set_to_none=True)
        packed_hidden(model, batch, autocast=False).backward(up)
        sync()
    benchmark.group = f"decoder body fwd+bwd {shape} G={G} n={N} P={P} R={R} D={cfg['dim']} L={cfg['n_layers']}"
    rounds, warmup = _rounds(shape)
    benchmark.pedantic(run, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        _TIMES[(shape, "body", provider)] = benchmark.stats.stats.min
    benchmark.extra_info.update(device=_device_name(device), torch=torch.__version__,
                                rows_x_len=list(batch.input_ids.shape))
    if all((shape, "body", p) in _TIMES for p in PROVIDERS):
        ratio = round(_TIMES[(shape, "body", "duplicated")] / _TIMES[(shape, "body", "packed")], 2)
        benchmark.extra_info["speedup_packed_vs_duplicated"] = ratio
        print(f"\n[{shape} body] duplicated / packed = {ratio}")


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("workload", SELECTED)
def test_train_step(benchmark, provider, workload):
    shape = workload
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = SHAPES[shape]
    model, batch, weights = _setup(provider, device, shape)
    loss_fn = _loss_fn()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        _step(model, batch, weights, loss_fn)
        sync()
    benchmark.group = (f"train step {shape} G={G} n={N} P={P} R={R} D={cfg['dim']} L={cfg['n_layers']} "
                       f"V={cfg['vocab_size']}")
    rounds, warmup = _rounds(shape)
    benchmark.pedantic(run, rounds=min(rounds, 2), warmup_rounds=warmup, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        _TIMES[(shape, "step", provider)] = benchmark.stats.stats.min
    info = benchmark.extra_info
    info["device"] = _device_name(device)
    info["torch"] = torch.__version__
    info["rows x len"] = list(batch.input_ids.shape)
    info["body tokens"] = batch.input_ids.numel()
    info["saved_for_backward_MiB"] = round(_saved_bytes(model, batch, weights, loss_fn) / 2**20, 1)
    model = None  # free it before the fresh-process memory measurement
    info["peak_step_memory_MiB"] = round(peak_memory(provider, device, shape) / 2**20, 1)
    if all((shape, "step", p) in _TIMES for p in PROVIDERS):
        info["speedup_packed_vs_duplicated"] = round(_TIMES[(shape, "step", "duplicated")]
                                                     / _TIMES[(shape, "step", "packed")], 2)
    print(f"\n[{provider}] {info}")


def main(argv=None):
    """Packed vs duplicated: the decoder body (fwd + bwd) and the full step, one JSON line per case."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default=None, help=f"one of {', '.join(SHAPES)} (default: qwen0.5b on CUDA, "
                    "issue on the CPU)")
    ap.add_argument("--dims", default=f"{G},{N},{P},{R}", help="G,n,P,R: prompts, samples, prompt and response tokens")
    ap.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on the CPU)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per case (after one warm-up)")
    ap.add_argument("--out", default=None, help="append one JSON line per case to this file")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny Qwen2-shaped model on the CPU in bf16, 1 round")
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda"
    shape = args.shape or ("qwen-tiny" if args.cpu_smoke else "qwen0.5b" if device == "cuda" else "issue")
    dims = (2, 4, 16, 8) if args.cpu_smoke else tuple(int(x) for x in args.dims.split(","))
    # bf16 on CUDA and in the smoke run (the GPU's code path at toy size); fp32 for CPU measurements
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" or args.cpu_smoke else "float32"))
    rounds = 1 if args.cpu_smoke else args.rounds
    g, n, p, r = dims
    book = CaseLog(args.out, args.deadline_s)
    fields = {"bench": "packing", "shape": shape, "G": g, "n": n, "P": p, "R": r, "dtype": str(dtype)[6:],
              "device": _device_name(device)}
    ms = {}
    for part in ("body", "step"):
        for provider in PROVIDERS:
            def case():
                model, batch, weights = _setup(provider, device, shape, dtype, dims)
                loss_fn = _loss_fn(normaliser=g * n * r)
                up = torch.randn(batch.targets.shape[0], model.config.dim, device=device, dtype=dtype)

                def run():
                    if part == "body":  # autocast off: the model's own dtype throughout
                        model.zero_grad(set_to_none=True)
                        packed_hidden(model, batch, autocast=False).backward(up)
                    else:
                        _step(model, batch, weights, loss_fn)
                times = time_ms(run, None, device, rounds=rounds, warmup=1)
                ms[(part, provider)] = min(times)
                out = {"rows_x_len": list(batch.input_ids.shape), "body_tokens": batch.input_ids.numel(),
                       **summary_ms(times)}
                if device == "cuda":
                    out["peak_extra_mb"] = cuda_peak_extra_mb(run)
                if part == "step":
                    out["saved_for_backward_MiB"] = round(_saved_bytes(model, batch, weights, loss_fn) / 2**20, 1)
                return out
            book.run({**fields, "part": part, "provider": provider}, case)
        if all((part, q) in ms for q in PROVIDERS):
            book.write({**fields, "part": part, "provider": "summary", "status": "ok",
                        "speedup_packed_vs_duplicated": round(ms[(part, "duplicated")] / ms[(part, "packed")], 2),
                        "token_ratio": round(n * (p + r) / (p + n * r), 2)})
    return book.exit_code()


if __name__ == "__main__":
    sys.exit(main())
