"""Commands in flight on a host agent, handed to a remote caller in pieces.

The SDK runs a command as a Channel (sealbox.sdk.process): pipes plus poll/wait/kill. Across the fleet the
channel's process (the ssh session into the guest) runs on the agent's host; the caller pulls its output with
`pump` (a long poll: it returns as soon as there is output, or the end, or `wait` seconds passed) and pushes
its input with `write`. Output waiting to be pulled is bounded per stream (MAX_BUFFER): a reader that falls
behind stops the pipe, as a full pipe would, instead of growing the agent's memory.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

CHUNK = 256 * 1024
MAX_BUFFER = 4 * 1024 * 1024
MAX_PUMP = 1024 * 1024  # bytes per stream in one answer


class Exec:
    def __init__(self, channel: Any, end: Callable[[], None]) -> None:
        self.channel, self._end = channel, end
        self.cond = threading.Condition()
        self.bufs = [bytearray(), bytearray()]
        self.eof = [False, False]
        self.code: int | None = None
        self.touched = time.monotonic()
        for i, pipe in enumerate((channel.stdout, channel.stderr)):
            threading.Thread(target=self._read, args=(i, pipe), daemon=True, name=f"sealbox-exec-{i}").start()

    def _read(self, i: int, pipe: Any) -> None:
        try:
            while chunk := pipe.read1(CHUNK) if hasattr(pipe, "read1") else pipe.read(CHUNK):
                with self.cond:
                    while len(self.bufs[i]) >= MAX_BUFFER and self.code is None:
                        self.cond.wait(1.0)
                    self.bufs[i] += chunk
                    self.cond.notify_all()
        except (OSError, ValueError):
            pass
        finally:
            with self.cond:
                self.eof[i] = True
                self.cond.notify_all()

    def pump(self, wait: float) -> dict[str, Any]:
        """Output so far (up to MAX_PUMP per stream) and, once both pipes ended and were drained, the exit code."""
        deadline = time.monotonic() + wait
        with self.cond:
            self.touched = time.monotonic()
            while not (self.bufs[0] or self.bufs[1] or all(self.eof)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            out, err = bytes(self.bufs[0][:MAX_PUMP]), bytes(self.bufs[1][:MAX_PUMP])
            del self.bufs[0][: len(out)], self.bufs[1][: len(err)]
            self.cond.notify_all()
            drained = all(self.eof) and not self.bufs[0] and not self.bufs[1]
        code = None
        if drained:
            code = self.channel.wait()
            self.finish()
        return {"out": out, "err": err, "exit": code}

    def write(self, data: bytes) -> bool:
        """Feed the command's stdin; False once it stopped reading."""
        pipe = self.channel.stdin
        if pipe is None:
            return False
        try:
            pipe.write(data)
            pipe.flush()
        except (BrokenPipeError, ValueError, OSError):
            return False
        return True

    def close_stdin(self) -> None:
        if self.channel.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.channel.stdin.close()

    def kill(self) -> None:
        with contextlib.suppress(OSError, ProcessLookupError):
            self.channel.kill()

    def finish(self) -> None:
        end, self._end = self._end, _nothing
        end()


def _nothing() -> None:
    return None


class ExecTable:
    """The agent's commands in flight, by id. A command nobody pumped for IDLE_S is killed (its caller went away)."""

    IDLE_S = 120.0

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.items: dict[int, Exec] = {}

    def add(self, ex: Exec) -> int:
        with self._lock:
            xid = next(self._ids)
            self.items[xid] = ex
        return xid

    def get(self, xid: int) -> Exec:
        with self._lock:
            ex = self.items.get(xid)
        if ex is None:
            from sealbox.errors import SandboxError

            raise SandboxError(f"no command {xid} on this host (it ended, or the host agent restarted)")
        return ex

    def drop(self, xid: int) -> None:
        with self._lock:
            ex = self.items.pop(xid, None)
        if ex is not None:
            ex.kill()
            ex.finish()

    def reap_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [x for x, ex in self.items.items() if now - ex.touched > self.IDLE_S]
        for xid in idle:
            self.drop(xid)
