"""Pre-flight of benches/gpu_check.py: the card, the driver, the versions, and which optional packages are here.

    python benches/gpu_preflight.py --out preflight.json      # exit 2, with a clear message, when CUDA is not visible
    python benches/gpu_preflight.py --no-require-cuda         # the same facts on a CPU machine (exit 0)

On CUDA it also runs one bf16 matmul on the card, so a broken driver or a card that cannot run bf16 shows up
here, in seconds, and not in the middle of the tests.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# optional package -> what runs without it (nothing else depends on it)
OPTIONAL = {
    "flash_attn": "attention backend 'flash' and its tests (torch SDPA, which has its own flash kernel, is used)",
    "xformers": "attention backend 'xformers' and its tests",
    "liger_kernel": "the 'liger' provider of the linear log-probs bench",
    "cut_cross_entropy": "the 'cce' provider of the linear log-probs bench",
    "trl": "the 'trl' provider of the linear log-probs bench (TRL's chunked LM head)",
}
VERSIONED = ("torch", "triton", "transformers", "numpy", "tokenizers", "safetensors", "tqdm", "matplotlib", "pytest",
             "pytest_benchmark", "setuptools")


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        try:
            return getattr(importlib.import_module(module), "__version__", "unknown")
        except Exception:
            return None


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{cmd[0]} failed: {e}"
    return (res.stdout or res.stderr).strip()


def git_state() -> dict:
    head = _run(["git", "-C", ROOT, "rev-parse", "HEAD"])
    dirty = _run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"])
    return {"commit": head, "dirty": bool(dirty) if dirty is not None else None}


def optional_packages() -> dict:
    """{name: {"present", "version", "skips" (when absent), "error" (when absent)}} plus torch's own LCE."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchkit import module_missing, torch_lce_missing
    out = {}
    for name, skips in OPTIONAL.items():
        missing = module_missing(name)
        out[name] = {"present": missing is None, "version": _version(name) if missing is None else None}
        if missing:
            out[name].update(skips=skips, error=missing)
    lce = torch_lce_missing()
    out["torch.nn.functional.linear_cross_entropy"] = {"present": lce is None}
    if lce:
        out["torch.nn.functional.linear_cross_entropy"].update(
            skips="the 'torch_lce' provider of the loss-head benches", error=lce)
    return out


def collect() -> dict:
    """Everything but the card: Python, library versions, git state, optional packages, CUDA visibility."""
    import torch
    facts = {
        "python": platform.python_version(), "platform": platform.platform(),
        "versions": {m: _version(m) for m in VERSIONED} | {"torch": torch.__version__, "cuda": torch.version.cuda,
                                                          "cudnn": torch.backends.cudnn.version()},
        "git": git_state(), "optional": optional_packages(), "cpu_count": os.cpu_count(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
        "cuda": torch.cuda.is_available(),
    }
    return facts


def card() -> dict:
    """The CUDA card: name, compute capability, memory, SMs, driver; and one bf16 matmul on it."""
    import torch
    props = torch.cuda.get_device_properties(0)
    smi = _run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"])
    out = {"card": props.name, "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
           "memory_gib": round(props.total_memory / 2**30, 1), "device_count": torch.cuda.device_count(),
           "driver": smi.splitlines()[0].split(",")[0].strip() if smi and "failed" not in smi else smi,
           "bf16_supported": torch.cuda.is_bf16_supported()}
    a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
    out["bf16_matmul_ok"] = bool(torch.isfinite((a @ a).float()).all())
    return out


def no_cuda_message(facts: dict) -> str:
    import torch
    smi = _run(["nvidia-smi", "-L"])
    built = torch.version.cuda or "none: a CPU-only build"
    return (f"gpu_check pre-flight: CUDA is not visible to torch {torch.__version__} (built for CUDA {built}); "
            f"CUDA_VISIBLE_DEVICES={facts['cuda_visible_devices']!r}; nvidia-smi: "
            f"{(smi or 'not found').splitlines()[0] if smi is not None else 'not found'}. Nothing else is run; "
            f"`python benches/gpu_check.py --dry-run` shows the plan on any machine.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the facts as JSON here")
    ap.add_argument("--no-require-cuda", action="store_true", help="exit 0 without CUDA (facts only)")
    args = ap.parse_args(argv)
    facts = collect()
    code = 0
    if facts["cuda"]:
        facts.update(card())
        if not facts.get("bf16_matmul_ok"):
            facts["problem"] = "a bf16 matmul on the card gave non-finite values"
            code = 1
    elif not args.no_require_cuda:
        facts["problem"] = no_cuda_message(facts)
        code = 2
    if args.out:
        with open(args.out, "w") as f:
            json.dump(facts, f, indent=1, default=str)
    print(json.dumps(facts, indent=1, default=str))
    for name, info in facts["optional"].items():
        if not info["present"]:
            print(f"missing: {name} -> skips {info['skips']}", file=sys.stderr)
    if "problem" in facts:
        print(facts["problem"], file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
