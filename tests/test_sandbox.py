"""The sandbox: hostile programs are contained, get no credit, and leave nothing behind.

Every test runs in each available isolation mode ("namespace" needs root + unshare; "process" always) and is
followed by a check that no sandbox process, child process, work directory or stray file is left.
"""
import os
import tempfile
import time

import pytest

from bonfast.tasks.sandbox import Program, Sandbox, _children, isolation_available, uid_processes

MODES = ["namespace", "process"] if isolation_available() == "namespace" else ["process"]
GOOD = "def f(x):\n    return x + 1\n"
TESTS = ["assert candidate(1) == 2", "assert candidate(5) == 6"]
SYSTEM_PYTHON = "/usr/bin/python3"


def _sandbox_uid_processes():
    """Host pids whose real uid is a sandbox uid (they start at 0x40000000)."""
    return uid_processes(0x4000_0000, 0xFFFF_FFFE)


def _work_dirs():
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("bonfast-sandbox-")}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    dirs = _work_dirs()
    # children that predate the test (e.g. multiprocessing's resource tracker from an earlier test) are not ours
    before = set(_children(os.getpid()))
    yield
    assert set(_children(os.getpid())) - before == set(), "a sandbox process outlived its run"
    assert _sandbox_uid_processes() == [], "a process of a sandbox uid is still alive"
    assert _work_dirs() == dirs, "a work directory was not deleted"


@pytest.fixture(params=MODES)
def sandbox(request):
    return Sandbox(timeout_s=3.0, isolation=request.param, max_output_bytes=1 << 14)


def run(sandbox, code, tests=TESTS, **kwargs):
    return sandbox.run(Program(code, list(tests), candidate="f", **kwargs))


def test_good_program_passes(sandbox):
    res = run(sandbox, "print('hello')\n" + GOOD)
    assert (res.status, res.passed, res.total, res.outcomes) == ("ok", 2, 2, [True, True])
    assert res.stdout == "hello\n" and res.all_passed and res.fraction == 1.0


def test_partial_credit_and_setup_statements(sandbox):
    res = sandbox.run(Program(GOOD, ["import math", "assert candidate(1) == 2", "assert candidate(1) == 3",
                                     "for x in range(3):\n    assert candidate(x) == x + 1"],
                              counts=[False, True, True, True], candidate="f"))
    assert (res.status, res.passed, res.total, res.outcomes) == ("ok", 2, 3, [True, False, True])


def test_syntax_error_and_exception_score_zero(sandbox):
    assert run(sandbox, "def f(x) return x").passed == 0
    res = run(sandbox, "raise RuntimeError('boom')\n" + GOOD)
    assert (res.status, res.error, res.passed) == ("error", "RuntimeError", 0)


def test_infinite_loop_times_out(sandbox):
    start = time.monotonic()
    res = run(sandbox, "while True:\n    pass\n")
    assert res.status == "timeout" and res.passed == 0
    assert time.monotonic() - start < sandbox.timeout_s + 3


def test_loop_inside_the_tested_function_times_out(sandbox):
    res = run(sandbox, "def f(x):\n    while True:\n        pass\n")
    assert res.status == "timeout" and res.passed == 0


@pytest.mark.parametrize("allow_subprocess", [False, True])
def test_fork_bomb_is_contained(sandbox, allow_subprocess):
    sandbox.allow_subprocess = allow_subprocess
    sandbox.max_processes = 16
    res = run(sandbox, "import os\nwhile True:\n    os.fork()\n" + GOOD)
    assert res.passed == 0 and res.status in ("error", "crashed", "timeout")


def test_detached_daemons_are_killed(sandbox):
    sandbox.allow_subprocess = True
    code = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            time.sleep(60)\n        os._exit(0)\n" + GOOD)
    assert run(sandbox, code).passed == 2  # the fixture checks that the sleepers are gone


def test_allocating_8_gb_fails(sandbox):
    res = run(sandbox, "x = bytearray(8 << 30)\n" + GOOD)
    assert (res.status, res.error, res.passed) == ("error", "MemoryError", 0)


def test_writing_outside_the_work_directory_leaves_nothing(sandbox, tmp_path):
    token = f"bonfast-evil-{os.getpid()}-{sandbox.isolation}"
    targets = [f"/tmp/{token}", f"/var/tmp/{token}", f"/dev/shm/{token}", str(tmp_path / token),
               os.path.join(os.path.dirname(os.path.abspath(__file__)), token), os.path.expanduser(f"~/{token}")]
    code = f"targets = {targets!r}\nwritten = []\n"
    code += "for t in targets:\n    try:\n        open(t, 'w').write('x')\n        written.append(t)\n" \
            "    except Exception:\n        pass\n"
    code += "open('inside.txt', 'w').write('ok')\n" + GOOD
    res = sandbox.run(Program(code, ["assert written == []", "assert open('inside.txt').read() == 'ok'"]))
    assert res.outcomes == [True, True]
    assert not [t for t in targets if os.path.exists(t)]


def test_directory_descriptors_cannot_bypass_the_path_checks(sandbox):
    token = f"bonfast-evil-dirfd-{os.getpid()}-{sandbox.isolation}"
    code = ("import os\nreached = []\nfor path, flags in (('proc/self/mem', os.O_RDONLY), "
            f"('tmp/{token}', os.O_WRONLY | os.O_CREAT)):\n"
            "    try:\n        fd = os.open('/', os.O_RDONLY)\n        os.open(path, flags, dir_fd=fd)\n"
            "        reached.append(path)\n    except Exception:\n        pass\n")
    assert sandbox.run(Program(code, ["assert reached == []"])).outcomes == [True]
    assert not os.path.exists(f"/tmp/{token}")


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON) or isolation_available() != "namespace",
                    reason="needs namespace isolation and a system python")
def test_kernel_layers_without_the_audit_hook():
    """A child interpreter has no audit hook: the network namespace, tmpfs masks and uid still hold."""
    sandbox = Sandbox(timeout_s=5.0, isolation="namespace", allow_subprocess=True)
    token = f"bonfast-evil-kernel-{os.getpid()}"
    script = ("import socket, os\n"
              "try:\n    socket.create_connection(('1.1.1.1', 80), timeout=2)\n    print('NET')\n"
              "except OSError:\n    pass\n"
              f"open('/tmp/{token}', 'w').write('x')\n"
              "try:\n    open('/etc/shadow').read()\n    print('READ')\nexcept OSError:\n    pass\n")
    code = ("import os\nr, w = os.pipe()\npid = os.fork()\n"
            "if pid == 0:\n    os.dup2(w, 1)\n"
            f"    os.execv({SYSTEM_PYTHON!r}, [{SYSTEM_PYTHON!r}, '-I', '-c', {script!r}])\n"
            "os.close(w)\nos.waitpid(pid, 0)\nout = os.read(r, 1000)\n")
    res = sandbox.run(Program(code, ["assert out == b''"]))
    assert res.outcomes == [True], res.stderr
    assert not os.path.exists(f"/tmp/{token}")


def test_reading_the_callers_files_fails(sandbox, tmp_path):
    if os.geteuid() != 0 and sandbox.isolation == "process":
        pytest.skip("process mode without root runs as the caller's uid (documented)")
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    tmp_path.chmod(0o700)
    paths = [str(secret)] + (["/etc/shadow"] if os.path.exists("/etc/shadow") else [])
    code = f"got = []\nfor p in {paths!r}:\n    try:\n        got.append(open(p).read())\n" \
           "    except Exception:\n        pass\n"
    res = sandbox.run(Program(code, ["assert got == []"]))
    assert res.outcomes == [True]


def test_opening_a_socket_fails(sandbox):
    code = "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n" + GOOD
    assert run(sandbox, code).passed == 0
    code = "import _socket\ns = _socket.socket()\n" + GOOD
    assert run(sandbox, code).passed == 0


def test_killing_the_parent_fails_and_the_caller_survives(sandbox):
    for target in ("os.getppid()", "0", "-1", "1"):
        res = run(sandbox, f"import os\nos.kill({target}, 9)\n" + GOOD)
        assert res.passed == 0, target
    assert run(sandbox, GOOD).passed == 2


def test_printing_1_gb_is_cut_off(sandbox):
    start = time.monotonic()
    res = run(sandbox, "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n" + GOOD)
    assert res.status == "output_limit" and res.passed == 0
    assert len(res.stdout) <= sandbox.max_output_bytes
    assert time.monotonic() - start < sandbox.timeout_s


def test_exiting_before_the_tests_fails(sandbox):
    res = run(sandbox, "import sys\nsys.exit(0)\n" + GOOD)
    assert (res.status, res.passed) == ("error", 0)
    for code in ("import os\nos._exit(0)\n", "import os\nos.abort()\n", "raise SystemExit(0)\n"):
        assert run(sandbox, code + GOOD).passed == 0, code


HOSTILE = {
    "fake result lines": "import os\nfor fd in range(3, 64):\n    try:\n"
                         "        os.write(fd, b'0 0 1\\n0 1 1\\n0 done -\\n')\n    except OSError:\n        pass\n",
    "fake stdout": "print('0 0 1\\n0 1 1\\nok 2/2 passed')\n",
    "patch exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "patch builtins": "import builtins\nbuiltins.AssertionError = None\nbuiltins.len = lambda x: 0\n",
    "patch harness module": "import sys\nm = sys.modules['__main__']\nfor k in list(vars(m)):\n"
                            "    if not k.startswith('__'):\n        setattr(m, k, None)\n",
    "always-equal object": "class A:\n    def __eq__(self, o):\n        return True\n"
                           "def g(x):\n    return A()\n",
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                    "def g(x):\n    return I(0)\n",
    "gc search": "import gc\nfor o in gc.get_objects():\n    pass\n",
    "frame walk": "import sys\nf = sys._getframe(0)\n",
    "traceback frame": "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n",
    "settrace": "import sys\nsys.settrace(lambda *a: None)\n",
    "audit hook": "import sys\nsys.addaudithook(lambda *a: None)\n",
    "read /proc memory": "open('/proc/self/mem', 'rb')\n",
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_tampering_with_the_harness_gets_no_credit(sandbox, attack):
    # A wrong solution plus the attack: an attack that worked would show passing tests.
    code = HOSTILE[attack] + "def f(x):\n    return g(x) if 'g' in globals() else 0\n"
    res = run(sandbox, code)
    assert res.passed == 0, (attack, res)


def test_run_many_streams_results_in_parallel():
    sandbox = Sandbox(timeout_s=3.0, workers=2)
    programs = [Program(f"def f(x):\n    return x + {k}\n", TESTS, candidate="f") for k in (1, 0, 1, 5)]
    seen = []
    results = sandbox.run_many(programs, callback=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    assert [r.passed for r in results] == [2, 0, 2, 0]
    assert sorted(i for i, _ in sandbox.imap(programs)) == [0, 1, 2, 3]


def test_a_crashing_program_does_not_take_the_caller_down(sandbox):
    res = run(sandbox, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n" + GOOD)
    assert res.status == "crashed" and res.passed == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout_s": 0}, "timeout_s must be a positive number"),
    ({"memory_mb": -1}, "memory_mb must be a positive number"),
    ({"isolation": "vm"}, "isolation must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sandbox(**kwargs)


def test_bad_program():
    with pytest.raises(ValueError, match="Program.tests must be a list of str"):
        Program("x = 1", "assert x")
    with pytest.raises(ValueError, match="Program.counts must have one bool per test"):
        Program("x = 1", ["assert x"], counts=[True, False])


def test_no_unshare_binary_leaves_process_mode(monkeypatch):
    import bonfast.tasks.sandbox as sb

    sb.isolation_available.cache_clear()
    monkeypatch.setattr(sb.shutil, "which", lambda name: None)
    try:
        assert sb.isolation_available() == "process"
        with pytest.raises(ValueError, match="isolation='namespace' needs root"):
            Sandbox(isolation="namespace")
    finally:
        sb.isolation_available.cache_clear()
