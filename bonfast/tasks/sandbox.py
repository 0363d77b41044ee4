"""Run untrusted Python programs (model-written code) against tests, one separate process per program.

What contains a program, from the outside in (`isolation="namespace"`, used when running as root and `unshare`
works; `Sandbox.isolation` says which mode is active):

    process      a fresh `python -I -B` (never exec in the caller) in its own session. It forks: the parent
                 stays as a supervisor with the caller's uid (pid 1 of the namespace, or a child subreaper) and,
                 when the harness ends or on SIGTERM from the caller (timeout, output cap), SIGKILLs and reaps
                 every process the program started, detached ones included. Then the caller SIGKILLs the
                 process group if anything is left, and every process of the sandbox uid (a sweep of /proc)
    namespaces   `unshare --net --pid --ipc --mount-proc --kill-child`: no network interface but loopback
                 (down), its own pid space (the caller's processes are invisible), its own mounts
    files        fresh tmpfs on /tmp, /var/tmp, /dev/shm and /run/lock (the world-writable places), so anything
                 written there vanishes with the namespace; the work directory is a directory on that tmpfs
    user         a uid of its own per concurrent slot (no passwd entry, no groups): the caller's 0600 / 0700
                 files cannot be read and nothing outside the tmpfs can be written; the process is not
                 dumpable, so its /proc/<pid>/mem is root-owned
    rlimits      RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_NPROC (fork bombs; per uid, so slots do not starve each
                 other), RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0; and a wall-time limit
    output       at most `max_output_bytes` of stdout and of stderr are read; more kills the program
    environment  PATH, LANG, HOME=TMPDIR=work directory, PYTHONDONTWRITEBYTECODE: no caller variables
    in-process   the harness (`_harness.py`) adds a PEP 578 audit hook: no sockets, no ctypes, no signals to
                 other processes, no frame / gc introspection, no /proc or /sys, no file changes or directory
                 descriptors outside the work directory, no process creation (unless `allow_subprocess=True`,
                 for tests of the kernel limits)

Results come back on a pipe opened before the program runs, one line per test, each prefixed by a random
nonce that only the harness holds; anything else on that pipe, or no final line, means no credit. So
`sys.exit(0)` before the tests, `os._exit`, killing the harness, printing fake results to stdout, or patching
harness functions all score 0. Tests see builtins as they were before the program ran, the dataset's own helper
definitions, and a `candidate` that may only return plain data (an object whose `__eq__` always says True
fails). Known gap: a program can still mutate shared modules (e.g. `math.fabs = ...`) that a test then uses.

`isolation="process"` (the fallback when not root or when `unshare` is refused) keeps the process and
supervisor, rlimits, output cap, clean environment, private work directory (deleted afterwards), the separate
uid when root, and the audit hook, but has no namespaces: the network and writes to world-writable places such
as /tmp are blocked only by the audit hook (a C extension could get around it), and without root RLIMIT_NPROC
counts all of the caller's processes and the program runs as the caller's uid (it can read the caller's files).
Files readable by everyone (e.g. the installed packages) stay readable in both modes. `ALLOWED_MODULES` are
imported before the uid drop, because the interpreter may live in a directory the sandbox uid cannot read
(as here: /root/.pyenv); other standard-library imports then fail with ImportError.
"""
from __future__ import annotations

import functools
import json
import os
import secrets
import selectors
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
from functools import lru_cache
from pathlib import Path

__all__ = ["Program", "SandboxResult", "Sandbox", "run_program", "isolation_available", "uid_processes",
           "ALLOWED_MODULES"]

HARNESS = Path(__file__).with_name("_harness.py")


@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
    return HARNESS.read_text()
# The standard library a test program may import (preloaded before the uid drop, see the module docstring).
ALLOWED_MODULES = (
    "abc", "array", "bisect", "calendar", "cmath", "collections", "collections.abc", "contextlib", "copy",
    "dataclasses", "datetime", "decimal", "enum", "fractions", "functools", "hashlib", "heapq", "io",
    "itertools", "json", "math", "numbers", "operator", "random", "re", "statistics", "string", "struct",
    "sys", "textwrap", "time", "typing", "unicodedata",
)
_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_WORKDIR_IN_NAMESPACE = "/tmp/work"
# Sandbox uids: no passwd entry; one per concurrent slot of this process, so RLIMIT_NPROC is per slot.
_UID_BASE = 0x4000_0000 + (os.getpid() & 0xFFFF) * 256


@dataclass
class Program:
    """One job: `context` (trusted code run in the test namespace, e.g. the dataset's helper definitions),
    `code` (untrusted), `tests` (statement sources run one by one after `code`; each passes iff it raises
    nothing), `counts[i]` (whether test i is scored; setup statements are not), and `candidate` (a name in
    the program bound as `candidate` in the test namespace).

    The tests see: the context's names first (the program cannot replace them), then the program's global
    names except those that shadow builtins, and builtins as they were before the program ran.
    """

    code: str
    tests: list[str] = field(default_factory=list)
    context: str = ""
    candidate: str | None = None
    counts: list[bool] | None = None

    def __post_init__(self):
        if not isinstance(self.code, str) or not isinstance(self.context, str):
            raise ValueError("Program.code and Program.context must be str")
        if not isinstance(self.tests, (list, tuple)) or not all(isinstance(t, str) for t in self.tests):
            raise ValueError("Program.tests must be a list of str (one statement source each)")
        if self.counts is None:
            self.counts = [True] * len(self.tests)
        if len(self.counts) != len(self.tests):
            raise ValueError(f"Program.counts must have one bool per test ({len(self.tests)}), "
                             f"got {len(self.counts)}")


@dataclass
class SandboxResult:
    """Outcome of one program.

    status: "ok" (the harness finished), "error" (the program raised; `error` names the exception),
            "timeout", "output_limit", "crashed" (killed or exited without a final report), "tampered"
            (unexpected bytes on the result channel).
    passed / total: scored tests that passed / scored tests. `outcomes[i]`: whether scored test i passed
    (tests after a timeout or crash count as failed). stdout / stderr: the first `max_output_bytes` bytes.
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


@lru_cache(maxsize=1)
def isolation_available() -> str:
    """"namespace" when this process is root and `unshare` can create net / pid / mount namespaces, else
    "process" (checked once by running `unshare ... true`)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "process"
    try:
        subprocess.run(_unshare_prefix() + ["true"], check=True, timeout=10, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return "process"
    return "namespace"


def _unshare_prefix() -> list[str]:
    return ["unshare", "--net", "--pid", "--ipc", "--mount-proc", "--fork", "--kill-child"]


def _mask_script(tmpfs_mb: int) -> str:
    """Shell run as root inside the new mount namespace: tmpfs over the world-writable directories, then exec."""
    mounts = "".join(
        f"if [ -d {d} ]; then mount -t tmpfs -o size={tmpfs_mb}m,mode=1777,nosuid,nodev tmpfs {d} || exit 97; fi; "
        for d in _MASKED_DIRS)
    return mounts + 'exec "$@"'


class _SlotPool:
    """Concurrency slots (-> distinct sandbox uids) shared by every Sandbox of this process."""

    def __init__(self):
        self._free: list[int] = []
        self._next = 0
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._next += 1
            return self._next - 1

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


_SLOTS = _SlotPool()


def uid_processes(uid_min: int, uid_max: int | None = None) -> list[int]:
    """Pids whose real uid is in [uid_min, uid_max] (from the "Uid:" line of /proc/<pid>/status: the owner
    of /proc/<pid> itself turns to root for the non-dumpable sandbox processes)."""
    uid_max = uid_min if uid_max is None else uid_max
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/status", "rb") as f:
                    for line in f:
                        if line.startswith(b"Uid:"):
                            if uid_min <= int(line.split()[1]) <= uid_max:
                                out.append(int(entry.name))
                            break
            except (OSError, ValueError, IndexError):
                continue
    return out


def _kill_uid(uid: int) -> None:
    """SIGKILL every process whose real uid is `uid` (the sandbox uid owns nothing else)."""
    for _ in range(3):
        pids = uid_processes(uid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not pids:
            return
        time.sleep(0.01)


class Sandbox:
    """Runs programs in separate, limited processes; many at once.

    Args:
        timeout_s: wall-time limit per program (seconds).
        cpu_s: RLIMIT_CPU per program (default: ceil(timeout_s)).
        memory_mb: RLIMIT_AS per program (address space, MiB).
        max_processes: RLIMIT_NPROC (processes and threads of the sandbox uid).
        max_output_bytes: bytes of stdout and of stderr read; more kills the program.
        max_file_mb: RLIMIT_FSIZE, and the size of each tmpfs in namespace mode.
        workers: programs run in parallel (default: CPU count).
        isolation: "auto" (namespace when available), "namespace" or "process" (see the module docstring).
        allow_subprocess: let the program fork / exec (still under RLIMIT_NPROC); off by default.
    """

    def __init__(self, timeout_s: float = 10.0, cpu_s: int | None = None, memory_mb: int = 1024,
                 max_processes: int = 32, max_output_bytes: int = 1 << 16, max_file_mb: int = 16,
                 workers: int | None = None, isolation: str = "auto", allow_subprocess: bool = False):
        for arg, v in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_processes", max_processes),
                       ("max_output_bytes", max_output_bytes), ("max_file_mb", max_file_mb)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{arg} must be a positive number, got {v!r}")
        if isolation not in ("auto", "namespace", "process"):
            raise ValueError(f"isolation must be 'auto', 'namespace' or 'process', got {isolation!r}")
        if isolation == "namespace" and isolation_available() != "namespace":
            raise ValueError("isolation='namespace' needs root and a working `unshare`; use 'auto' or 'process'")
        self.timeout_s = float(timeout_s)
        self.cpu_s = int(cpu_s) if cpu_s is not None else max(1, int(-(-self.timeout_s // 1)))
        self.memory_mb = int(memory_mb)
        self.max_processes = int(max_processes)
        self.max_output_bytes = int(max_output_bytes)
        self.max_file_mb = int(max_file_mb)
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.isolation = isolation_available() if isolation == "auto" else isolation
        self.allow_subprocess = bool(allow_subprocess)

    # ---- public -------------------------------------------------------------------------------------------
    def run(self, program: Program | str, tests: list[str] | None = None, **kwargs) -> SandboxResult:
        """Run one program (a `Program`, or `code` plus `tests` / Program fields as keywords)."""
        if isinstance(program, str):
            program = Program(program, list(tests or []), **kwargs)
        elif tests is not None or kwargs:
            raise ValueError("pass tests and Program fields only together with code as a str")
        slot = _SLOTS.acquire()
        try:
            return self._run(program, slot)
        finally:
            _SLOTS.release(slot)

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
    def _job(self, program: Program, nonce: str, uid: int | None, workdir: str) -> bytes:
        mb = 1 << 20
        limits = {"RLIMIT_AS": self.memory_mb * mb, "RLIMIT_CPU": self.cpu_s, "RLIMIT_CORE": 0,
                  "RLIMIT_FSIZE": self.max_file_mb * mb, "RLIMIT_NOFILE": 64}
        if uid is not None or self.allow_subprocess:
            # Without a uid of its own the count includes the caller's processes (process mode, see above).
            limits["RLIMIT_NPROC"] = self.max_processes + (0 if uid is not None else _own_process_count())
        job = {"nonce": nonce, "context": program.context, "code": program.code,
               "tests": [{"src": t, "counts": c} for t, c in zip(program.tests, program.counts)],
               "candidate": program.candidate, "workdir": workdir, "uid": uid, "gid": uid,
               "limits": limits, "preload": list(ALLOWED_MODULES), "allow_subprocess": self.allow_subprocess}
        return json.dumps(job).encode()

    def _command(self) -> list[str]:
        # The base interpreter and the harness *source* (not paths under the project): in namespace mode a fresh
        # tmpfs covers /tmp, so a checkout or virtual environment under /tmp would vanish from the sandbox's view.
        python = [os.path.realpath(sys.executable), "-I", "-B", "-c", _harness_source()]
        if self.isolation == "namespace":
            return _unshare_prefix() + ["sh", "-c", _mask_script(self.max_file_mb), "sh"] + python
        return python

    def _run(self, program: Program, slot: int) -> SandboxResult:
        start = time.monotonic()
        nonce = secrets.token_hex(16)
        namespace = self.isolation == "namespace"
        uid = _UID_BASE + slot if os.geteuid() == 0 else None
        host_dir = None if namespace else tempfile.mkdtemp(prefix="bonfast-sandbox-")
        workdir = _WORKDIR_IN_NAMESPACE if namespace else host_dir
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "PYTHONDONTWRITEBYTECODE": "1"}
        result_r, result_w = os.pipe()
        proc = out = None
        try:
            if uid is not None and host_dir is not None:
                os.chown(host_dir, uid, uid)
            cmd = self._command() + [str(result_w)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(result_w,), start_new_session=True, env=env, cwd="/",
                                    close_fds=True)
            os.close(result_w)
            result_w = -1
            job = self._job(program, nonce, uid, workdir)
            out = self._collect(proc, result_r, job, nonce)
        finally:
            if result_w >= 0:
                os.close(result_w)
            os.close(result_r)
            if proc is not None:
                _stop(proc, namespace, graceful=out is not None and out["reason"] is None)
            if uid is not None:
                _kill_uid(uid)
            if host_dir is not None:
                shutil.rmtree(host_dir, ignore_errors=True)
        return self._result(program, out, nonce, time.monotonic() - start)

    def _collect(self, proc, result_r: int, job: bytes, nonce: str) -> dict:
        """Feed the job, then read stdout / stderr / result until the final line, EOF, a limit or the deadline."""
        deadline = time.monotonic() + self.timeout_s
        bufs = {"stdout": bytearray(), "stderr": bytearray(), "result": bytearray()}
        reason = None
        try:
            proc.stdin.write(job)
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        done_marker = f"{nonce} done ".encode()
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
            sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
            sel.register(result_r, selectors.EVENT_READ, "result")
            reported = False
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    reason = None if reported else "timeout"
                    break
                for key, _ in sel.select(timeout=min(remaining, 0.5)):
                    fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                    chunk = os.read(fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    buf = bufs[key.data]
                    buf += chunk
                    cap = self.max_output_bytes if key.data != "result" else 1 << 20
                    if len(buf) > cap:
                        del buf[cap:]
                        over = "output_limit" if key.data != "result" else "tampered"
                        reason = over if not reported or key.data == "result" else "drained"
                if reason is not None:
                    reason = None if reason == "drained" else reason
                    break
                if not reported and done_marker in bufs["result"] and bufs["result"].endswith(b"\n"):
                    # The harness reported and exits; drain what the program printed until EOF (the
                    # supervisor kills whatever keeps the pipes open), for at most a short grace period.
                    reported = True
                    deadline = min(deadline, time.monotonic() + 1.0)
        return {"reason": reason, **bufs}

    def _result(self, program: Program, out: dict, nonce: str, wall_s: float) -> SandboxResult:
        total = sum(program.counts)
        outcomes = [False] * total
        status, error = out["reason"], None
        lines = bytes(out["result"]).split(b"\n")
        complete = lines[-1] == b""
        lines = lines[:-1] if complete else lines
        prefix = nonce.encode() + b" "
        finished = False
        for expected, line in enumerate(lines):
            parts = line.split(b" ")
            if not line.startswith(prefix) or len(parts) != 3 or finished:
                status = status or "tampered"
                break
            if parts[1] == b"done":
                finished, error = True, parts[2].decode("ascii", "replace")
                continue
            if parts[1] != str(expected).encode() or parts[2] not in (b"0", b"1") or expected >= total:
                status = status or "tampered"
                break
            outcomes[expected] = parts[2] == b"1"
        if status == "tampered":
            outcomes = [False] * total
        elif status is None:
            if not complete or not finished:
                status = "crashed"
            else:
                status = "ok" if error == "-" else "error"
        stdout = bytes(out["stdout"]).decode("utf-8", "replace")
        stderr = bytes(out["stderr"]).decode("utf-8", "replace")
        return SandboxResult(status, sum(outcomes), total, outcomes, stdout, stderr,
                             None if error in (None, "-") else error, wall_s)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2:].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _stop(proc: subprocess.Popen, namespace: bool, graceful: bool, grace_s: float = 2.0) -> None:
    """End a run without leaving processes or zombies behind.

    The harness's supervisor (see `_harness._supervise`) kills and reaps everything the program started. After
    a normal end it exits by itself; otherwise it gets SIGTERM (namespace mode: it is the child of `unshare`).
    Whatever still runs after `grace_s` is SIGKILLed by process group, and the leader is reaped.
    """
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            try:
                stream.close()
            except OSError:
                pass
    if not graceful:
        targets = _children(proc.pid) if namespace else [proc.pid]
        for pid in targets:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()


def _own_process_count() -> int:
    """Processes and threads of this uid (process mode: RLIMIT_NPROC counts them all)."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.stat(entry.path).st_uid == uid:
                    count += len(os.listdir(f"{entry.path}/task"))
            except OSError:
                continue
    return count


def run_program(code: str, tests: list[str] | None = None, **limits) -> SandboxResult:
    """One-off `Sandbox(**limits).run(code, tests)`."""
    return Sandbox(**limits).run(code, tests)
