"""Shared fixtures. The tolerance table lives in `precision.py` (importable from every test module).

Tests marked `@pytest.mark.cuda` are skipped at collection when no CUDA device is present. Kernel tests take
their tensors' device from the `device` / `kernel_device` fixtures: CPU under the Triton interpreter, CUDA with
compiled kernels, and a clean skip of impl="triton" when neither is available (TRITON_INTERPRET=0 without CUDA).
"""
import os

import pytest
import torch
from precision import triton_device


def pytest_collection_modifyitems(config, items):
    _start_aot_check(config, items)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def _start_aot_check(config, items):
    """The ahead-of-time compile check (tests/test_aot_compile.py) takes a minute or two of one core: start it
    now in the background and run its test last, so it overlaps the rest of the suite."""
    aot = [item for item in items if item.nodeid.endswith("test_every_kernel_compiles_for_sm80_and_sm90")]
    if not aot:
        return
    items[:] = [item for item in items if item not in aot] + aot
    import test_aot_compile
    if test_aot_compile.AVAILABLE:
        config.stash[test_aot_compile.AOT_KEY] = test_aot_compile.start_check()


def pytest_unconfigure(config):
    import sys
    module = sys.modules.get("test_aot_compile")
    if module is not None and module.AOT_KEY in config.stash:
        module.stop_check(config.stash[module.AOT_KEY])  # interrupted sessions: kill only what we started


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One intra-op thread: the suite's tiny shapes gain nothing from threads, and lose a lot to them on a
    shared 2-core machine (several times slower under load). Subprocesses a test starts get OMP_NUM_THREADS=1."""
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = omp


@pytest.fixture
def kernel_device():
    """The device for impl="triton" tensors (see `precision.triton_device`); skips the test when there is none."""
    dev = triton_device()
    if dev is None:
        pytest.skip("impl='triton' needs CUDA or the Triton interpreter (TRITON_INTERPRET=1)")
    return dev


@pytest.fixture
def device(request):
    """The device for a test parametrised by `impl`: `kernel_device` for "triton", the CPU for the torch paths."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "triton":
        return request.getfixturevalue("kernel_device")
    return torch.device("cpu")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _torch_tiled(request, monkeypatch):
    """impl = "torch-tiled": tiles of 7 token rows x 64 vocabulary columns on the torch loss-head path."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("impl") == "torch-tiled":
        import bonfast.ops
        monkeypatch.setattr(bonfast.ops, "_TORCH_CHUNK_ELEMENTS", 7 * 64)
        monkeypatch.setattr(bonfast.ops, "_TORCH_MAX_ROWS", 7)
