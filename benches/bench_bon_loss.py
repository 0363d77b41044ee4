"""Benchmark: the BoN loss head, hidden [T, D] + LM head [V, D] + per-sample weights -> scalar loss.

Providers (grouped by shape, mode and loss form so ratios print together):
    naive          logits -> log_softmax -> gather -> weighted reduction (bonfast.reference.bon_loss_ref)
    torch_lce      -F.linear_cross_entropy(reduction="none", options=LinearCrossEntropyOptions()) -> same reduction
    bonfast_torch  bonfast.ops.fused_bon_loss(impl="torch")
    compile        torch.compile(naive)
    triton         bonfast.ops.fused_bon_loss(impl="triton")      (CUDA only; strategy "auto")
    triton_gemm    the same with strategy="gemm": gradients computed in the forward (6 TDV of work in all)
    triton_fused   the same with strategy="fused": the memory-floor backward (8 TDV)
    triton_tiles   the same with strategy="tiles": the first kernels (10 TDV), for comparison
TFLOP/s are counted at 8 TDV for "full" whatever the strategy does, so they compare time at equal work; the gemm
strategy's "bwd" mode is nearly free because its backward only scales gradients made in the forward.
Forms: plain (w * logp) and clipped_k3 (PPO-clipped ratio against old_logp + k3 KL against ref_logp).
A second test times the reduction alone (bon_loss on a [T] vector): torch vs triton.
Token layout: 64 samples of equal length T / 64, weights [8, 8] float64, normaliser = T (a constant).
Memory and FLOP accounting as in bench_linear_logprobs.py (same helpers).

As a script (what benches/gpu_check.py runs), one JSON line per case, each case within a time box:

    python benches/bench_bon_loss.py --shapes "8192,2048,151936,bfloat16" --out cases.jsonl --deadline-s 40
    python benches/bench_bon_loss.py --cpu-smoke                 # tiny fp32 shape on the CPU, seconds
"""
import json
import sys

import pytest
import torch
import torch.nn.functional as F
from bench_linear_logprobs import (
    COMPILE_WARMUP_S,
    _sync,
    head_metrics,
    make_inputs,
    measure_peak,
    mode_runner,
    peak_extra_bytes,
    record,
    script_args,
)
from benchkit import CaseLog, torch_lce_missing

from bonfast.ops import bon_loss, fused_bon_loss
from bonfast.reference import bon_loss_ref

HEAD_PROVIDERS = ["naive", "torch_lce", "bonfast_torch", "compile", "triton", "triton_gemm", "triton_fused",
                  "triton_tiles"]
SCRIPT_PROVIDERS = ["triton", "triton_gemm", "triton_fused", "triton_tiles", "naive", "torch_lce", "bonfast_torch",
                    "compile"]  # script order: compile last
FORMS = ["plain", "clipped_k3"]
FLOPS_PER_TDV = {"fwd": 2, "bwd": 6, "full": 8}
SAMPLES = 64


def loss_inputs(T, device, seed=1):
    g = torch.Generator(device="cpu").manual_seed(seed)
    sample_index = (torch.arange(T) * SAMPLES // T).to(device)
    weights = torch.randn(8, SAMPLES // 8, generator=g, dtype=torch.float64).to(device)
    old = (-torch.rand(T, generator=g) * 8 - 6).to(device)
    ref = (old + 0.1 * torch.randn(T, generator=g).to(device))
    return sample_index, weights, old, ref


def form_kwargs(form, old, ref):
    return {} if form == "plain" else dict(old_logp=old, ref_logp=ref, kl_coef=0.05, clip_eps=0.2)


def make_head_fn(provider, device, form, extra):
    """(x, w, y) -> scalar loss for `provider`."""
    si, weights, old, ref = extra
    kw = form_kwargs(form, old, ref)
    normaliser = float(si.shape[0])

    def naive(x, w, y):
        logp = torch.log_softmax((x @ w.T).float(), dim=-1).gather(-1, y[:, None])[:, 0]
        return bon_loss_ref(logp, si, weights.float(), normaliser=normaliser, **kw)

    if provider == "naive":
        return naive
    if provider == "torch_lce":
        missing = torch_lce_missing()
        if missing:
            pytest.skip(missing)
        opts = torch.nn.LinearCrossEntropyOptions()

        def lce(x, w, y):
            logp = -F.linear_cross_entropy(x, w, y, reduction="none", ignore_index=-100, options=opts).float()
            return bon_loss_ref(logp, si, weights.float(), normaliser=normaliser, **kw)
        return lce
    if provider == "bonfast_torch":
        return lambda x, w, y: fused_bon_loss(x, w, y, si, weights, normaliser=normaliser, impl="torch", **kw)
    if provider == "compile":
        return torch.compile(naive)
    if provider == "triton" or provider.startswith("triton_"):
        if device != "cuda":
            pytest.skip("triton needs CUDA")
        strategy = provider.removeprefix("triton_") if provider != "triton" else "auto"
        return lambda x, w, y: fused_bon_loss(x, w, y, si, weights, normaliser=normaliser, impl="triton",
                                              strategy=strategy, **kw)
    raise ValueError(f"unknown provider {provider!r}; expected one of {HEAD_PROVIDERS}")


def make_head_case(fn, mode, inputs, device):
    x, w, y, _ = inputs

    def forward():
        x.grad = w.grad = None
        return fn(x, w, y)

    return mode_runner(forward, mode, device)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("provider", HEAD_PROVIDERS)
def test_bon_loss_head(benchmark, bench_opts, provider, form, shape, mode):
    if bench_opts["providers"] is not None and provider not in bench_opts["providers"]:
        pytest.skip("provider not selected")
    T, D, V, dtype_name = shape
    device = bench_opts["device"]
    extra = loss_inputs(T, device)
    fn = make_head_fn(provider, device, form, extra)
    inputs = make_inputs(T, D, V, getattr(torch, dtype_name), device)
    if provider != "naive":  # sanity before timing: same loss as the naive head
        with torch.no_grad():
            got, ref = fn(*inputs[:3]), make_head_fn("naive", device, form, extra)(*inputs[:3])
        torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=1e-3)
    benchmark.group = f"bon_loss_head {form} T{T}-D{D}-V{V}-{dtype_name} {mode}"
    run, setup = make_head_case(fn, mode, inputs, device)
    benchmark.pedantic(run, setup=setup, rounds=bench_opts["rounds"], warmup_rounds=1, iterations=1)
    peak = None
    if bench_opts["memory"]:
        if device == "cuda":
            peak = measure_peak(*make_head_case(fn, mode, inputs, device), device)
        else:
            del inputs
            peak = peak_extra_bytes(__file__, dict(provider=provider, form=form, mode=mode, T=T, D=D, V=V,
                                                   dtype=dtype_name), device)
    record(benchmark, flops=FLOPS_PER_TDV[mode] * T * D * V, peak=peak, device=device, provider=provider,
           form=form, mode=mode, T=T, D=D, V=V, dtype=dtype_name)


@pytest.mark.parametrize("provider", ["torch", "triton"])
@pytest.mark.parametrize("form", FORMS)
def test_bon_loss_reduction(benchmark, bench_opts, provider, form):
    """The reduction alone, on 2^20 tokens: it should be a negligible part of a step."""
    device = bench_opts["device"]
    if provider == "triton" and device != "cuda":
        pytest.skip("triton needs CUDA")
    T = 1 << 20
    si, weights, old, ref = loss_inputs(T, device)
    logp = (old + 0.05).requires_grad_()
    kw = form_kwargs(form, old, ref)

    def run():
        logp.grad = None
        bon_loss(logp, si, weights, normaliser=float(T), impl=provider, **kw).backward()
        _sync(device)

    benchmark.group = f"bon_loss_reduction {form} T{T}"
    benchmark.pedantic(run, rounds=max(5, bench_opts["rounds"]), warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(provider=provider, form=form, T=T, bytes_moved=T * (4 * 5 + 8))


def _memory_main(case):
    device = "cpu"
    extra = loss_inputs(case["T"], device)
    fn = make_head_fn(case["provider"], device, case["form"], extra)
    inputs = make_inputs(case["T"], case["D"], case["V"], getattr(torch, case["dtype"]), device)
    if case["provider"] == "compile":
        make_head_case(fn, "full", inputs, device)[0]()
    else:  # warm up lazy library state on a tiny shape
        small = loss_inputs(64, device)
        make_head_case(make_head_fn(case["provider"], device, case["form"], small), "full",
                       make_inputs(64, case["D"], 64, inputs[0].dtype, device), device)[0]()
    peak = measure_peak(*make_head_case(fn, case["mode"], inputs, device), device)
    print(json.dumps({"peak_extra_bytes": peak}))


def main(argv=None):
    """Time every (provider, shape, form, mode) case of the loss head; one JSON line each."""
    args = script_args(argv, __doc__, SCRIPT_PROVIDERS, lambda ap: ap.add_argument(
        "--forms", default=",".join(FORMS), help=f"comma list of {', '.join(FORMS)}"))
    forms = [f for f in args.forms.split(",") if f]
    if set(forms) - set(FORMS):
        sys.exit(f"--forms: expected a comma list of {', '.join(FORMS)}; got {forms}")
    book = CaseLog(args.out, args.deadline_s)
    inputs = {}  # shape -> (x, w, y, upstream) and the loss inputs, built once
    for provider in args.providers:
        for T, D, V, dtype_name in args.shapes:
            for form in forms:
                fields = dict(bench="bon_loss_head", form=form, T=T, D=D, V=V, dtype=dtype_name, provider=provider)
                if provider == "compile" and args.cpu_smoke:
                    book.write({**fields, "mode": "*", "status": "skipped",
                                "reason": "torch.compile left out of --cpu-smoke (its first compile takes ~20 s)"})
                    continue
                fn = None
                for mode in args.modes:
                    def case():
                        nonlocal fn
                        key = (T, D, V, dtype_name)
                        if key not in inputs:
                            inputs[key] = (make_inputs(T, D, V, getattr(torch, dtype_name), args.device),
                                           loss_inputs(T, args.device))
                        head, extra = inputs[key]
                        if fn is None:
                            fn = make_head_fn(provider, args.device, form, extra)
                            if provider not in ("naive", "compile"):  # sanity before timing: the naive loss
                                with torch.no_grad():
                                    got = fn(*head[:3])
                                    ref = make_head_fn("naive", args.device, form, extra)(*head[:3])
                                torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=1e-3)
                        flops = FLOPS_PER_TDV[mode] * T * D * V
                        run, setup = make_head_case(fn, mode, head, args.device)
                        return {"flops": flops, "flop_count": f"{FLOPS_PER_TDV[mode]}TDV",
                                **head_metrics(run, setup, args.device, args.rounds, flops, not args.no_memory)}
                    warmup = COMPILE_WARMUP_S if provider == "compile" and fn is None else 0
                    record_ = book.run({**fields, "mode": mode}, case, needs_s=warmup)
                    if record_["status"] == "skipped" and fn is None:
                        break  # the provider is unavailable here (or out of time): one record says why
    return book.exit_code()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-case":
        _memory_main(json.loads(sys.argv[2]))
    else:
        sys.exit(main())
