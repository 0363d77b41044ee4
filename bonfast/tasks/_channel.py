"""The caller's end of a sandboxed run: framed requests and responses over pipes, the program's output drained
while waiting, and the `candidate` proxy the tests call (bonfast/tasks/sandbox.py)."""
from __future__ import annotations

import builtins
import os
import selectors
import subprocess
import time

from . import _callee
from ._callee import MAX_REPLY, WireError


class CandidateError(Exception):
    """The candidate raised an exception that is not a builtin one (its name is the message)."""


class ChannelDown(Exception):
    """The sandboxed process stopped answering (timeout, crash, limit, malformed frame)."""


class Channel:
    """The caller's end of one run: framed requests / responses, with the program's stdout / stderr drained
    (up to a cap) while waiting."""

    def __init__(self, proc: subprocess.Popen, req_w: int, resp_r: int, deadline: float, call_timeout_s: float,
                 max_output: int):
        self.proc, self.req_w, self.resp_r = proc, req_w, resp_r
        self.deadline, self.call_timeout_s, self.max_output = deadline, call_timeout_s, max_output
        os.set_blocking(req_w, False)  # a program that stops reading cannot block the caller past the deadline
        self.out = {"stdout": bytearray(), "stderr": bytearray()}
        self.inbox = bytearray()
        self.reason: str | None = None
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        self.sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        self.sel.register(resp_r, selectors.EVENT_READ, "resp")

    def fail(self, reason: str) -> ChannelDown:
        if self.reason is None:
            self.reason = reason
        return ChannelDown(self.reason)

    def _pump(self, until: float, want_frame: bool) -> None:
        """Read what is ready until a complete frame is in the inbox (want_frame) or `until`."""
        while True:
            if want_frame and self._frame_ready():
                return
            remaining = until - time.monotonic()
            if remaining <= 0:
                if want_frame:
                    raise self.fail("timeout")
                return
            if not self.sel.get_map():
                return
            for key, _ in self.sel.select(timeout=min(remaining, 0.5)):
                fd = key.fileobj if isinstance(key.fileobj, int) else key.fileobj.fileno()
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    if key.data == "resp" and want_frame and not self._frame_ready():
                        raise self.fail("crashed")
                    continue
                if key.data == "resp":
                    self.inbox += chunk
                    if len(self.inbox) > MAX_REPLY + 4:
                        raise self.fail("tampered")
                else:
                    buf = self.out[key.data]
                    buf += chunk
                    if len(buf) > self.max_output:
                        del buf[self.max_output:]
                        raise self.fail("output_limit")
            if want_frame and "resp" not in {k.data for k in self.sel.get_map().values()} \
                    and not self._frame_ready():
                raise self.fail("crashed")

    def _frame_ready(self) -> bool:
        if len(self.inbox) < 4:
            return False
        size = int.from_bytes(self.inbox[:4], "big")
        if size > MAX_REPLY:  # refused before it is read in full, let alone parsed
            raise self.fail("tampered")
        return len(self.inbox) >= 4 + size

    def receive(self, timeout_s: float | None = None) -> dict:
        if self.reason is not None:
            raise ChannelDown(self.reason)
        until = self.deadline if timeout_s is None else min(self.deadline, time.monotonic() + timeout_s)
        self._pump(until, want_frame=True)
        size = int.from_bytes(self.inbox[:4], "big")
        body = bytes(self.inbox[4:4 + size])
        del self.inbox[:4 + size]
        try:
            _callee.check_reply(body)
            msg = _callee.loads(body)
        except Exception:  # WireError; anything else a hostile reply could provoke ends the run, not the caller
            raise self.fail("tampered") from None
        if type(msg) is not dict or len(msg) not in (1, 2):
            raise self.fail("tampered")
        return msg

    def call(self, args: tuple, kwargs: dict):
        if self.reason is not None:
            raise ChannelDown(self.reason)
        try:
            payload = _callee.dumps({"a": _callee.encode(args), "k": _callee.encode(kwargs)})
        except (WireError, RecursionError) as err:  # the *test* passed something that is not plain data
            raise CandidateError(f"ungradable argument: {err}") from None
        try:
            self._write_all(payload)
        except OSError:  # BrokenPipeError: the sandbox is gone
            raise self.fail("crashed") from None
        msg = self.receive(self.call_timeout_s)
        if "r" in msg and len(msg) == 1:
            try:
                return _callee.decode(msg["r"])
            except (WireError, RecursionError, MemoryError) as err:
                raise CandidateError(f"not plain data: {err}") from None
        name = msg.get("x")
        if type(name) is not str or not name.isidentifier() or len(name) > 100 or not set(msg) <= {"x", "m"}:
            raise self.fail("tampered")
        exc = getattr(builtins, name, None)
        if isinstance(exc, type) and issubclass(exc, Exception) and not issubclass(exc, StopIteration) \
                and exc is not StopAsyncIteration:
            raise exc(f"raised by the candidate: {name}")
        raise CandidateError(name)

    def _write_all(self, payload: bytes) -> None:
        data = memoryview(_callee.frame(payload))
        while data:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise self.fail("timeout")
            with selectors.DefaultSelector() as sel:
                sel.register(self.req_w, selectors.EVENT_WRITE)
                if not sel.select(timeout=min(remaining, 0.5)):
                    self._pump(time.monotonic(), want_frame=False)
                    continue
            try:
                data = data[os.write(self.req_w, data[:1 << 16]):]
            except BlockingIOError:
                continue

    def drain(self, until: float) -> None:
        """Read stdout / stderr until both reach EOF (every process of the sandbox is gone) or `until`."""
        try:
            self.sel.unregister(self.resp_r)
        except (KeyError, ValueError):
            pass
        try:
            self._pump(until, want_frame=False)
        except ChannelDown:
            pass

    def close(self) -> None:
        self.sel.close()


class Candidate:
    """What the tests call `candidate`: forwards each call to the sandboxed program."""

    def __init__(self, channel: Channel, name: str):
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        return self._channel.call(args, kwargs)

    def __repr__(self):
        return f"<sandboxed candidate {self.__name__}>"
