"""Shared options for the pytest-benchmark suites (not part of the default test run: testpaths = tests).

    pytest benches/bench_linear_logprobs.py                       # small CPU set, every provider and mode
    pytest benches/bench_linear_logprobs.py --shapes cpu-issue    # T=4096/8192/16384, D=512, V=50257 fp32
    pytest benches/ --shapes gpu --benchmark-json out.json        # the GPU set (bf16)
    BONFAST_BENCH_SHAPES="2048,256,32000,float32" pytest benches/bench_bon_loss.py

Options: --shapes (a preset name or "T,D,V[,dtype];..."), --bench-rounds (timed rounds per case),
--providers (comma list, default all available), --modes (comma list of fwd,bwd,full), --no-memory.
"""
import os

import pytest
import torch
from benchkit import SHAPE_PRESETS, ShapeError
from benchkit import parse_shapes as _parse_shapes


def parse_shapes(spec):
    """A preset name, or "T,D,V[,dtype];T,D,V[,dtype]" -> [(T, D, V, dtype_name)] (benchkit.parse_shapes)."""
    try:
        return _parse_shapes(spec)
    except ShapeError as e:
        raise pytest.UsageError(str(e)) from None


def pytest_addoption(parser):
    group = parser.getgroup("bonfast benches")
    group.addoption("--shapes", default=None, help=f"preset ({', '.join(SHAPE_PRESETS)}) or 'T,D,V[,dtype];...'")
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per case (after one warm-up)")
    group.addoption("--providers", default=None, help="comma list of providers to run (default: all available)")
    group.addoption("--modes", default="fwd,bwd,full", help="comma list of fwd, bwd, full")
    group.addoption("--no-memory", action="store_true", help="skip the peak-memory measurement")


def _default_shapes():
    return "gpu" if torch.cuda.is_available() else "cpu-small"


def pytest_generate_tests(metafunc):
    cfg = metafunc.config
    if "shape" in metafunc.fixturenames:
        spec = cfg.getoption("--shapes") or os.environ.get("BONFAST_BENCH_SHAPES") or _default_shapes()
        shapes = parse_shapes(spec)
        metafunc.parametrize("shape", shapes, ids=[f"T{t}-D{d}-V{v}-{dt}" for t, d, v, dt in shapes])
    if "mode" in metafunc.fixturenames:
        modes = [m for m in cfg.getoption("--modes").split(",") if m]
        bad = set(modes) - {"fwd", "bwd", "full"}
        if bad:
            raise pytest.UsageError(f"--modes: expected a comma list of fwd, bwd, full; got {sorted(bad)}")
        metafunc.parametrize("mode", modes)


@pytest.fixture
def bench_opts(request):
    cfg = request.config
    providers = cfg.getoption("--providers")
    return {
        "rounds": cfg.getoption("--bench-rounds"),
        "providers": set(providers.split(",")) if providers else None,
        "memory": not cfg.getoption("--no-memory"),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
