"""The candidate side of a sandbox run, and the wire format shared with the caller.

Started by `bonfast.tasks.sandbox` as `python -I -B -S -c <this source> REQUEST_FD RESPONSE_FD`, inside the
namespaces `unshare` created (or plainly, in the explicitly accepted "process" mode). Standard library only.

    1. read the job (JSON) from stdin;
    2. namespace modes: make every mount read-only, mount private tmpfs over the masked directories (the
       temporary directories, /run, the homes, the caller's checkout and working directory), bind the
       interpreter's standard library back (read-only) if a mask hid it, make the work directory on the
       new /tmp;
    3. fork. The parent is the supervisor (pid 1 of the pid namespace): it never runs model-written code; it
       sums the resident memory of every process of the sandbox every few milliseconds and kills them all
       past `memory_mb`, and when the candidate process ends it kills and reaps everything left, then exits
       (status 0, or `EXIT_MEMORY`);
    4. the child sets the resource limits, drops every privilege (root: a uid of its own, no groups; user
       namespace: no capabilities, empty bounding set, no-new-privileges), runs the program, then answers
       calls: each request holds arguments, each response a return value or an exception name, both in the
       tagged plain-data encoding below. Nothing else crosses.

The verdict is not decided here: the caller runs the tests and compares. Whatever the program does to this
process (patching builtins, signal handlers, replacing modules, writing to the pipes, exiting) can only
change the values the caller receives, and those are decoded by the caller into fresh builtin objects.

Wire format (`encode` / `decode`): a JSON document in which None, bool, str and ints below 2**53 stand for
themselves and every other value is a tagged list: ["I", hex] big int, ["f", float.hex()] float,
["c", re_hex, im_hex] complex, ["b", hex] bytes, ["l", [...]] list, ["t", [...]] tuple, ["s", [...]] set,
["F", [...]] frozenset, ["d", [[k, v], ...]] dict. Only exact builtin types are encoded (a subclass, or any
other object, is refused); `decode` accepts nothing else and builds new objects. Frames on the pipes are a
4-byte big-endian length followed by that many bytes.

Bounds on what the caller accepts from the sandbox (a reply; checked before it is parsed, `check_reply`):
at most `MAX_REPLY` bytes and `MAX_REPLY_NODES` JSON values (counted as the '[' and ',' bytes, an upper
bound), so parsing and decoding one reply take linear time and bounded memory. A set, frozenset or dict
whose members share one hash value more than `MAX_COLLISIONS` times is refused before it is built: the
hashes are counted first (a dict of ints, which cannot collide), so building it costs at most
`MAX_COLLISIONS` equality tests per member instead of a quadratic number (distinct ints that differ by
multiples of 2**61 - 1, complex numbers re + 1000003 * im = const and crafted tuples all share a hash).
"""
import json
import os
import signal
import sys
import time

EXIT_MEMORY = 3
_MAX_DEPTH = 100
_SAFE_INT = 1 << 53
MAX_REPLY = 1 << 20  # bytes of one reply (the 164 HumanEval canonical solutions need at most 568)
MAX_REPLY_NODES = 1 << 16  # JSON values of one reply (they need at most 62)
MAX_COLLISIONS = 8  # members of one set / frozenset / dict sharing one hash value


class WireError(ValueError):
    """A value that is not plain data, or bytes that are not a valid message."""


def encode(value, depth=0):
    """`value` as a JSON-ready structure (exact builtin types only; WireError otherwise)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_SAFE_INT < value < _SAFE_INT else ["I", format(value, "x")]
    if t is float:
        return ["f", value.hex()]
    if depth > _MAX_DEPTH:
        raise WireError("nested too deeply")
    if t is list or t is tuple or t is set or t is frozenset:
        tag = "l" if t is list else "t" if t is tuple else "s" if t is set else "F"
        return [tag, [encode(v, depth + 1) for v in value]]
    if t is dict:
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    if t is complex:
        return ["c", value.real.hex(), value.imag.hex()]
    if t is bytes:
        return ["b", value.hex()]
    raise WireError(f"{t.__name__} is not plain data")


def _decode_float(text):
    if type(text) is not str or len(text) > 40:
        raise WireError("bad float")
    return float.fromhex(text)


def _hashable_members(items):
    """`items`, refused (WireError) when more than MAX_COLLISIONS of them share a hash value."""
    counts = {}
    for item in items:
        h = hash(item)  # TypeError for an unhashable member
        c = counts.get(h, 0) + 1
        if c > MAX_COLLISIONS:
            raise WireError("too many members with one hash value")
        counts[h] = c
    return items


def check_reply(data):
    """WireError unless `data` (one reply, not yet parsed) is within MAX_REPLY bytes and MAX_REPLY_NODES
    values."""
    if len(data) > MAX_REPLY:
        raise WireError(f"reply of {len(data)} bytes (at most {MAX_REPLY})")
    if data.count(b"[") + data.count(b",") > MAX_REPLY_NODES:
        raise WireError(f"reply of more than {MAX_REPLY_NODES} values")


def decode(obj, depth=0):
    """The value an `encode` structure stands for; WireError for anything that is not one."""
    t = type(obj)
    if obj is None or t is bool or t is str:
        return obj
    if t is int:
        if not -_SAFE_INT < obj < _SAFE_INT:
            raise WireError("unencoded big int")
        return obj
    if t is not list or not obj or type(obj[0]) is not str or depth > _MAX_DEPTH:
        raise WireError("not a tagged value")
    tag, n = obj[0], len(obj)
    try:
        if tag == "I" and n == 2 and type(obj[1]) is str and len(obj[1]) <= 1 << 16:
            return int(obj[1], 16)
        if tag == "f" and n == 2:
            return _decode_float(obj[1])
        if tag == "c" and n == 3:
            return complex(_decode_float(obj[1]), _decode_float(obj[2]))
        if tag == "b" and n == 2 and type(obj[1]) is str:
            return bytes.fromhex(obj[1])
        if tag in ("l", "t", "s", "F") and n == 2 and type(obj[1]) is list:
            items = [decode(v, depth + 1) for v in obj[1]]
            if tag == "l" or tag == "t":
                return items if tag == "l" else tuple(items)
            return set(_hashable_members(items)) if tag == "s" else frozenset(_hashable_members(items))
        if tag == "d" and n == 2 and type(obj[1]) is list:
            pairs = []
            for pair in obj[1]:
                if type(pair) is not list or len(pair) != 2:
                    raise WireError("bad dict item")
                pairs.append((decode(pair[0], depth + 1), decode(pair[1], depth + 1)))
            _hashable_members([k for k, _ in pairs])
            return dict(pairs)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as err:  # unhashable set member / dict key, bad hex, ...
        raise WireError(f"bad {tag!r} value: {type(err).__name__}") from None
    raise WireError("unknown tag")


def _reject_constant(name):
    raise WireError(f"{name} is not allowed")


def loads(data: bytes):
    """Parse one message (a JSON document of the format above, no NaN / Infinity literals, no JSON floats)."""
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant, parse_float=_reject_constant)
    except (ValueError, RecursionError, MemoryError) as err:  # ValueError: JSONDecodeError, bad UTF-8, and
        # an integer literal past the int/str conversion limit (4300 digits), which json raises as such
        raise WireError(f"malformed message: {type(err).__name__}") from None


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("utf-8")


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


# ---- the sandbox side -----------------------------------------------------------------------------------
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
_MOUNT_FLAGS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024,
                "nodiratime": 2048, "relatime": 1 << 21}


def _unescape(field):
    return field.encode().decode("unicode_escape").encode("latin-1")


def _setup_mounts(libc, masks, expose, tmpfs_mb, workdir, owner, inner=()):
    """Everything read-only, then private tmpfs over `masks`, the `expose` directories (the standard library)
    bound back read-only where a mask hid them, read-only tmpfs over the `inner` masks inside them (package
    folders inside the standard library directory), then the work directory."""
    import ctypes

    def mount(src, target, fstype, flags, data):
        if libc.mount(src, target, fstype, flags, data) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount {target!r}: {os.strerror(err)}")

    mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    with open("/proc/self/mountinfo", "rb") as f:
        infos = f.read().decode("utf-8", "replace").splitlines()
    for line in infos:
        fields = line.split()
        target, options = _unescape(fields[4]), fields[5].split(",")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in options:
            flags |= _MOUNT_FLAGS.get(option, 0)
        try:
            mount(None, target, None, flags, None)
        except OSError:
            if not target.startswith(b"/proc"):
                raise
    hidden = [p for p in expose if any(p == m or p.startswith(m + "/") for m in masks)]
    fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in hidden]
    for path in masks:
        mode = "1777" if path in ("/tmp", "/var/tmp", "/dev/shm") else "0755"
        opts = f"size={tmpfs_mb}m,mode={mode}".encode()
        mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts)
    for path, fd in zip(hidden, fds):
        os.makedirs(path, mode=0o755, exist_ok=True)
        mount(f"/proc/self/fd/{fd}".encode(), path.encode(), None, MS_BIND | MS_REC, None)
        mount(None, path.encode(), None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
        os.close(fd)
    for path in inner:
        if os.path.isdir(path):
            mount(b"tmpfs", path.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=1m,mode=0755")
    os.makedirs(workdir, exist_ok=True)
    if owner is not None:
        os.chown(workdir, owner, owner)
    os.chmod(workdir, 0o700)


def _drop_privileges(libc, uid, drop_caps):
    """Root: become `uid` (no groups). User namespace: keep uid 0 of the namespace but lose every capability."""
    import ctypes

    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    elif drop_caps:
        for cap in range(64):
            libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
        libc.prctl(28, 0x2F, 0, 0, 0)  # PR_SET_SECUREBITS: noroot, no_setuid_fixup, keep_caps locked

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]

        if libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()) != 0:
            raise OSError(ctypes.get_errno(), "capset failed")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/mem and ptrace closed to the other processes


def _read_exact(fd, n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def _serve(job, req_fd, resp_fd):
    """Run the program, then answer calls until the caller closes the request pipe."""
    write, read_exact, exit_now = os.write, _read_exact, os._exit
    enc, dec, pack, unpack, fr, check = encode, decode, dumps, loads, frame, check_reply

    def send(obj):
        try:
            data = pack(obj)
            check(data)  # a value the caller would refuse fails this call only
        except (WireError, ValueError, TypeError, RecursionError, MemoryError) as err:
            data = pack({"x": "UngradableValue", "m": str(err)[:200]})
        write(resp_fd, fr(data))

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    fn = None
    try:
        exec(compile(job["code"], "<program>", "exec"), ns)
        if job["candidate"] is not None:
            fn = ns[job["candidate"]]
            if not callable(fn):
                raise TypeError("the candidate is not callable")
        send({"ready": True})
    except BaseException as err:  # SystemExit included: exiting early is failing
        send({"x": type(err).__name__})
    while True:
        head = read_exact(req_fd, 4)
        if head is None:
            break
        body = read_exact(req_fd, int.from_bytes(head, "big"))
        if body is None:
            break
        try:
            req = unpack(body)
            value = fn(*dec(req["a"]), **dec(req["k"]))
            reply = {"r": enc(value)}
        except WireError as err:
            reply = {"x": "UngradableValue", "m": str(err)[:200]}
        except BaseException as err:
            reply = {"x": type(err).__name__}
        send(reply)
    for stream in (sys.stdout, sys.stderr):  # the program's buffered prints, for the caller's log
        try:
            stream.flush()
        except BaseException:
            pass
    exit_now(0)


def _sandbox_memory_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"RssAnon:") or line.startswith(b"RssShmem:"):
                        total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _all_pids(me):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]


def _descendants(root):
    parent = {}
    for pid in _all_pids(-1):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                data = f.read()
            parent[pid] = int(data[data.rfind(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    out = []
    for pid in parent:
        p, hops = pid, 0
        while p in parent and hops < 4096:
            p, hops = parent[p], hops + 1
            if p == root:
                out.append(pid)
                break
    return out


def _supervise(child, namespace, memory_kb, poll_s):
    """Wait for the candidate process, enforcing the memory bound of the whole sandbox; then kill everything."""
    me = os.getpid()
    pids = (lambda: _all_pids(me)) if namespace else (lambda: _descendants(me))
    status = 0
    signal.signal(signal.SIGTERM, lambda *_: None)  # the caller stops a run by SIGKILL
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child:
            break
        if pid == 0:
            if _sandbox_memory_kb(pids()) > memory_kb:
                status = EXIT_MEMORY
                break
            time.sleep(poll_s)
    while True:  # kill and reap everything left (orphans are reparented to us)
        left = pids()
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            if not left:
                break
        time.sleep(0.001)
    os._exit(status)


def main():
    import ctypes
    import resource

    req_fd, resp_fd = int(sys.argv[1]), int(sys.argv[2])
    job = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    libc = ctypes.CDLL(None, use_errno=True)
    namespace = job["mode"] != "process"
    if namespace:
        _setup_mounts(libc, job["masks"], job["expose"], job["tmpfs_mb"], job["workdir"], job["uid"],
                      job.get("inner_masks", ()))
    else:
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: detached processes come back to us
        if job["uid"] is not None:
            os.chown(job["workdir"], job["uid"], job["uid"])
    libc.prctl(4, 0, 0, 0, 0)  # not dumpable
    child = os.fork()
    if child:
        os.close(req_fd)
        os.close(resp_fd)
        _supervise(child, namespace, job["memory_kb"], job["poll_s"])
    try:
        for name, value in job["limits"].items():
            res = getattr(resource, name)
            hard = resource.getrlimit(res)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(res, (value, value))
        os.chdir(job["workdir"])
        _drop_privileges(libc, job["uid"], job["mode"] == "userns")
    except BaseException as err:
        os.write(2, f"sandbox setup failed: {err!r}\n".encode())
        os._exit(70)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    del libc
    _serve(job, req_fd, resp_fd)


if __name__ == "__main__":
    main()
