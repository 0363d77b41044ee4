"""Benchmark: per-token log-probs of a linear LM head, logp = log_softmax(x @ W.T)[y].

Providers (a parameter, so one run prints their ratios side by side, grouped by shape and mode):
    naive          logits = x @ W.T -> float -> log_softmax -> gather (materialises [T, V] several times)
    torch_lce      -F.linear_cross_entropy(x, W, y, reduction="none", options=LinearCrossEntropyOptions())
                   (PyTorch 2.13's chunked path; the in-the-box baseline; skipped where torch lacks that API)
    bonfast_torch  bonfast.ops.linear_logprobs(impl="torch"): chunked, recomputing backward
    compile        torch.compile(naive)
    triton         bonfast.ops.linear_logprobs(impl="triton")        (CUDA only; strategy "auto")
    triton_gemm    the same with strategy="gemm": cuBLAS token chunks (8 TDV of work here; fastest)
    triton_fused   the same with strategy="fused": memory near dX + dW (8 TDV)
    triton_tiles   the same with strategy="tiles": the first recomputing kernels (10 TDV)
    liger, cce     Liger FLCE (reduction="none") / Cut Cross-Entropy  (CUDA only, when importable)
    trl            TRL's chunked LM head, `trl.kernels.ChunkedLogProbFunction` (what TRL 1.16's GRPOTrainer /
                   DPOTrainer score with): GEMM tiles of 4096 tokens x 32768 vocabulary entries folded into
                   an online logsumexp (Triton on CUDA, torch ops on the CPU), recomputing backward; log-probs only
                   (GRPOTrainer also asks it for the entropy); when trl imports, on every device
Modes: fwd (forward with grad-enabled inputs, as in a training step), bwd (backward only, the forward is
untimed setup), full (forward + backward). Temperature is 1 for every provider (bonfast's temperature costs
one multiply per logit tile; the others would need a scaled weight copy).

Reported in benchmark.extra_info: flops (2TDV fwd, 6TDV bwd, 8TDV full), tflops (at the median time),
peak_extra_mb and how it was measured:
    CUDA: torch.cuda.max_memory_allocated() during the op minus memory_allocated() before it (inputs excluded).
    CPU:  a fresh subprocess per case builds the inputs and warms the provider up on a tiny shape, resets the
          kernel's RSS high-water mark (/proc/self/clear_refs), runs the op once: peak_extra = VmHWM after the
          op - VmRSS before it. An upper bound on the op's extra memory (it includes allocator slack and
          library scratch); the bwd mode is measured the same way after an unmeasured forward.

As a script (what benches/gpu_check.py runs), one JSON line per case, each case within a time box:

    python benches/bench_linear_logprobs.py --shapes gpu-check --out cases.jsonl --deadline-s 60
    python benches/bench_linear_logprobs.py --cpu-smoke          # tiny fp32 shape on the CPU, seconds
"""
import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from benchkit import CaseLog, cuda_peak_extra_mb, module_missing, parse_shapes, summary_ms, time_ms, torch_lce_missing

from bonfast.ops import linear_logprobs

PROVIDERS = ["naive", "torch_lce", "bonfast_torch", "compile", "trl", "triton", "triton_gemm", "triton_fused",
             "triton_tiles", "liger", "cce"]
# script order: the kernel under test first, torch.compile (slowest to warm up) last
SCRIPT_PROVIDERS = ["triton", "triton_gemm", "triton_fused", "triton_tiles", "naive", "torch_lce", "liger", "cce",
                    "trl", "bonfast_torch", "compile"]
FLOPS_PER_TDV = {"fwd": 2, "bwd": 6, "full": 8}
COMPILE_WARMUP_S = 40  # a first torch.compile of the naive head (forward + backward graphs), roughly, on a GPU host
TRL_VOCAB_CHUNK = 32768  # TRL 1.16's fused-LM-head tile width (trl.trainer.utils), used if trl no longer names it
TRL_HEAD_ARGS = ["hidden", "weight", "bias", "targets", "temperature", "chunk_size", "final_logit_softcapping",
                 "logit_scale", "outputs"]  # ChunkedLogProbFunction.forward after ctx, as of TRL 1.16


def _naive(x, w, y):
    return torch.log_softmax((x @ w.T).float(), dim=-1).gather(-1, y[:, None])[:, 0]


def make_fn(provider, device):
    """(x, w, y) -> logp [T] for `provider`; raises pytest.skip.Exception when it is unavailable here."""
    if provider == "naive":
        return _naive
    if provider == "torch_lce":
        missing = torch_lce_missing()
        if missing:
            pytest.skip(missing)
        opts = torch.nn.LinearCrossEntropyOptions()
        return lambda x, w, y: -F.linear_cross_entropy(x, w, y, reduction="none", ignore_index=-100, options=opts)
    if provider == "bonfast_torch":
        return lambda x, w, y: linear_logprobs(x, w, y, impl="torch")
    if provider == "compile":
        return torch.compile(_naive)
    if provider == "trl":
        return trl_logprobs()
    if device != "cuda":
        pytest.skip(f"{provider} needs CUDA")
    if provider == "triton":
        return lambda x, w, y: linear_logprobs(x, w, y, impl="triton")
    if provider.startswith("triton_"):
        strategy = provider.removeprefix("triton_")
        return lambda x, w, y: linear_logprobs(x, w, y, impl="triton", strategy=strategy)
    if provider == "liger":
        liger = pytest.importorskip("liger_kernel.transformers")
        loss = liger.LigerFusedLinearCrossEntropyLoss(reduction="none")
        return lambda x, w, y: -loss(w, x, y)
    if provider == "cce":
        cce = pytest.importorskip("cut_cross_entropy")
        return lambda x, w, y: -cce.linear_cross_entropy(x, w, y, reduction="none")
    raise ValueError(f"unknown provider {provider!r}; expected one of {PROVIDERS}")


def trl_logprobs(vocab_chunk=None):
    """TRL's chunked LM head as (x, w, y) -> logp [T], called as TRL's fused head calls it (no bias, temperature
    1, no softcap, logit scale 1, no optional outputs) with TRL's own tile width unless `vocab_chunk` is given.
    Raises pytest.skip.Exception, with the reason, when trl or that function (TRL >= 1.16) is missing or its
    signature changed. Targets must lie in [0, V): TRL has no ignore index (its caller drops masked rows first)."""
    missing = module_missing("trl.kernels")
    if missing:
        pytest.skip(missing)
    import trl
    import trl.kernels
    head = getattr(trl.kernels, "ChunkedLogProbFunction", None)
    if head is None:
        pytest.skip(f"trl {trl.__version__} has no trl.kernels.ChunkedLogProbFunction (TRL 1.16 has it)")
    args = list(inspect.signature(head.forward).parameters)[1:]
    if args != TRL_HEAD_ARGS:
        pytest.skip(f"trl {trl.__version__}: ChunkedLogProbFunction.forward takes {args}, expected {TRL_HEAD_ARGS}")
    if vocab_chunk is None:
        from trl.trainer import utils as trl_utils  # its backward imports this module anyway
        vocab_chunk = getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", TRL_VOCAB_CHUNK)
    return lambda x, w, y: head.apply(x, w, None, y, 1.0, vocab_chunk, None, 1.0, ("log_probs",))[0]


def make_inputs(T, D, V, dtype, device, seed=0):
    """x [T, D], W [V, D], targets [T], upstream gradient [T], drawn on `device` (fast for GPU shapes)."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(T, D, generator=g, device=device).to(dtype=dtype).requires_grad_()
    w = (torch.randn(V, D, generator=g, device=device) / D ** 0.5).to(dtype=dtype).requires_grad_()
    y = torch.randint(0, V, (T,), generator=g, device=device)
    upstream = torch.randn(T, generator=g, device=device)
    return x, w, y, upstream


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def make_case(fn, mode, inputs, device):
    """(target, setup) for benchmark.pedantic: setup returns the target's args; target runs the mode."""
    x, w, y, upstream = inputs

    def forward():
        x.grad = w.grad = None
        return (fn(x, w, y).float() * upstream).sum()
    return mode_runner(forward, mode, device)


def mode_runner(forward, mode, device):
    """(target, setup) timing `forward` ("fwd"), `forward().backward()` ("full") or, with the forward as
    untimed setup, the backward alone ("bwd"); every target ends with a device sync."""
    if mode == "fwd":
        def run():
            out = forward()
            _sync(device)
            return out
        return run, None
    if mode == "full":
        def run():
            forward().backward()
            _sync(device)
        return run, None

    def setup():  # bwd: the forward is untimed setup
        loss = forward()
        _sync(device)
        return (loss,), {}

    def run(loss):
        loss.backward()
        _sync(device)
    return run, setup


def check_agrees(fn, inputs, rows=64):
    """Sanity before timing: the provider's log-probs equal the naive ones on a slice of rows."""
    x, w, y, _ = inputs
    with torch.no_grad():
        got = fn(x[:rows], w, y[:rows]).float()
        ref = torch.log_softmax((x[:rows].float() @ w.float().T), -1).gather(-1, y[:rows, None])[:, 0]
    tol = 1e-3 if x.dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def measure_peak(run, setup, device):
    """Peak extra bytes of one run of a (run, setup) case in this process (see module docstring)."""
    args = setup()[0] if setup else ()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = run(*args)
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return peak
    before = _reset_rss_peak()
    out = run(*args)
    peak = _rss_peak() - before
    del out
    return max(peak, 0)


def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_rss_peak():
    """Reset the RSS high-water mark (Linux >= 4.0: write 5 to /proc/self/clear_refs); return current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:  # no reset possible: ru_maxrss below may include peaks from before the op
        import psutil
        return psutil.Process().memory_info().rss


def _rss_peak():
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def peak_extra_bytes(script, case, device):
    """Run the memory measurement: in-process on CUDA, in a fresh subprocess of `script` on CPU."""
    if device == "cuda":
        return None  # measured in-process by the caller, which holds the inputs
    res = subprocess.run([sys.executable, script, "--memory-case", json.dumps(case)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.path.dirname(script)})
    if res.returncode != 0:
        raise RuntimeError(f"memory subprocess failed for {case}:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_bytes"]


def record(benchmark, *, flops, peak, device, **info):
    """Fill benchmark.extra_info with the physics of the case."""
    benchmark.extra_info.update(info)
    benchmark.extra_info["flops"] = flops
    benchmark.extra_info["device"] = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    benchmark.extra_info["threads"] = torch.get_num_threads()
    if peak is not None:
        benchmark.extra_info["peak_extra_mb"] = round(peak / 2 ** 20, 1)
        benchmark.extra_info["memory_method"] = "cuda max_memory_allocated delta" if device == "cuda" \
            else "subprocess VmHWM after - VmRSS before the op"
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.median > 0:
        benchmark.extra_info["tflops"] = float(f"{flops / stats.stats.median / 1e12:.4g}")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_linear_logprobs(benchmark, bench_opts, provider, shape, mode):
    if bench_opts["providers"] is not None and provider not in bench_opts["providers"]:
        pytest.skip("provider not selected")
    T, D, V, dtype_name = shape
    device = bench_opts["device"]
    fn = make_fn(provider, device)
    inputs = make_inputs(T, D, V, getattr(torch, dtype_name), device)
    if provider != "compile":
        check_agrees(fn, inputs)
    benchmark.group = f"linear_logprobs T{T}-D{D}-V{V}-{dtype_name} {mode}"
    run, setup = make_case(fn, mode, inputs, device)
    benchmark.pedantic(run, setup=setup, rounds=bench_opts["rounds"], warmup_rounds=1, iterations=1)
    peak = None
    if bench_opts["memory"]:
        if device == "cuda":
            peak = measure_peak(*make_case(fn, mode, inputs, device), device)
        else:
            del inputs
            peak = peak_extra_bytes(__file__, dict(provider=provider, mode=mode, T=T, D=D, V=V, dtype=dtype_name),
                                    device)
    record(benchmark, flops=FLOPS_PER_TDV[mode] * T * D * V, peak=peak, device=device, provider=provider,
           mode=mode, T=T, D=D, V=V, dtype=dtype_name)


def _memory_main(case):
    device = "cpu"
    fn = make_fn(case["provider"], device)
    inputs = make_inputs(case["T"], case["D"], case["V"], getattr(torch, case["dtype"]), device)
    # warm up lazy library state (thread pools, autograd engine, compilation) outside the measured run
    warm = inputs if case["provider"] == "compile" else make_inputs(8, case["D"], 64, inputs[0].dtype, device)
    make_case(fn, "full", warm, device)[0]()
    del warm
    t0 = time.perf_counter()
    peak = measure_peak(*make_case(fn, case["mode"], inputs, device), device)
    print(json.dumps({"peak_extra_bytes": peak, "seconds": time.perf_counter() - t0}))


def script_args(argv, doc, default_providers, add_options=None):
    """The options shared by this script and bench_bon_loss.py's (`add_options(parser)` adds more)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if add_options is not None:
        add_options(ap)
    ap.add_argument("--shapes", default=None, help="preset or 'T,D,V[,dtype];...' (default: gpu-check on CUDA)")
    ap.add_argument("--providers", default=",".join(default_providers), help="comma list, run in this order")
    ap.add_argument("--modes", default="fwd,bwd,full", help="comma list of fwd, bwd, full")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per case (after one warm-up)")
    ap.add_argument("--out", default=None, help="append one JSON line per case to this file")
    ap.add_argument("--deadline-s", type=float, default=None, help="start no case after this many seconds")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--cpu-smoke", action="store_true", help="the tiny fp32 shape on the CPU, no torch.compile")
    args = ap.parse_args(argv)
    args.device = "cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda"
    # --cpu-smoke always runs the tiny shape, whatever --shapes says
    args.shapes = parse_shapes("tiny" if args.cpu_smoke else args.shapes or ("gpu-check" if args.device == "cuda"
                                                                              else "tiny"))
    args.providers = [p for p in args.providers.split(",") if p]
    args.modes = [m for m in args.modes.split(",") if m]
    if set(args.modes) - set(FLOPS_PER_TDV):
        ap.error(f"--modes: expected a comma list of fwd, bwd, full; got {args.modes}")
    if args.cpu_smoke:
        args.rounds = min(args.rounds, 2)
    return args


def provider_missing(provider, device, cpu_smoke=False):
    """Why `provider` cannot run on `device` (None when it can)."""
    if provider == "compile" and cpu_smoke:
        return "torch.compile left out of --cpu-smoke (its first compile takes ~20 s on a CPU)"
    try:
        make_fn(provider, device)
    except pytest.skip.Exception as e:
        return str(e.msg)
    return None


def head_metrics(run, setup, device, rounds, flops, memory):
    """Median / min ms, TFLOP/s at the median and (CUDA) peak extra MiB of one (run, setup) case."""
    out = summary_ms(time_ms(run, setup, device, rounds=rounds, warmup=1))
    out["tflops"] = float(f"{flops / (out['ms'] / 1e3) / 1e12:.4g}") if out["ms"] > 0 else None
    if memory and device == "cuda":
        out["peak_extra_mb"] = cuda_peak_extra_mb(run, setup)
    return out


def main(argv=None):
    """Time every (provider, shape, mode) case; one JSON line each (see the module docstring). Provider by
    provider, so the time box cuts the last ones (torch.compile), not the second shape."""
    args = script_args(argv, __doc__, SCRIPT_PROVIDERS)
    book = CaseLog(args.out, args.deadline_s)
    inputs = {}  # shape -> (x, w, y, upstream), built once
    for provider in args.providers:
        for T, D, V, dtype_name in args.shapes:
            shape = dict(bench="linear_logprobs", T=T, D=D, V=V, dtype=dtype_name, provider=provider)
            missing = provider_missing(provider, args.device, args.cpu_smoke)
            if missing:
                book.write({**shape, "mode": "*", "status": "skipped", "reason": missing})
                continue
            fn = None
            for mode in args.modes:
                def case():
                    nonlocal fn
                    key = (T, D, V, dtype_name)
                    if key not in inputs:
                        inputs[key] = make_inputs(T, D, V, getattr(torch, dtype_name), args.device)
                    if fn is None:
                        fn = make_fn(provider, args.device)
                        if provider != "compile":
                            check_agrees(fn, inputs[key])
                    flops = FLOPS_PER_TDV[mode] * T * D * V
                    run, setup = make_case(fn, mode, inputs[key], args.device)
                    return {"flops": flops, "flop_count": f"{FLOPS_PER_TDV[mode]}TDV",
                            **head_metrics(run, setup, args.device, args.rounds, flops, not args.no_memory)}
                warmup = COMPILE_WARMUP_S if provider == "compile" and fn is None else 0
                book.run({**shape, "mode": mode}, case, needs_s=warmup)
    return book.exit_code()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-case":
        _memory_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
