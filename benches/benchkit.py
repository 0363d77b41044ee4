"""Helpers shared by the bench scripts when `benches/gpu_check.py` runs them: one JSON line per case, a time
box, CUDA-event timing, peak memory, and why an optional provider cannot run here.

    book = CaseLog(out_path, deadline_s=60)       # out_path None: print the records only
    book.run({"bench": "x", "provider": "triton", "mode": "fwd"}, lambda: {"ms": 1.0})
    sys.exit(book.exit_code())                    # 1 when a case failed (skipped cases are not failures)

Every record is flushed as soon as its case ends, so a run that is killed at its time box still leaves the
cases it finished. A case raising `pytest.skip.Exception` (or `Unavailable`) is recorded as skipped with the
reason; any other exception as failed, with the error's last line. Once `deadline_s` seconds have passed since
the CaseLog was made (or a case's expected duration would pass that point), further cases are recorded as skipped
("time box reached") without running.
"""
from __future__ import annotations

import inspect
import json
import sys
import time
import traceback

import torch

SHAPE_PRESETS = {
    "cpu-small": [(1024, 256, 8191, "float32"), (2048, 512, 32000, "float32")],
    "cpu-issue": [(4096, 512, 50257, "float32"), (8192, 512, 50257, "float32"), (16384, 512, 50257, "float32")],
    "gpu": [(16384, 4096, 128256, "bfloat16"), (16384, 1536, 151936, "bfloat16"), (8192, 2304, 256000, "bfloat16")],
    "gpu-check": [(8192, 4096, 128256, "bfloat16"), (8192, 2048, 151936, "bfloat16")],  # gpu_check.py's time box
    "tiny": [(64, 32, 301, "float32")],  # smoke test of the harness itself
}


class ShapeError(ValueError):
    pass


def parse_shapes(spec: str) -> list[tuple[int, int, int, str]]:
    """A preset name, or "T,D,V[,dtype];T,D,V[,dtype]" -> [(T, D, V, dtype_name)]."""
    if spec in SHAPE_PRESETS:
        return SHAPE_PRESETS[spec]
    shapes = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        parts = [p.strip() for p in item.split(",")]
        if len(parts) not in (3, 4) or not all(p.isdigit() for p in parts[:3]):
            raise ShapeError(f"--shapes: expected a preset {sorted(SHAPE_PRESETS)} or 'T,D,V[,dtype];...'; "
                             f"got {item!r}")
        dtype = parts[3] if len(parts) == 4 else "float32"
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ShapeError(f"--shapes: unknown dtype {dtype!r}")
        shapes.append((int(parts[0]), int(parts[1]), int(parts[2]), dtype))
    return shapes


class Unavailable(Exception):
    """A provider or case that cannot run here; the message says why."""


def _skip_types():
    try:
        import pytest
        return (Unavailable, pytest.skip.Exception)
    except ImportError:
        return (Unavailable,)


class CaseLog:
    """Run bench cases one at a time and write one JSON line per case (see the module docstring)."""

    def __init__(self, path: str | None = None, deadline_s: float | None = None):
        self.path = path
        self.deadline_s = deadline_s
        self.start = time.monotonic()
        self.records: list[dict] = []
        if path:
            open(path, "a").close()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def write(self, record: dict) -> dict:
        self.records.append(record)
        line = json.dumps(record, default=str)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        return record

    def run(self, fields: dict, fn, needs_s: float = 0.0) -> dict:
        """Run `fn() -> dict of measurements` for the case described by `fields`; record and return it.
        `needs_s`: the case's expected seconds (e.g. a torch.compile warm-up); it is skipped when they would
        run past the deadline."""
        if self.deadline_s is not None and self.elapsed() + needs_s > self.deadline_s:
            why = f"needs ~{needs_s:.0f} s, " if needs_s else ""
            return self.write({**fields, "status": "skipped", "reason": f"time box reached ({why}"
                               f"{self.elapsed():.0f} s of {self.deadline_s:.0f} s used)"})
        t0 = time.monotonic()
        try:
            out = fn() or {}
            record = {**fields, "status": "ok", **out}
        except _skip_types() as e:
            record = {**fields, "status": "skipped", "reason": str(getattr(e, "msg", None) or e)}
        except Exception as e:  # a failed case must not stop the others
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            record = {**fields, "status": "failed", "error": last[:500]}
            traceback.print_exc(file=sys.stderr)
        record["case_s"] = round(time.monotonic() - t0, 2)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self.write(record)

    def exit_code(self) -> int:
        return 1 if any(r["status"] == "failed" for r in self.records) else 0


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(run, setup=None, device="cpu", rounds=5, warmup=1) -> list[float]:
    """Milliseconds of `run(*setup_args)` per round (setup untimed); CUDA events on CUDA, perf_counter on CPU."""
    cuda = torch.device(device).type == "cuda"
    times = []
    for i in range(warmup + rounds):
        args = setup()[0] if setup else ()
        sync(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(*args)
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            t0 = time.perf_counter()
            run(*args)
            ms = (time.perf_counter() - t0) * 1e3
        if i >= warmup:
            times.append(ms)
        del args
    return times


def summary_ms(times: list[float]) -> dict:
    s = sorted(times)
    return {"ms": round(s[len(s) // 2], 4), "ms_min": round(s[0], 4), "rounds": len(s)}


def cuda_peak_extra_mb(run, setup=None) -> float:
    """CUDA: max_memory_allocated during one `run` minus memory_allocated just before it, in MiB."""
    args = setup()[0] if setup else ()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run(*args)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out, args
    return round(peak / 2 ** 20, 1)


def torch_lce_missing() -> str | None:
    """Why torch's chunked `F.linear_cross_entropy(..., reduction="none", options=...)` cannot be used (or None)."""
    import torch.nn.functional as F
    fn = getattr(F, "linear_cross_entropy", None)
    if fn is None:
        return f"torch {torch.__version__} has no torch.nn.functional.linear_cross_entropy"
    if not hasattr(torch.nn, "LinearCrossEntropyOptions"):
        return f"torch {torch.__version__} has no torch.nn.LinearCrossEntropyOptions (the chunked path)"
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    for name in ("reduction", "options"):
        if name not in params:
            return f"torch {torch.__version__}: F.linear_cross_entropy has no {name!r} argument"
    return None


def module_missing(name: str) -> str | None:
    """Why the optional package `name` cannot be imported (or None when it can)."""
    import importlib
    try:
        importlib.import_module(name)
    except Exception as e:  # ImportError, or a broken build raising something else at import
        return f"{name} not importable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return None
