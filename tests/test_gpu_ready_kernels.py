"""CUDA-path properties a CPU can check (issue 26): every Triton launch runs under a guard that makes its tensors'
device current; the fused BoN loss's gemm strategy does 6 TDV of GEMM work (8 for linear_logprobs); the trainer's
log-probs equal the sampler's in bf16 (fp32 logits on every strategy); the GEMM autotuner copies its output only
when a trial reads it; SDPA takes GQA natively on CUDA only where its flash kernel can."""
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bonfast.kernels._launch as launch
import bonfast.kernels.logprob_fused as fused
import bonfast.kernels.logprob_gemm as gemm
from bonfast import ops
from bonfast.attention import sdpa_native_gqa
from bonfast.precision import resolve

KERNELS = ["_logit_stats_kernel", "_dz_kernel", "_fused_dz_kernel", "_mm_kernel", "_linear_logprobs_fwd_kernel",
           "_linear_logprobs_bwd_dx_kernel", "_linear_logprobs_bwd_dw_kernel", "_bon_loss_fwd_kernel",
           "_prefix_attention_fwd_kernel", "_suffix_attention_merge_kernel"]


def _head_inputs(T, D, V, dtype, device, scale=1.0):
    x = torch.randn(T, D).to(device, dtype)
    w = (scale * torch.randn(V, D) / D ** 0.5).to(device, dtype)
    y = torch.randint(0, V, (T,), device=device)
    return x, w, y


def test_every_triton_launch_is_inside_a_guard_for_its_tensors_device(kernel_device, monkeypatch):
    """Triton launches on the current CUDA device, not the tensors' (cuda:1 tensors with cuda:0 current would give
    device-0 kernels pointers into device 1): each launch must run inside `on_device` entered with the device
    of the tensors it is given."""
    launches = []
    kernel_type = type(gemm._dz_kernel)  # JITFunction, or InterpretedFunction under the interpreter
    run = kernel_type.run

    def spy(self, *args, **kwargs):
        devices = {a.device for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)}
        launches.append((self.__name__ if hasattr(self, "__name__") else self.fn.__name__,
                         launch.ACTIVE[-1] if launch.ACTIVE else None, devices))
        return run(self, *args, **kwargs)

    monkeypatch.setattr(kernel_type, "run", spy)
    monkeypatch.setattr(gemm, "_MIN_ROWS", 16)
    monkeypatch.setattr(fused, "_MIN_COLS", 128)
    monkeypatch.setattr(fused, "_SPLIT_MIN_K", 16)
    monkeypatch.setattr(gemm, "_splits", lambda C, V, device: 2)
    dev = kernel_device
    x, w, y = _head_inputs(20, 32, 300, torch.float32, dev)
    si = torch.randint(0, 4, (20,), device=dev)
    wts = torch.randn(4, device=dev)
    for strategy in ("gemm", "fused", "tiles"):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        logp, ent = ops.linear_logprobs(a, b, y, impl="triton", strategy=strategy, memory_budget=1,
                                        return_entropy=True)
        loss = ops.fused_bon_loss(a, b, y, si, wts, normaliser=3.0, impl="triton", strategy=strategy,
                                  memory_budget=1)
        (logp.sum() + ent.sum() + loss).backward()
    ops.bon_loss(logp.detach(), si, wts, normaliser=2.0, impl="triton")
    fused.matmul_into(torch.zeros(40, 24, device=dev), torch.randn(40, 64, device=dev),
                      torch.randn(64, 24, device=dev), accumulate=True)
    G, n, Hq, Hkv, Dh, P, t = 2, 3, 4, 2, 16, 9, 5
    ops.prefix_attention(torch.randn(G, n, Hq, Dh, device=dev), torch.randn(G, Hkv, P, Dh, device=dev),
                         torch.randn(G, Hkv, P, Dh, device=dev), torch.tensor([9, 4], device=dev),
                         torch.randn(G, n, Hkv, t, Dh, device=dev), torch.randn(G, n, Hkv, t, Dh, device=dev),
                         impl="triton")
    assert {name for name, _, _ in launches} == set(KERNELS)
    for name, guard, devices in launches:
        assert guard is not None, f"{name} launched outside a device guard"
        assert devices == {guard}, f"{name}: guard entered with {guard}, tensors on {devices}"


class _GemmFlops(TorchDispatchMode):
    """Counts 2 M N K over every matrix product that passes through the dispatcher."""

    def __init__(self):
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "addmm_", "matmul", "bmm"):
            a, b = (args[0], args[1]) if name in ("mm", "bmm") else (args[1], args[2])
            self.flops += 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if name == "bmm" else 1)
        return func(*args, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gemm_strategy_work_is_6_tdv_for_the_loss_and_8_for_logprobs(dtype, kernel_device, monkeypatch):
    """The fused BoN loss (gemm strategy) knows dL/dlogp in the forward: one logits GEMM per chunk, then dX and dW
    = 6 TDV (it recomputed the logits, 8 TDV, before). linear_logprobs: forward 2 + backward 6 = 8 TDV."""
    monkeypatch.setattr(gemm, "_MIN_ROWS", 16)
    T, D, V = 40, 24, 200
    tdv = T * D * V
    x, w, y = _head_inputs(T, D, V, dtype, kernel_device)
    si = torch.randint(0, 4, (T,), device=kernel_device)
    wts = torch.randn(4, device=kernel_device)
    a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
    with _GemmFlops() as count:
        loss = gemm.fused_bon_loss_sum_gemm(a, b, y, si, wts, memory_budget=1)
        loss.backward()
    assert count.flops == 6 * tdv
    a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
    with _GemmFlops() as count:
        logp, _, _ = gemm.linear_logprobs_gemm(a, b, y, memory_budget=1)
        logp.sum().backward()
    assert count.flops == 8 * tdv


@pytest.mark.parametrize("strategy", ["gemm", "fused", "tiles"])
def test_trainer_logprobs_equal_the_samplers_in_bf16(strategy, kernel_device, monkeypatch):
    """The sampler scores a token from fp32 logits of bf16 hidden states and weights (Precision.lm_head); the
    trainer's loss head must give the same log-prob. Logits of ~25 rounded to bf16 (ulp 0.125) would move it by
    up to ~0.06 nat; fp32 logits agree to fp32 summation order."""
    monkeypatch.setattr(gemm, "_MIN_ROWS", 16)
    T, D, V = 24, 64, 700
    x, w, y = _head_inputs(T, D, V, torch.bfloat16, kernel_device, scale=6.0)  # logits with |z| up to ~25
    head = resolve("bf16", "cpu").lm_head(w.float().cpu())
    z = head(x.cpu())  # (T, V) fp32: the sampler's logits
    assert z.abs().max() > 15
    sampler = torch.log_softmax(z / 0.7, -1).gather(-1, y.cpu()[:, None])[:, 0]
    trainer = ops.linear_logprobs(x, w, y, temperature=0.7, impl="triton", strategy=strategy, memory_budget=1)
    bf16_logits = torch.log_softmax((x.cpu() @ w.cpu().T).float() / 0.7, -1).gather(-1, y.cpu()[:, None])[:, 0]
    assert (bf16_logits - sampler).abs().max() > 1e-2  # what rounded logits would cost: the test can see it
    assert (trainer.cpu() - sampler).abs().max() <= 2e-4


def test_trainer_torch_path_equals_the_sampler_in_bf16():
    T, D, V = 24, 64, 700
    x, w, y = _head_inputs(T, D, V, torch.bfloat16, "cpu", scale=6.0)
    z = resolve("bf16", "cpu").lm_head(w.float())(x)
    sampler = torch.log_softmax(z, -1).gather(-1, y[:, None])[:, 0]
    assert (ops.linear_logprobs(x, w, y, impl="torch") - sampler).abs().max() <= 2e-4


def test_mm_autotune_copies_c_only_when_a_trial_reads_it():
    """Triton's restore_value cloned C before every trial launch; the hooks copy it once per tuning, and only for
    an accumulating GEMM without split-K (the other launches only write C, or write partials)."""
    assert fused._mm_kernel.pre_hook is fused._save_c and fused._mm_kernel.post_hook is fused._restore_c
    c = torch.ones(4, 3)
    for acc, split in ((False, False), (True, True)):
        fused._save_c({"C_ptr": c, "ACCUMULATE": acc, "SPLIT_K": split})
        assert not fused._C_SAVED
    nargs = {"C_ptr": c, "ACCUMULATE": True, "SPLIT_K": False}
    fused._save_c(nargs)
    saved = fused._C_SAVED["c"]
    c += 5  # a trial launch accumulates into C
    fused._restore_c(nargs)
    fused._save_c(nargs)  # the next trial: no second copy
    assert fused._C_SAVED["c"] is saved and torch.equal(c, torch.ones(4, 3))
    fused._save_c(nargs, reset_only=True)  # tuning over
    assert not fused._C_SAVED


def test_sdpa_takes_gqa_natively_on_cuda_only_where_flash_can():
    def q(dtype=torch.bfloat16, Dh=64, cuda=True):
        return types.SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(2, 5, 8, Dh))
    assert sdpa_native_gqa(q(torch.float32, cuda=False), has_mask=True)  # CPU: always native
    assert sdpa_native_gqa(q(), has_mask=False)
    assert not sdpa_native_gqa(q(), has_mask=True)  # masked: memory-efficient kernel, no GQA
    assert not sdpa_native_gqa(q(torch.float32), has_mask=False)  # fp32: no flash
    assert not sdpa_native_gqa(q(Dh=512), has_mask=False)  # head dim > 256: no flash


@pytest.mark.cuda
def test_kernels_on_a_second_gpu_with_the_first_current():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    torch.cuda.set_device(0)
    x, w, y = _head_inputs(300, 256, 5000, torch.bfloat16, "cuda:0")
    outs = {}
    for dev in ("cuda:0", "cuda:1"):
        for strategy in ("gemm", "fused", "tiles"):
            a, b = x.to(dev).requires_grad_(), w.to(dev).requires_grad_()
            logp = ops.linear_logprobs(a, b, y.to(dev), impl="triton", strategy=strategy)
            dx, dw = torch.autograd.grad(logp.sum(), (a, b))
            outs[dev, strategy] = [t.float().cpu() for t in (logp, dx, dw)]
    for strategy in ("gemm", "fused", "tiles"):
        for got, exp in zip(outs["cuda:1", strategy], outs["cuda:0", strategy]):
            torch.testing.assert_close(got, exp, rtol=1e-2, atol=1e-2)
