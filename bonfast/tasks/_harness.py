"""In-sandbox test harness: started by `bonfast.tasks.sandbox` as `python -I -B _harness.py RESULT_FD`.

Standard library only; never imported by bonfast itself. Steps, in order:

    1. read the job (JSON) from stdin: trusted `context` code, untrusted `code`, `tests`, limits, uid, nonce;
       fork: the parent stays as the supervisor that kills and reaps everything left when the harness ends
       (or when the caller sends SIGTERM), see `_supervise`;
    2. as the starting user (root in the namespace): make and enter the private work directory, import the
       allowed standard-library modules (the interpreter may live where the sandbox user cannot read), set the
       resource limits, then drop to the sandbox uid / gid with no supplementary groups;
    3. install an audit hook (PEP 578) that refuses, from then on: frame and object-graph introspection
       (`sys._getframe`, `tb_frame`, `gc.get_objects`, ...), ctypes, tracing hooks, new audit hooks, sockets,
       signals to other processes, opening /proc, /sys or /dev/mem, writing, creating, renaming or removing
       files outside the work directory, and (unless allowed) process creation;
    4. run `context` (the dataset's own definitions) into the test namespace, then `code` into its own
       namespace, then each test statement in the test namespace. That namespace holds the context's names,
       then the program's other names except those shadowing builtins, and `candidate` (also bound under its
       own name): the program's function, wrapped so that it returns only plain data (exact builtin types);
       its builtins are a copy taken before `code` ran;
    5. after each test write one line `<nonce> <i> <0|1>` and at the end `<nonce> done <error>` to RESULT_FD,
       then `os._exit(0)` (no atexit handler of the program runs).

The parent trusts only RESULT_FD lines that carry the nonce; a program that exits early, is killed, or writes
anything else there gets no credit. The nonce lives only in local variables of `main`, which the program cannot
reach once the hook is installed. This defends against Python-level tampering; the kernel limits set by the
parent (namespaces, rlimits, a separate uid) are the boundary against damage.
"""
import builtins
import json
import os
import resource
import signal
import sys
import time

_PROC_EXEC_EVENTS = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                     "subprocess.Popen", "pty.spawn", "os.startfile")
_INTROSPECTION_EVENTS = ("sys._getframe", "sys._current_frames", "sys._current_exceptions", "sys.settrace",
                         "sys.setprofile", "sys.addaudithook", "gc.get_objects", "gc.get_referrers",
                         "gc.get_referents", "cpython.PyInterpreterState_Clear", "sys.unraisablehook")
_FRAME_ATTRS = ("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "f_locals", "f_globals",
                "gi_yieldfrom", "cr_await")


class SandboxViolation(ValueError):
    """Raised by the audit hook. A ValueError so that stdlib code probing `sys._getframe` inside
    `except (AttributeError, ValueError)` (namedtuple, typing) degrades instead of failing."""


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# File-system changes confined to the work directory (arguments: the path first, or two paths).
_FS_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.symlink", "os.link", "os.chmod",
              "os.chown", "os.truncate", "os.utime", "os.chflags", "os.mkfifo", "os.mknod", "os.setxattr",
              "os.removexattr", "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree")


def _make_hook(allow_subprocess, workdir):
    realpath, getpid, isdir = os.path.realpath, os.getpid, os.path.isdir
    startswith, fspath = str.startswith, os.fsdecode
    inside = workdir.rstrip("/") + "/"

    def outside(path):
        if isinstance(path, int):  # an already open descriptor
            return False
        real = realpath(fspath(path))
        return real != inside[:-1] and not startswith(real, inside)

    def hook(event, args):
        if event in _INTROSPECTION_EVENTS or startswith(event, "ctypes.") or startswith(event, "socket."):
            raise SandboxViolation(f"sandbox: {event} is not allowed")
        if event == "object.__getattr__" and len(args) == 2 and args[1] in _FRAME_ATTRS:
            raise SandboxViolation(f"sandbox: reading {args[1]} is not allowed")
        if event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            if not (event == "os.kill" and args[0] == getpid()):
                raise SandboxViolation("sandbox: signals to other processes are not allowed")
        elif event == "open":
            path, flags = args[0], args[2]
            if isinstance(path, (str, bytes)):
                real = realpath(fspath(path))
                if startswith(real, "/proc") or startswith(real, "/dev/mem") or startswith(real, "/sys"):
                    raise SandboxViolation(f"sandbox: opening {real} is not allowed")
                if flags & _WRITE_FLAGS and real != "/dev/null" and outside(real):
                    raise SandboxViolation(f"sandbox: writing {real} (outside the work directory)")
                if isdir(real) and outside(real):  # a directory fd would let dir_fd= paths skip this hook
                    raise SandboxViolation(f"sandbox: opening directory {real} is not allowed")
        elif event in _FS_EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if any(outside(p) for p in paths[: 2 if event in ("os.rename", "os.link", "shutil.move",
                                                             "shutil.copyfile", "shutil.copytree") else 1]):
                raise SandboxViolation(f"sandbox: {event} outside the work directory")
        elif not allow_subprocess and event in _PROC_EXEC_EVENTS:
            raise SandboxViolation(f"sandbox: {event} is not allowed")
    return hook


def _is_plain(value, depth=0):
    """Exact builtin data types only (a subclass could override __eq__ and pass any assert)."""
    t = type(value)
    if t in (int, float, complex, str, bytes, bool, type(None)):
        return True
    if depth > 50:
        return False
    if t in (list, tuple, set, frozenset):
        return all(_is_plain(v, depth + 1) for v in value)
    if t is dict:
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _plain_data(fn, is_plain):
    def candidate(*args, **kwargs):
        value = fn(*args, **kwargs)
        if not is_plain(value):
            raise TypeError(f"candidate returned {type(value).__name__}, expected plain data")
        return value
    return candidate


def _set_limits(limits):
    for name, value in limits.items():
        res = getattr(resource, name)
        soft, hard = resource.getrlimit(res)
        value = int(value)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(res, (value, value))


class _Stop(Exception):
    pass


def _descendants(root):
    """Pids whose chain of parents reaches `root` (read from /proc/<pid>/stat)."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
            except OSError:
                continue
            parent[int(name)] = int(data[data.rfind(b")") + 2:].split()[1])
    found = []
    for pid in parent:
        p, hops = pid, 0
        while p in parent and hops < 4096:
            p, hops = parent[p], hops + 1
            if p == root:
                found.append(pid)
                break
    return found


def _kill_and_reap_all():
    """SIGKILL every descendant and reap it; orphans come back to us (pid 1 or a child subreaper)."""
    me = os.getpid()
    while True:
        pids = _descendants(me)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        children = True
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children = False
                break
            if pid == 0:
                break
        if not pids and not children:
            return
        time.sleep(0.002)


def _supervise():
    """Fork the harness; stay behind (with the caller's uid) as the reaper of everything it starts.

    The supervisor is the parent of the harness and, in namespace mode, pid 1 of the namespace; in process mode
    it becomes a child subreaper (prctl), so processes that detach (setsid, double fork) are reparented to it.
    It returns in the child; the parent waits for the harness to exit (or SIGTERM from the caller), then kills
    and reaps every descendant, and exits.
    """
    def on_term(signum, frame):
        raise _Stop

    signal.signal(signal.SIGTERM, on_term)
    import ctypes
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    # Not dumpable: /proc/<pid>/mem and friends become root-owned, so the program cannot read the harness's
    # memory (the nonce) through them even by a path the audit hook does not see. Inherited by the fork.
    prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    if os.getpid() != 1:
        prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    del prctl
    for name in [m for m in sys.modules if m == "_ctypes" or m.startswith("ctypes")]:
        del sys.modules[name]
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return
    try:
        while os.waitpid(-1, 0)[0] != child:
            pass
    except (_Stop, ChildProcessError):
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_and_reap_all()
    os._exit(0)


def main():
    result_fd = int(sys.argv[1])
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    _supervise()
    nonce = job.pop("nonce").encode()
    write, exit_now, own_pid = os.write, os._exit, os.getpid()

    os.makedirs(job["workdir"], exist_ok=True)
    if job["uid"] is not None:
        os.chown(job["workdir"], job["uid"], job["gid"])
    os.chdir(job["workdir"])
    for module in job["preload"]:
        try:
            __import__(module)
        except ImportError:
            pass
    _set_limits(job["limits"])
    if job["uid"] is not None:
        os.setgroups([])
        os.setgid(job["gid"])
        os.setuid(job["uid"])
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)

    compiled = []
    try:
        context = compile(job["context"], "<context>", "exec")
        program = compile(job["code"], "<program>", "exec")
        compiled = [(compile(t["src"], f"<test {i}>", "exec"), t["counts"]) for i, t in enumerate(job["tests"])]
    except BaseException as err:  # a syntax error in the program: every test fails
        program, error = None, type(err).__name__
    test_builtins = dict(vars(builtins))
    test_ns = {"__name__": "__test__", "__builtins__": test_builtins}
    user_ns = {"__name__": "__main__", "__builtins__": builtins}
    do_exec, is_plain, wrap = exec, _is_plain, _plain_data
    candidate_name, allow_subprocess = job["candidate"], job["allow_subprocess"]
    flushes = (sys.stdout.flush, sys.stderr.flush)
    del job

    sys.addaudithook(_make_hook(allow_subprocess, os.getcwd()))
    if program is not None:
        error = "-"
        try:
            do_exec(context, test_ns)
            do_exec(program, user_ns)
            for name, value in list(user_ns.items()):  # the program's names, unless trusted or builtin
                if type(name) is str and name not in test_ns and name not in test_builtins \
                        and not name.startswith("__"):
                    test_ns[name] = value
            if candidate_name is not None:  # also under its own name: some tests call it that way
                test_ns["candidate"] = test_ns[candidate_name] = wrap(user_ns[candidate_name], is_plain)
        except BaseException as err:  # SystemExit included: exiting early is failing
            error = type(err).__name__
            program = None
    if os.getpid() != own_pid:  # a forked copy of the harness never reports
        exit_now(1)
    index = 0
    for code, counts in compiled:
        ok = program is not None
        if ok:
            try:
                do_exec(code, test_ns)
            except BaseException:
                ok = False
        if os.getpid() != own_pid:
            exit_now(1)
        if counts:
            write(result_fd, b"%s %d %d\n" % (nonce, index, 1 if ok else 0))
            index += 1
    for flush in flushes:  # the program's buffered prints, for the caller's log
        try:
            flush()
        except BaseException:
            pass
    if os.getpid() != own_pid:
        exit_now(1)
    write(result_fd, b"%s done %s\n" % (nonce, str(error).encode("ascii", "replace")[:64]))
    exit_now(0)


if __name__ == "__main__":
    main()
