"""Every Triton kernel compiles ahead of time for sm_80 and sm_90 (no GPU needed): shared memory within the
architecture's limit, 16-bit dots on tensor cores, no register spills where a GPU run would use the config.

The check (`python -m bonfast.kernels_aot`) runs in a subprocess with TRITON_INTERPRET unset: Triton reads it
when `@triton.jit` decorates, and this test session's kernels are interpreted on a CPU-only machine.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bonfast.kernels_aot import ptxas_path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not sys.platform.startswith("linux") or ptxas_path() is None,
                    reason="needs triton's NVIDIA backend and its bundled ptxas (Linux x86_64)")
def test_every_kernel_compiles_for_sm80_and_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.pop("TRITON_CACHE_DIR", None)  # the tool compiles into a fresh temporary cache: a real compile every run
    proc = subprocess.run([sys.executable, "-m", "bonfast.kernels_aot", "--quiet"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    summary = [line for line in proc.stderr.splitlines() if line.startswith(("kernels_aot:", "FAIL"))]
    assert proc.returncode == 0, "\n".join(summary) or proc.stderr[-3000:]
    assert any("0 failures" in line for line in summary), proc.stderr[-3000:]
