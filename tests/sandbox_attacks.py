"""Hostile programs for the sandbox attack suite, and a runner that grades them (used as the unprivileged user).

Every attack program defines `f`, a wrong solution of "f(i) == i + 1", plus its attack. Its tests pass only if
the attack worked: the verdict spoof made a wrong solution pass, or the escape read a secret / reached a socket /
forked past the limit. So every attack must end with `passed == 0`; the benign programs in the same batch must
score exactly. Host-side effects (files, processes, connections) are checked by the test after the batch.

Run as a script: reads {"params": ..., "names": [...], "sandbox": {...}} as JSON on stdin, grades the attack
programs plus benign ones with `Sandbox.run_many` and HumanEval attacks with `get_task("humaneval").rewards`,
prints the results as JSON.
"""
import json
import sys

SOLVES = "assert [candidate(i) for i in range(5)] == [1, 2, 3, 4, 5]"
WRONG = "def f(x):\n    return 0\n"
BENIGN = [("def f(x):\n    return x + 1\n", 2), ("def f(x):\n    return x + (x > 2)\n", 1)]
BENIGN_TESTS = ["assert candidate(1) == 2", "assert candidate(5) == 6"]

# name -> (class, code template, extra tests). Templates use {token} {port} {victim} {secret} {pidns} {dirs}.
ATTACKS = {
    # ---- verdict spoofing / harness tampering ------------------------------------------------------------
    "metaclass always-equal": ("spoof", """
class Meta(type):
    def __eq__(cls, other):
        return True
    __hash__ = type.__hash__
class AlwaysEqual(metaclass=Meta):
    def __eq__(self, other):
        return True
def f(x):
    return AlwaysEqual if x % 2 else AlwaysEqual()
""", []),
    "int subclass always-equal": ("spoof", """
class I(int):
    def __eq__(self, other):
        return True
def f(x):
    return I(0)
""", []),
    "builtins.type patched": ("spoof", """
import builtins
real_type = builtins.type
class AlwaysEqual:
    def __eq__(self, other):
        return True
    def __format__(self, spec):
        return "zz"
builtins.type = lambda *a: int if len(a) == 1 and real_type(a[0]) is AlwaysEqual else real_type(*a)
def f(x):
    return AlwaysEqual()
""", []),
    "signal handler walks frames": ("spoof", """
import signal, sys
def handler(sig, frame):
    while frame is not None:
        for k in list(frame.f_globals):
            if k in ('encode', 'decode', 'dumps', 'loads', 'send'):
                frame.f_globals[k] = lambda *a, **kw: b'{"r":true}'
        frame = frame.f_back
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
""" + WRONG, []),
    "rebind the callee's tables": ("spoof", """
import sys
m = sys.modules['__main__']
for k in list(vars(m)):
    if not k.startswith('__'):
        try:
            setattr(m, k, None)
        except Exception:
            pass
m.encode = lambda v, d=0: True
""" + WRONG, []),
    "replace sys.modules['math']": ("spoof", """
import sys, types
fake = types.ModuleType('math')
fake.isclose = lambda *a, **k: True
fake.fabs = lambda x: 0.0
sys.modules['math'] = fake
""" + WRONG, ["import math\nassert all(math.isclose(candidate(i), i + 1) for i in range(5))"]),
    "exit before the tests": ("spoof", "import os\nos._exit(0)\n" + WRONG, []),
    "sys.exit in the candidate": ("spoof", "import sys\ndef f(x):\n    sys.exit(0)\n", []),
    "fake result lines on every fd": ("spoof", """
import os
for fd in range(3, 64):
    try:
        os.write(fd, b'0 0 1\\n0 done -\\n' + (2).to_bytes(4, 'big') + b'{}' + b'\\xff' * 8)
    except OSError:
        pass
""" + WRONG, []),
    "fake stdout": ("spoof", "print('5 passed, 0 failed')\nprint('{\"r\": 1}')\n" + WRONG, []),
    "json bomb for the caller": ("spoof", """
import os, sys
def f(x):
    body = b'["l",[' * 200000 + b']]' * 200000
    os.write(int(sys.argv[-1]), len(body).to_bytes(4, 'big') + body)  # the response pipe
    return 0
""", []),
    "oversized frame": ("spoof", """
import os, sys
def f(x):
    os.write(int(sys.argv[-1]), b'\\xff\\xff\\xff\\xff')
    return 0
""", []),
    "gc hunt for the verdict": ("spoof", """
import gc
for o in gc.get_objects():
    if isinstance(o, dict) and 'fn' in o:
        o['fn'] = lambda *a: True
""" + WRONG, []),
    # ---- escapes: files ---------------------------------------------------------------------------------------
    "write files outside": ("escape", """
import os
DIRS = {dirs!r}
def attempt():
    done = []
    for d in DIRS:
        p = os.path.join(d, {token!r} + '-plain')
        try:
            with open(p, 'w') as fh:
                fh.write('x')
            done.append(p)
        except OSError:
            pass
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            os.close(os.open({token!r} + '-dirfd', os.O_CREAT | os.O_WRONLY, dir_fd=fd))
            done.append(d + ' dirfd')
        except OSError:
            pass
        try:
            link = {token!r} + '-link-' + str(len(done)) + str(abs(hash(d)))
            os.symlink(os.path.join(d, {token!r} + '-symlink'), link)
            with open(link, 'w') as fh:
                fh.write('x')
        except OSError:
            pass
    return done
attempt()
def f(x):
    return 0
""", []),
    "fchmod inherited fds": ("escape", """
import os, stat
def f(x):
    changed = []
    for fd in range(0, 256):
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISDIR(os.fstat(fd).st_mode):
                os.fchmod(fd, 0o777)
                changed.append(fd)
        except OSError:
            pass
    return changed
""", ["assert candidate(0) != []"]),
    # ---- escapes: secrets ----------------------------------------------------------------------------------------
    "read the caller's environment": ("secret", """
import os
def f(x):
    found = [k for k, v in os.environ.items() if {secret!r} in v]
    for pid in os.listdir('/proc'):
        try:
            with open('/proc/' + pid + '/environ', 'rb') as fh:
                if {secret!r}.encode() in fh.read():
                    found.append(pid)
        except OSError:
            pass
    try:
        with open('/proc/' + str(os.getppid()) + '/environ', 'rb') as fh:
            if {secret!r}.encode() in fh.read():
                found.append('ppid')
    except OSError:
        pass
    return found
""", ["assert candidate(0) != []"]),
    "read secret files": ("secret", """
import os
def f(x):
    found = []
    for d in {dirs!r}:
        for root, dirs, files in os.walk(d):
            for name in files:
                try:
                    with open(os.path.join(root, name), 'rb') as fh:
                        if {secret!r}.encode() in fh.read(1 << 16):
                            found.append(os.path.join(root, name))
                except OSError:
                    pass
            if len(dirs) > 50:
                del dirs[50:]
    return found
""", ["assert candidate(0) != []"]),
    # ---- escapes: network ----------------------------------------------------------------------------------------
    "network from exec'd python3 and bash": ("network", """
import os, subprocess
def f(x):
    out = b''
    code = ("import socket; s = socket.create_connection(('127.0.0.1', {port}), timeout=2); "
            "s.sendall(b'hi'); print('NET')")
    bash = 'echo hi > /dev/tcp/127.0.0.1/{port} && echo NET'
    for cmd in (['/usr/bin/python3', '-I', '-c', code], ['/bin/bash', '-c', bash]):
        try:
            out += subprocess.run(cmd, capture_output=True, timeout=5).stdout
        except Exception:
            pass
    try:
        import socket
        socket.create_connection(('127.0.0.1', {port}), timeout=2)
        out += b'NET'
    except OSError:
        pass
    return out.decode()
""", ["assert 'NET' in candidate(0)"]),
    # ---- processes and resources ---------------------------------------------------------------------------------
    "kill a process of the caller": ("kill", """
import os, signal
def f(x):
    hit = []
    try:
        os.kill({victim}, signal.SIGKILL)
        hit.append('victim')
    except OSError:
        pass
    try:
        os.pidfd_open({victim})
        hit.append('pidfd')
    except OSError:
        pass
    return hit
""", ["assert candidate(0) != []"]),
    "kill -9 -1 inside a pid namespace": ("kill_all", """
import os, subprocess
def f(x):
    if os.readlink('/proc/self/ns/pid') == {pidns!r}:  # never outside a pid namespace of its own
        return 'not in a pid namespace'
    subprocess.run(['/bin/sh', '-c', 'kill -9 -1'])
    return 0
""", []),
    "fork bomb": ("resources", """
import os, time
def f(x):
    n = 0
    for _ in range(300):
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
    return n
""", ["assert candidate(0) >= 100"]),
    "daemon outlives the run": ("daemon", """
import os, subprocess
def launch():
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv('/bin/sh', ['/bin/sh', '-c', 'sleep 600; : ' + {token!r}])
        os._exit(0)
launch()
""" + WRONG, []),
    "memory across children": ("memory", """
import os, time
def f(x):
    r, w = os.pipe()
    for _ in range(6):
        if os.fork() == 0:
            block = b'x' * (150 << 20)
            os.write(w, b'1')
            time.sleep(30)
            os._exit(0)
    got = 0
    deadline = time.time() + 8
    while got < 6 and time.time() < deadline:
        got += len(os.read(r, 6))
    return got
""", ["assert candidate(0) * 150 > 400"]),
}

# HumanEval responses (fenced blocks) that try to spoof the verdict of real problems.
HUMANEVAL_ATTACKS = {
    "metaclass": "```python\nclass M(type):\n    def __eq__(c, o):\n        return True\n    __hash__ = type.__hash__\n"
                 "class A(metaclass=M):\n    def __eq__(s, o):\n        return True\n"
                 "def {entry}(*a, **k):\n    return A()\n```",
    "patched type": "```python\nimport builtins\nclass A:\n    def __eq__(s, o):\n        return True\n"
                    "_t = builtins.type\nbuiltins.type = lambda *a: list if len(a) == 1 else _t(*a)\n"
                    "def {entry}(*a, **k):\n    return A()\n```",
    "return None": "    return None\n",
    "exit": "```python\nimport os\nos._exit(0)\n```",
    "math replaced": "```python\nimport sys, types\nm = types.ModuleType('math')\nm.fabs = lambda x: 0.0\n"
                     "sys.modules['math'] = m\ndef {entry}(*a, **k):\n    return 'spoof'\n```",
}
HUMANEVAL_IDS = ["HumanEval/0", "HumanEval/32", "HumanEval/38", "HumanEval/72", "HumanEval/107"]


def programs(params: dict, names: list[str]):
    """(programs, kinds) for the attack `names` followed by the benign programs."""
    from bonfast.tasks.sandbox import Program

    out, kinds = [], []
    for name in names:
        kind, template, extra = ATTACKS[name]
        code = template
        for key, value in params.items():
            code = code.replace("{%s!r}" % key, repr(value)).replace("{%s}" % key, str(value))
        out.append(Program(code, [SOLVES] + extra, candidate="f"))
        kinds.append(name)
    for code, _ in BENIGN:
        out.append(Program(code, BENIGN_TESTS, candidate="f"))
        kinds.append("benign")
    return out, kinds


def grade(params: dict, names: list[str], sandbox_kwargs: dict, humaneval: bool) -> dict:
    from bonfast.tasks.sandbox import Sandbox

    sandbox = Sandbox(**sandbox_kwargs)
    progs, kinds = programs(params, names)
    results = sandbox.run_many(progs)
    out = {"isolation": sandbox.isolation, "results": [
        {"kind": k, "status": r.status, "passed": r.passed, "total": r.total, "stderr": r.stderr[-500:]}
        for k, r in zip(kinds, results)]}
    if humaneval:
        from bonfast.tasks import get_task

        task = get_task("humaneval", test_fraction=1.0, sandbox=sandbox)
        examples = {e.meta["task_id"]: e for e in task.examples("test")}
        exs, responses, labels = [], [], []
        for tid in HUMANEVAL_IDS:
            ex = examples[tid]
            exs.append(ex), responses.append(ex.meta["solution"]), labels.append("canonical " + tid)
            for name, resp in HUMANEVAL_ATTACKS.items():
                exs.append(ex), responses.append(resp.replace("{entry}", ex.meta["entry_point"]))
                labels.append(f"{name} {tid}")
        out["humaneval"] = list(zip(labels, task.rewards(exs, responses)))
    return out


if __name__ == "__main__":
    job = json.load(sys.stdin)
    json.dump(grade(job["params"], job["names"], job["sandbox"], job["humaneval"]), sys.stdout)
