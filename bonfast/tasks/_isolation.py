"""Process isolation of the sandbox: the `unshare` command line, what this machine supports, the masked
directories, per-slot uids and the process handles used to clean up (bonfast/tasks/sandbox.py explains the
modes)."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

# The interpreter's standard library, bound back read-only inside the sandbox where a mask hides it.
STDLIB = os.path.realpath(os.path.dirname(os.__file__))
WORKDIR_IN_NAMESPACE = "/tmp/work"
NEVER_MASKED = {"/", "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sys",
                 "/dev", "/var", "/boot", "/opt", "/srv", "/mnt", "/media", "/nix", "/snap"}
ALWAYS_MASKED = ("/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root")
CHECKOUT = str(Path(__file__).resolve().parents[2])
# Sandbox uids (root only): no passwd entry; one per concurrent slot of this process, so RLIMIT_NPROC is per slot.
UID_BASE = 0x4000_0000 + (os.getpid() & 0xFFFF) * 256


def unshare_prefix(userns: bool) -> list[str]:
    return ["unshare"] + (["--user", "--map-root-user"] if userns else []) + [
        "--net", "--pid", "--ipc", "--mount", "--uts", "--fork", "--kill-child", "--mount-proc"]


@functools.lru_cache(maxsize=1)
def parent_death_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL` where it works, else nothing: the kernel kills `unshare` when the thread that
    started it dies, and `unshare --kill-child` then kills the namespace's first process, which ends the namespace.
    So a trainer that crashes or is SIGKILLed leaves no sandbox behind (without it, a program stays until its
    RLIMIT_CPU or until it reads from its closed request pipe)."""
    prefix = ["setpriv", "--pdeathsig", "KILL"]
    if shutil.which("setpriv") is None:
        return []
    try:
        subprocess.run(prefix + ["true"], check=True, timeout=20, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return prefix


@functools.lru_cache(maxsize=2)
def probe(userns: bool) -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        subprocess.run(unshare_prefix(userns) + ["true"], check=True, timeout=20, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def isolation_available() -> str | None:
    """"namespace" (root and `unshare` works), "userns" (not root, unprivileged user namespaces work) or None."""
    if os.geteuid() == 0:
        return "namespace" if probe(False) else None
    return "userns" if probe(True) else None


isolation_available.cache_clear = probe.cache_clear  # type: ignore[attr-defined]


def masks(extra: Iterable[str]) -> list[str]:
    paths = list(ALWAYS_MASKED) + [os.path.expanduser("~"), os.getcwd(), CHECKOUT] + list(extra)
    out: list[str] = []
    for p in sorted({os.path.realpath(p) for p in paths}, key=len):
        if p in NEVER_MASKED or not os.path.isdir(p) or any(p.startswith(m + "/") for m in out):
            continue
        out.append(p)
    return out


class SlotPool:
    """Concurrency slots (-> distinct sandbox uids when root) shared by every Sandbox of this process."""

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


SLOTS = SlotPool()


def uid_processes(uid_min: int, uid_max: int | None = None) -> list[int]:
    """Pids whose real uid is in [uid_min, uid_max] (from the "Uid:" line of /proc/<pid>/status)."""
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


def kill_uid(uid: int, timeout_s: float = 5.0) -> None:
    """SIGKILL every process whose real uid is `uid` until none is left (process mode as root)."""
    deadline = time.monotonic() + timeout_s
    while True:
        pids = uid_processes(uid)
        if not pids or time.monotonic() > deadline:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.005)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from /proc/<pid>/task/*/children)."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return out
