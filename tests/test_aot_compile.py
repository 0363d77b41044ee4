"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed): shared memory within the
architecture's limit, 16-bit dots on tensor cores, no register spills where a GPU run would use the config.

The check (`python -m bonfast.kernels_aot`) runs in a subprocess with TRITON_INTERPRET unset: Triton reads it
when `@triton.jit` decorates, and this test session's kernels are interpreted on a CPU-only machine.
"""
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bonfast.kernels_aot import ptxas_path

ROOT = Path(__file__).resolve().parents[1]
AOT_KEY = pytest.StashKey()  # the background check started at collection (tests/conftest.py)


AVAILABLE = sys.platform.startswith("linux") and ptxas_path() is not None


def start_check():
    """Start `python -m bonfast.kernels_aot` in the background (one target at a time, one core): tests/conftest.py
    calls this when the test is collected, so the compiles overlap the rest of the suite (which runs on one
    thread). Output goes to a temporary file; the process has its own session so it can be killed by group."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("TRITON_CACHE_DIR", None)  # the tool compiles into a fresh temporary cache: a real compile every run
    log = tempfile.TemporaryFile(mode="w+")
    # niced: it fills the core the single-threaded suite leaves idle, and yields to tests that start subprocesses
    proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-m", "bonfast.kernels_aot", "--quiet", "--jobs", "1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def stop_check(started):
    """Kill a started check that is still running (its own process group only)."""
    proc, log = started
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.mark.skipif(not AVAILABLE, reason="needs triton's NVIDIA backend and its bundled ptxas (Linux x86_64)")
def test_every_kernel_compiles_for_sm80_and_sm90(request):
    started = request.config.stash.get(AOT_KEY, None) or start_check()
    proc, log = started
    try:
        proc.wait(timeout=1200)
        log.seek(0)
        output = log.read()
    finally:
        stop_check(started)
    summary = [line for line in output.splitlines() if line.startswith(("kernels_aot:", "FAIL"))]
    assert proc.returncode == 0, "\n".join(summary) or output[-3000:]
    assert any("0 failures" in line for line in summary), output[-3000:]


def test_default_set_has_every_launcher_variant():
    """The default set (what CI compiles) holds every kernel variant a launcher can pick, not only the first case
    per kernel and dtype: the dX and split-K GEMMs, the entropy backward, head-dim-128 attention blocks, the
    ragged and T = 1 shapes, and unaligned [T] vectors; no two selected cases compile the same code."""
    from bonfast.kernels_aot import UNALIGNED, collect_cases, default_selection, specialisation
    picked = default_selection(collect_cases()[0])
    labels = {(c["label"], getattr(c["kernel"], "fn", c["kernel"]).__name__) for c in picked}
    text = " | ".join(f"{k}: {lab}" for lab, k in labels)
    for needle in ("bf16 dX M=4096", "bf16 dX split-K", "bf16 dW M=3840", "bf16 T=4096 D=4096 Vc=3840 entropy",
                   "_linear_logprobs_bwd_dw_kernel: bf16 T=4096 D=4096 V=128256 entropy", "bf16 T=1 D=896",
                   "bf16 T=777 D=896 V=50257", "bf16 Llama-3-8B n=64", "fp16 Llama-3-8B n=64", "fp16 dz C=777"):
        assert needle in text, needle
    assert any(isinstance(a, tuple) and a[1] == UNALIGNED for c in picked for a in c["args"])
    keys = [specialisation(c) for c in picked]
    assert len(keys) == len(set(keys))
