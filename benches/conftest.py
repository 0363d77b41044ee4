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

SHAPE_PRESETS = {
    "cpu-small": [(1024, 256, 8191, "float32"), (2048, 512, 32000, "float32")],
    "cpu-issue": [(4096, 512, 50257, "float32"), (8192, 512, 50257, "float32"), (16384, 512, 50257, "float32")],
    "gpu": [(16384, 4096, 128256, "bfloat16"), (16384, 1536, 151936, "bfloat16"), (8192, 2304, 256000, "bfloat16")],
    "tiny": [(64, 32, 301, "float32")],  # smoke test of the harness itself
}


def parse_shapes(spec):
    """A preset name, or "T,D,V[,dtype];T,D,V[,dtype]" -> [(T, D, V, dtype_name)]."""
    if spec in SHAPE_PRESETS:
        return SHAPE_PRESETS[spec]
    shapes = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        parts = [p.strip() for p in item.split(",")]
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[:3]):
            raise pytest.UsageError(f"--shapes: expected a preset {sorted(SHAPE_PRESETS)} or 'T,D,V[,dtype];...'; "
                                    f"got {item!r}")
        dtype = parts[3] if len(parts) == 4 else "float32"
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise pytest.UsageError(f"--shapes: unknown dtype {dtype!r}")
        shapes.append((int(parts[0]), int(parts[1]), int(parts[2]), dtype))
    return shapes


def pytest_addoption(parser):
    group = parser.getgroup("bonfast benches")
    group.addoption("--shapes", default=None, help="preset (cpu-small, cpu-issue, gpu, tiny) or 'T,D,V[,dtype];...'")
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
