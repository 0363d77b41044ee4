"""Shared-prefix decode attention vs per-sample attention over a duplicated prompt KV (what generate() does).

Providers:
    prefix_triton  bonfast Triton kernels (CUDA only)
    prefix_torch   bonfast PyTorch path (prefix GEMM per prompt and kv head + suffix + LSE merge)
    naive_sdpa     torch SDPA per sample over its own copy of [prefix; suffix] K/V ([G*n, Hkv, P+t, Dh])

Reports time per call, the K/V bytes each provider must read (prefix once vs n times) and the achieved
GB/s against that count.

    python benches/bench_prefix_attention.py                 # table for the shapes of this device
    python benches/bench_prefix_attention.py --out cases.jsonl --deadline-s 20   # as benches/gpu_check.py runs it
    python benches/bench_prefix_attention.py --cpu-smoke     # one tiny shape on the CPU, seconds
    pytest benches/bench_prefix_attention.py --benchmark-disable
"""
import argparse
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from benchkit import CaseLog

from bonfast.ops import prefix_attention

CPU_SHAPES = [  # (G, n, Hq, Hkv, Dh, P, t)
    (2, 16, 8, 2, 64, 512, 64),
    (2, 16, 8, 2, 64, 2048, 64),
]
CUDA_SHAPES = [
    (8, 16, 32, 8, 128, 1024, 128),
    (8, 16, 32, 8, 128, 4096, 128),
    (32, 16, 14, 2, 64, 1024, 512),     # Qwen2.5-0.5B-like heads
]
SMOKE_SHAPES = [(2, 4, 4, 2, 16, 33, 5)]


def make(shape, dtype, device):
    G, n, Hq, Hkv, Dh, P, t = shape
    q = torch.randn(G, n, Hq, Dh, dtype=dtype, device=device)
    pk, pv = (torch.randn(G, Hkv, P, Dh, dtype=dtype, device=device) for _ in range(2))
    sk, sv = (torch.randn(G, n, Hkv, t, Dh, dtype=dtype, device=device) for _ in range(2))
    lens = torch.full((G,), P, device=device)
    return q, pk, pv, lens, sk, sv


def naive_inputs(q, pk, pv, sk, sv):
    """Each sample owns a copy of the prompt K/V, as in a per-sequence KV cache: [G*n, Hkv, P+t, Dh]."""
    G, n, Hq, Dh = q.shape
    k = torch.cat([pk[:, None].expand(-1, n, -1, -1, -1), sk], dim=3).flatten(0, 1)
    v = torch.cat([pv[:, None].expand(-1, n, -1, -1, -1), sv], dim=3).flatten(0, 1)
    return q.reshape(G * n, Hq, 1, Dh), k, v


def providers(device):
    out = {"prefix_torch": None, "naive_sdpa": None}
    if device.type == "cuda":
        out = {"prefix_triton": None, **out}
    return list(out)


def runner(provider, shape, dtype, device):
    q, pk, pv, lens, sk, sv = make(shape, dtype, device)
    if provider == "naive_sdpa":
        qn, kn, vn = naive_inputs(q, pk, pv, sk, sv)
        return lambda: F.scaled_dot_product_attention(qn, kn, vn, enable_gqa=True)
    impl = "triton" if provider == "prefix_triton" else "torch"
    return lambda: prefix_attention(q, pk, pv, lens, sk, sv, None, impl=impl)


def kv_bytes(provider, shape, dtype):
    G, n, Hq, Hkv, Dh, P, t = shape
    size = torch.finfo(dtype).bits // 8
    tokens = G * n * (P + t) if provider == "naive_sdpa" else G * P + G * n * t
    return 2 * tokens * Hkv * Dh * size


def measure(fn, device, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps / 1e3
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


@pytest.mark.parametrize("provider", ["prefix_torch", "naive_sdpa"])
@pytest.mark.parametrize("dims", CPU_SHAPES[:1], ids=lambda s: "x".join(map(str, s)))
def test_decode_attention_cpu(benchmark, provider, dims):
    # `dims`, not `shape`: benches/conftest.py parametrizes any `shape` argument with its (T, D, V) presets
    fn = runner(provider, dims, torch.float32, torch.device("cpu"))
    out = benchmark(fn)
    benchmark.extra_info["kv_bytes"] = kv_bytes(provider, dims, torch.float32)
    assert torch.isfinite(out).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("provider", ["prefix_triton", "prefix_torch", "naive_sdpa"])
@pytest.mark.parametrize("dims", CUDA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_decode_attention_cuda(benchmark, provider, dims):
    fn = runner(provider, dims, torch.bfloat16, torch.device("cuda"))
    benchmark(fn)
    benchmark.extra_info["kv_bytes"] = kv_bytes(provider, dims, torch.bfloat16)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--reps", type=int, default=10, help="timed calls per case (after 3 warm-up calls)")
    ap.add_argument("--out", default=None, help="append one JSON line per case to this file")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("--cpu-smoke", action="store_true", help="one tiny shape on the CPU")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.cpu_smoke else args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shapes = SMOKE_SHAPES if args.cpu_smoke else CUDA_SHAPES if device.type == "cuda" else CPU_SHAPES
    book = CaseLog(args.out, args.deadline_s)
    for shape in shapes:
        fields = {"bench": "prefix_attention", "shape(G,n,Hq,Hkv,Dh,P,t)": list(shape), "dtype": str(dtype)[6:],
                  "device": where}
        ms = {}
        for p in providers(device):
            def case():
                sec = measure(runner(p, shape, dtype, device), device, reps=args.reps)
                ms[p] = sec * 1e3
                return {"ms": round(sec * 1e3, 4), "kv_MB": round(kv_bytes(p, shape, dtype) / 1e6, 2),
                        "GB/s": round(kv_bytes(p, shape, dtype) / sec / 1e9, 1)}
            book.run({**fields, "provider": p}, case)
        best = min((v, k) for k, v in ms.items() if k != "naive_sdpa") if len(ms) > 1 else None
        if best and "naive_sdpa" in ms:
            book.write({**fields, "provider": "summary", "status": "ok", "best": best[1],
                        "speedup_vs_naive": round(ms["naive_sdpa"] / best[0], 2)})
    return book.exit_code()


if __name__ == "__main__":
    sys.exit(main())
