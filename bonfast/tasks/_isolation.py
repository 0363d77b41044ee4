"""Process isolation of the sandbox: the `unshare` command line, what this machine supports, the masked
directories, per-slot uids and the process handles used to clean up (bonfast/tasks/sandbox.py explains the
modes)."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
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


PACKAGE_DIR_NAMES = ("site-packages", "dist-packages")
WALK_SKIP = {"/proc", "/sys", "/dev", "/run"} | set(ALWAYS_MASKED)
WALK_DEPTH = 8  # /usr/lib/<app>/platform/<python>/lib/python3.12/site-packages is 8 deep


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def caller_package_dirs() -> set[str]:
    """Where this interpreter finds packages beyond its standard library: every sys.path entry that is not
    the standard library (site-packages, the user site, editable checkouts, .pth additions), the site
    directories, and the virtual environment's root."""
    import site

    paths = set(sys.path) | {os.path.join(STDLIB, name) for name in PACKAGE_DIR_NAMES}
    for getter in ("getsitepackages", "getusersitepackages"):
        try:
            found = getattr(site, getter)()
        except AttributeError:  # an old virtualenv's site module
            continue
        paths |= {found} if isinstance(found, str) else set(found)
    if sys.prefix != sys.base_prefix:
        paths.add(sys.prefix)
    out = set()
    for p in paths:
        p = os.path.realpath(p) if p else ""
        if not p or _under(STDLIB, p):  # the standard library itself (or a folder holding it) stays
            continue
        if _under(p, STDLIB) and os.path.relpath(p, STDLIB).split(os.sep)[0] not in PACKAGE_DIR_NAMES:
            continue  # lib-dynload and the like are the standard library
        out.add(p)
    return out


@functools.lru_cache(maxsize=1)
def discovered_package_dirs() -> tuple[str, ...]:
    """Python package folders anywhere on this machine (not only this interpreter's): every directory named
    site-packages or dist-packages, and every virtual environment (pyvenv.cfg) or conda environment
    (conda-meta) root that does not hold the running standard library, found by one walk of the file system
    (WALK_DEPTH levels, no symlinks, not into /proc, /sys, /dev or the always-masked folders). Cached per
    process (`discovered_package_dirs.cache_clear()` looks again); about a second on a Debian image."""
    found: list[str] = []

    def walk(path: str, depth: int) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        names = {e.name for e in entries}
        if path != "/" and ("pyvenv.cfg" in names or "conda-meta" in names) and not _under(STDLIB, path):
            found.append(path)
            return
        for e in entries:
            try:
                if not e.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            if e.name in PACKAGE_DIR_NAMES:
                found.append(e.path)
            elif depth < WALK_DEPTH and e.path not in WALK_SKIP:
                walk(e.path, depth + 1)

    walk("/", 1)
    return tuple(sorted(os.path.realpath(p) for p in found))


def package_dirs() -> set[str]:
    return caller_package_dirs() | set(discovered_package_dirs())


def inner_masks() -> list[str]:
    """Package folders inside the standard library directory (e.g. pyenv's lib/python3.11/site-packages):
    hidden after the standard library is bound back."""
    return sorted(p for p in package_dirs() if _under(p, STDLIB) and os.path.isdir(p))


def masks(extra: Iterable[str]) -> list[str]:
    """Directories hidden behind an empty tmpfs: the temporary directories, the homes, the caller's working
    directory, this checkout, every Python package folder and virtual environment outside the standard
    library (`package_dirs`), and `extra`."""
    packages = [p for p in package_dirs() if not _under(p, STDLIB)]
    paths = list(ALWAYS_MASKED) + [os.path.expanduser("~"), os.getcwd(), CHECKOUT] + packages + list(extra)
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
