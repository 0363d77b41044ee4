"""Ahead-of-time compile check of every Triton kernel in `bonfast.kernels` for sm_80 and sm_90, without a GPU.

Triton's own compiler (and the `ptxas` bundled in the triton wheel) run on any Linux machine; only launching
needs a GPU. A stub driver reports the target (GPUTarget("cuda", 80 | 90, 32)) and `kernel.warmup(...)`
compiles exactly what a launch with those arguments would (torch dtypes stand in for tensors, ints are
specialised as a real launch does them: 1 becomes a constant, multiples of 16 get alignment hints).

Each kernel module declares its cases in `compile_cases()`, a list of dicts:

    kernel        the @triton.jit (or @triton.autotune) object; every config an autotuner can pick is compiled
    label         what the case stands for (dtype, shape, model)
    args          positional arguments: torch dtypes for pointers (`(dtype, UNALIGNED)` for a pointer a launcher
                  can pass off a 16-byte boundary, e.g. row 1 of a [2, T] fp32 buffer with T % 4 != 0), ints /
                  floats for scalars
    constexprs    keyword constexprs (a launcher's flags and block sizes; num_warps / num_stages for a plain kernel)
    configs       None: every config the autotuner holds; or a list of indices into them (a spot check)
    tensor_cores  True: the kernel's dots must lower to MMA (wgmma or mma.sync on sm_90, mma.sync on sm_80)
    no_spills     True: a GPU run uses this case, so ptxas must report no register spills
    full          True: compiled only with --full (the table in benches/README.md); the default check, which the
                  test suite runs, compiles `default_selection` of the rest (every distinct specialisation once),
                  to stay within about two minutes on two CPU cores

For every compiled kernel the check records shared memory, registers, spill bytes and the MMA kind, and fails
when a kernel does not compile, exceeds the architecture's shared memory per block (163 KB sm_80, 227 KB
sm_90), a tensor-core case lowers to FMA, a no-spill case spills, or a module defines a `*_kernel` that no case
covers. A new kernel module only adds its `compile_cases()`.

    python -m bonfast.kernels_aot                   # check, exit 1 on a failure
    python -m bonfast.kernels_aot --full --table    # every case, and the markdown table (benches/README.md)

Run it with TRITON_INTERPRET unset: Triton reads it when @triton.jit decorates, and an interpreted kernel
cannot be compiled. Compiles go to a fresh temporary cache so every run really compiles and ptxas reports.
"""
import argparse
import contextlib
import importlib
import io
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import time

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # bytes of shared memory one block may use
ARCHS = (80, 90)
UNALIGNED = "unaligned"  # `(dtype, UNALIGNED)` in a case's args: a pointer that need not be 16-byte aligned


def _mock_arg(a):
    """A case argument as warmup takes it: `(dtype, UNALIGNED)` -> a mock tensor whose address is 4 mod 16 (Triton
    then compiles without the pointer's divisibility hint, as a launch with such a pointer does)."""
    if isinstance(a, tuple) and len(a) == 2 and a[1] == UNALIGNED:
        from triton.runtime.jit import MockTensor

        class _UnalignedMock(MockTensor):
            @staticmethod
            def data_ptr():
                return 4
        return _UnalignedMock(a[0])
    return a


def specialisation(case):
    """What the compiled code of a case depends on: the kernel, each pointer's dtype and alignment, each int's
    specialisation (1 -> a constant, a multiple of 16 -> a divisibility hint, else a plain int), the constexprs.
    Two cases with the same specialisation compile to the same code, whatever their sizes."""
    def spec(a):
        if isinstance(a, tuple):
            return (str(a[0]), a[1])
        if isinstance(a, bool) or not isinstance(a, int):
            return str(a) if not isinstance(a, float) else "float"
        return "1" if a == 1 else ("%16" if a % 16 == 0 else "int")
    return (_kernel_name(case["kernel"]), tuple(spec(a) for a in case["args"]),
            tuple(sorted((k, str(v)) for k, v in case["constexprs"].items())))


def _stub_driver(arch):
    """A driver that reports a CUDA target of compute capability `arch` and can compile, not launch."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StubDriver(DriverBase):
        @classmethod
        def is_active(cls):
            return True

        def map_python_to_cpp_type(self, ty):
            return ty

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

        def get_benchmarker(self):
            raise RuntimeError("the AOT stub driver compiles only")

        def get_current_device(self):
            return arch  # a distinct "device" per target keeps Triton's per-device kernel caches apart

        def get_current_stream(self, device=None):
            return 0

        def set_current_device(self, device):
            pass

    return StubDriver()


def _kernel_name(kernel):
    fn = getattr(kernel, "fn", kernel)  # Autotuner -> JITFunction
    return getattr(fn, "__name__", None) or fn.fn.__name__


def _configs(kernel, args, constexprs, only=None):
    """[(description, extra kwargs)]: every config an autotuner can pick for these arguments, or the launch."""
    from triton.runtime.autotuner import Autotuner
    if not isinstance(kernel, Autotuner):
        warps, stages = constexprs.get("num_warps", 4), constexprs.get("num_stages", 3)
        blocks = {k: v for k, v in constexprs.items() if k.startswith("BLOCK")}
        return [(_describe(blocks, warps, stages), {})]
    configs = kernel.configs
    prune = getattr(kernel, "early_config_prune", None)
    if prune:
        configs = prune(configs, dict(zip(kernel.arg_names, map(_mock_arg, args))), **constexprs)
    if only is not None:
        configs = [configs[i] for i in only]
    return [(_describe(c.kwargs, c.num_warps, c.num_stages), c.all_kwargs()) for c in configs]


def _describe(blocks, warps, stages):
    short = {k.replace("BLOCK_", ""): v for k, v in blocks.items()}
    return " ".join(f"{k}{v}" for k, v in short.items()) + f" w{warps} s{stages}"


def ptxas_path(arch=90):
    """The ptxas bundled with triton's NVIDIA backend (None when this triton build has none)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
    except ImportError:
        return None
    try:
        tool = get_ptxas(arch)
    except TypeError:  # older triton: get_ptxas() takes no arch
        tool = get_ptxas()
    path = getattr(tool, "path", tool)
    return path if path and os.access(path, os.X_OK) else None


_PTXAS_RE = {
    "regs": re.compile(r"Used (\d+) registers"),
    "spill_st": re.compile(r"(\d+) bytes spill stores"),
    "spill_ld": re.compile(r"(\d+) bytes spill loads"),
}


def _ptxas_stats(log, ptx, arch):
    """(registers, spill store bytes, spill load bytes) from ptxas -v output; runs ptxas itself if needed."""
    if not _PTXAS_RE["regs"].search(log):
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(ptx)
        try:
            gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
            out = subprocess.run([ptxas_path(arch), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                                 capture_output=True, text=True, check=True)
            log = out.stderr + out.stdout
        finally:
            os.unlink(f.name)
    return tuple(sum(int(m) for m in rx.findall(log)) for rx in _PTXAS_RE.values())


def _mma_kind(ptx):
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if "mma.sync.aligned" in ptx:
        return "mma.sync"
    return "fma" if "fma.rn.f32" in ptx else "none"


def _compile_one(kernel, args, constexprs, extra):
    """Compile one config; returns (compiled kernel, ptxas log captured from Triton's own ptxas run)."""
    from triton import knobs
    fn = kernel.fn if hasattr(kernel, "configs") else kernel  # an Autotuner compiles through its JITFunction
    buf = io.StringIO()
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(buf):
            compiled = fn.warmup(*map(_mock_arg, args), grid=(1,), **constexprs, **extra)
    finally:
        knobs.nvidia.dump_ptxas_log = False
    return compiled, buf.getvalue()


def collect_cases():
    """(cases, uncovered): every module's compile_cases(), and `*_kernel` objects no case compiles."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    import bonfast.kernels as package
    cases, uncovered = [], []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        kernels = {name for name, obj in vars(module).items()
                   if name.endswith("_kernel") and isinstance(obj, (JITFunction, Autotuner))}
        mod_cases = list(module.compile_cases()) if hasattr(module, "compile_cases") else []
        covered = {_kernel_name(c["kernel"]) for c in mod_cases}
        uncovered += [f"{info.name}.{k}" for k in sorted(kernels - covered)]
        cases += [dict(c, module=info.name) for c in mod_cases]
    return cases, uncovered


def _check(arch, case, log):
    """Compile one case's configs for one arch. Returns (rows, failures)."""
    rows, failures = [], []
    name = _kernel_name(case["kernel"])
    for desc, extra in _configs(case["kernel"], case["args"], case["constexprs"], case.get("configs")):
        t0 = time.perf_counter()
        what = f"sm_{arch} {name} [{case['label']}] {desc}"
        try:
            compiled, ptxas_log = _compile_one(case["kernel"], case["args"], case["constexprs"], extra)
        except Exception as e:  # noqa: BLE001 - any compiler error is a check failure
            failures.append(f"{what}: does not compile: {type(e).__name__}: {str(e)[:300]}")
            continue
        ptx = compiled.asm["ptx"]
        regs, spill_st, spill_ld = _ptxas_stats(ptxas_log, ptx, arch)
        row = dict(arch=arch, kernel=name, label=case["label"], config=desc, smem=compiled.metadata.shared,
                   regs=regs, spill=spill_st + spill_ld, mma=_mma_kind(ptx), no_spills=case["no_spills"],
                   seconds=time.perf_counter() - t0)
        rows.append(row)
        if log:
            print(f"{what}: smem {row['smem']} regs {regs} spill {row['spill']} {row['mma']} "
                  f"({row['seconds']:.1f} s)", file=log, flush=True)
        if row["smem"] > SMEM_LIMIT[arch]:
            failures.append(f"{what}: shared memory {row['smem']} B > {SMEM_LIMIT[arch]} B")
        tensor_core = ("wgmma", "mma.sync") if arch >= 90 else ("mma.sync",)  # small-M tiles use mma.sync on sm_90
        if case["tensor_cores"] and row["mma"] not in tensor_core:
            failures.append(f"{what}: 16-bit dots lowered to {row['mma']}, not tensor-core MMA")
        if case["no_spills"] and row["spill"]:
            failures.append(f"{what}: {row['spill']} bytes of register spills (stores + loads)")
    return rows, failures


def run(arch, full=False, log=None):
    """Compile every case for one arch. Returns (rows, failures). Leaves the stub driver active: meant for a
    process of its own (python -m bonfast.kernels_aot runs one per arch)."""
    from triton.runtime import driver
    cases, uncovered = collect_cases()
    rows, failures = [], [f"{k}: a @triton.jit kernel with no compile case (add it to its module's "
                          f"compile_cases())" for k in uncovered]
    driver.set_active(_stub_driver(arch))
    for case in (cases if full else default_selection(cases)):
        r, f = _check(arch, case, log)
        rows += r
        failures += f
    return rows, failures


def default_selection(cases):
    """The cases the default check (the test suite, CI) compiles: every distinct `specialisation` of the cases not
    marked `full`, once. The first case of each kernel variant (kernel x pointer dtypes x constexprs, i.e. every
    HAS_* / ACCUMULATE / SPLIT_K / block-size choice a launcher makes, in every dtype) compiles every autotune
    config its dtype's key can select when that dtype is bf16 (what a GPU run uses), the first config otherwise
    (fp16 tiles are bf16's with another MMA operand type; fp32's are recorded by --full); a case that only
    specialises sizes or alignment differently (ragged, T = 1, an unaligned vector) compiles its first config."""
    picked, seen, variants = [], set(), set()
    for case in cases:
        key = specialisation(case)
        if case.get("full", False) or key in seen:
            continue
        seen.add(key)
        variant = (key[0], tuple(a for a in key[1] if isinstance(a, tuple) or a.startswith("torch.")), key[2])
        first = variant not in variants
        variants.add(variant)
        bf16 = any("bfloat16" in str(a) for a in key[1])
        picked.append(case if first and bf16 and case.get("configs") is None else
                      dict(case, configs=case.get("configs") if first and bf16 else [0]))
    return picked


def list_selection(full=False):
    """Print the selected cases (kernel, label, configs) without compiling; returns 0."""
    from triton.runtime import driver
    driver.set_active(_stub_driver(90))
    cases, _ = collect_cases()
    total = 0
    for case in (cases if full else default_selection(cases)):
        configs = _configs(case["kernel"], case["args"], case["constexprs"], case.get("configs"))
        total += len(configs)
        print(f"{_kernel_name(case['kernel'])} [{case['label']}]: {', '.join(d for d, _ in configs)}")
    print(f"{total} kernels per target")
    return 0


def _run_in_child(arch, full, quiet):
    return run(arch, full, None if quiet else sys.stderr)


def table(rows):
    """Markdown: one line per (kernel, case, config), sm_80 and sm_90 side by side."""
    by_key = {}
    for r in rows:
        by_key.setdefault((r["kernel"], r["label"], r["config"]), {})[r["arch"]] = r
    lines = ["| kernel | case | config | sm_80 smem KB / regs / spill B / MMA | sm_90 smem KB / regs / spill B / MMA "
             "| spill-free required |", "|---|---|---|---|---|---|"]
    for (kernel, label, config), per_arch in by_key.items():
        cells = []
        for arch in ARCHS:
            r = per_arch.get(arch)
            cells.append("—" if r is None else
                         f"{r['smem'] / 1024:.0f} / {r['regs']} / {r['spill']} / {r['mma']}")
        required = "yes" if next(iter(per_arch.values()))["no_spills"] else "no (recorded)"
        lines.append(f"| `{kernel}` | {label} | {config} | {cells[0]} | {cells[1]} | {required} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the markdown table of every compiled kernel")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="only this target (repeatable)")
    parser.add_argument("--full", action="store_true", help="also the cases marked full (what the table shows)")
    parser.add_argument("--jobs", type=int, default=2, help="targets compiled in parallel processes (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no per-kernel progress lines on stderr")
    parser.add_argument("--list", action="store_true", help="list the selected cases and their configs, compile none")
    opts = parser.parse_args(argv)
    if opts.list:
        return list_selection(opts.full)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("kernels_aot: TRITON_INTERPRET=1 is set; interpreted kernels cannot be compiled. Run it with "
                 "TRITON_INTERPRET unset (or 0).")
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="bonfast-aot-"))
    t0 = time.perf_counter()
    archs = tuple(opts.arch or ARCHS)
    rows, failures = [], []
    if opts.jobs > 1 and len(archs) > 1:  # one fresh process per target (spawn: nothing decorated yet)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(min(opts.jobs, len(archs)), mp_context=multiprocessing.get_context("spawn")) as ex:
            results = list(ex.map(_run_in_child, archs, [opts.full] * len(archs), [opts.quiet] * len(archs)))
    else:
        results = [_run_in_child(arch, opts.full, opts.quiet) for arch in archs]
    for r, f in results:
        rows += r
        failures += [x for x in f if x not in failures]  # a missing compile case is reported once
    if opts.table:
        print(table(rows))
    print(f"kernels_aot: {len(rows)} kernels compiled for {', '.join(f'sm_{a}' for a in archs)} "
          f"in {time.perf_counter() - t0:.0f} s; {len(failures)} failures", file=sys.stderr)
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
