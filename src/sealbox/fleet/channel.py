"""A command running on another host, as the SDK's Channel (pipes + poll/wait/kill): the caller's side of
execs.py. One thread pulls the output with the agent's `pump` (long polls) and writes it into local pipes,
which the SDK's Execution reads as it reads ssh's; a second one forwards stdin in chunks."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from typing import IO, Any

from sealbox.errors import SealboxError
from sealbox.fleet import wire
from sealbox.fleet.execs import CHUNK

AGENT_GONE = 255  # as ssh's own failure: the SDK says the command could not be run


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class RemoteChannel:
    def __init__(self, agent: Any, xid: int, *, stdin: bool) -> None:
        self.agent, self.xid = agent, xid
        self.returncode: int | None = None
        self._done = threading.Event()
        r_out, self._w_out = os.pipe()
        r_err, self._w_err = os.pipe()
        self.stdout: IO[bytes] | None = open(r_out, "rb")  # noqa: SIM115 - closed by whoever reads it to the end
        self.stderr: IO[bytes] | None = open(r_err, "rb")  # noqa: SIM115
        self.stdin: IO[bytes] | None = None
        if stdin:
            r_in, w_in = os.pipe()
            self.stdin = open(w_in, "wb")  # noqa: SIM115 - the SDK closes it at the end of its input
            threading.Thread(target=self._feed, args=(r_in,), daemon=True, name="sealbox-fleet-stdin").start()
        threading.Thread(target=self._pull, daemon=True, name="sealbox-fleet-pump").start()

    def _pull(self) -> None:
        import ray

        code = AGENT_GONE
        try:
            while True:
                try:
                    res = wire.pump(ray.get(self.agent.pump.remote(self.xid, 2.0)))
                except SealboxError as e:  # the agent refused, or answered garbage: the command is lost
                    _write_all(self._w_err, f"sealbox fleet: {e.message}\n".encode())
                    break
                if res.out:
                    _write_all(self._w_out, res.out)
                if res.err:
                    _write_all(self._w_err, res.err)
                if res.exit is not None:
                    code = res.exit
                    break
        except Exception as e:  # noqa: BLE001 - the agent died (its host left): the command is lost
            with contextlib.suppress(OSError):
                _write_all(self._w_err, f"sealbox fleet: the host agent went away: {type(e).__name__}\n".encode())
        finally:
            for fd in (self._w_out, self._w_err):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.returncode = code
            self._done.set()

    def _feed(self, fd: int) -> None:
        import ray

        try:
            with open(fd, "rb") as src:
                while chunk := src.read1(CHUNK):
                    if not ray.get(self.agent.write.remote(self.xid, chunk)):
                        break
        except Exception:  # noqa: BLE001 - the command ended or the agent went away: input is dropped, as in a pipe
            pass
        finally:
            with contextlib.suppress(Exception):
                ray.get(self.agent.write.remote(self.xid, b"", True))

    def poll(self) -> int | None:
        return self.returncode if self._done.is_set() else None

    def wait(self, timeout: float | None = None) -> int:
        if not self._done.wait(timeout):
            raise subprocess.TimeoutExpired("remote command", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.get(self.agent.kill_exec.remote(self.xid), timeout=10)
