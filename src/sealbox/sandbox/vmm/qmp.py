"""A small QMP client (QEMU Machine Protocol over a unix socket) with a deadline on every call.

QMP is line-delimited JSON: a greeting, then `qmp_capabilities`, then commands; asynchronous
events can arrive between a command and its reply and are collected, not mistaken for replies.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.util.unixpath import short_path


class QmpError(SandboxError):
    """QMP connection failure, timeout or an error reply."""


class QmpClient:
    def __init__(self, path: Path | str, timeout: float = 5.0) -> None:
        self.path = str(path)
        self.timeout = timeout
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.timeout)
        try:
            with short_path(self.path) as name:
                sock.connect(name)
        except OSError as e:
            sock.close()
            raise QmpError(f"cannot connect to QMP socket {self.path}: {e.strerror or e}", hint="is the VM running?") from None
        self._sock = sock
        deadline = time.monotonic() + self.timeout
        self.greeting = self._read_message(deadline)
        if "QMP" not in self.greeting:
            raise QmpError(f"unexpected QMP greeting on {self.path}: {str(self.greeting)[:120]}")
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"QMP on {self.path} did not answer within {self.timeout:g}s")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as e:
                raise QmpError(f"QMP connection {self.path} failed: {e.strerror or e}") from None
            if not chunk:
                raise QmpError(f"QMP connection {self.path} closed by QEMU")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            msg = json.loads(line)
        except ValueError:
            raise QmpError(f"QMP sent invalid JSON: {line[:80]!r}") from None
        if not isinstance(msg, dict):
            raise QmpError(f"QMP sent a non-object: {line[:80]!r}")
        return msg

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *, timeout: float | None = None,
                fds: list[int] | None = None) -> Any:
        """Send one command and return its `return` value; an `error` reply raises QmpError.

        `fds` travel with the command as SCM_RIGHTS (QMP `getfd`: QEMU then knows them by the name given)."""
        if self._sock is None:
            raise QmpError("QMP client is not connected")
        req: dict[str, Any] = {"execute": command}
        if arguments:
            req["arguments"] = arguments
        data = json.dumps(req).encode() + b"\n"
        try:
            if fds:
                sent = socket.send_fds(self._sock, [data], fds)
                if sent < len(data):
                    self._sock.sendall(data[sent:])
            else:
                self._sock.sendall(data)
        except OSError as e:
            raise QmpError(f"QMP send of {command} failed: {e.strerror or e}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                raise QmpError(f"QMP {command} failed: {err.get('class', '?')}: {err.get('desc', '')}")
            if "return" in msg:
                return msg["return"]

    def wait_event(self, name: str, timeout: float) -> dict[str, Any] | None:
        """Wait for an event (e.g. SHUTDOWN); None on timeout or when QEMU closes the socket."""
        for ev in self.events:
            if ev.get("event") == name:
                return ev
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self._read_message(deadline)
            except QmpError:
                return None
            if msg.get("event") == name:
                return msg
        return None
