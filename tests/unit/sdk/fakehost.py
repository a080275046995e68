"""STAND-IN Host for SDK unit tests (not product code): no VM. A command's line runs in a local bash exactly as
sshd would run it in a guest (`$SHELL -c LINE` in a new session), so quoting, control lines, kill and timeouts
are exercised for real; create/remove/list keep records in memory and honour holder/cancel."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sealbox.errors import NotFound, SandboxError
from sealbox.sandbox.status import PsRow
from sealbox.sdk.options import CreateOptions


class FakeHost:
    def __init__(self, *, boot_s: float = 0.0, fail: int = 0, home: str | None = None, mute: int = 0) -> None:
        self.boxes: dict[str, dict[str, Any]] = {}
        self.boot_s, self.fail, self.home = boot_s, fail, home
        self.mute = mute  # the first `mute` sandboxes booted never answer a command (their commands exit 255 unstarted)
        self.muted: set[str] = set()
        self.created: list[str] = []
        self.removed: list[str] = []
        self.restored: dict[str, str] = {}  # member -> the snapshot it was created from
        self.snapshots: dict[str, str] = {}  # snapshot path -> the sandbox it was taken from
        self.lock = threading.Lock()

    def create(self, opts: CreateOptions, *, warn: Any = None, progress: Any = None, holder: int | None = None,
               cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        with self.lock:
            if self.fail:
                self.fail -= 1
                raise SandboxError("stand-in boot failure")
            self.boxes[opts.name] = {"status": "creating", "labels": dict(opts.labels), "holder": holder}
        deadline = time.monotonic() + self.boot_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel():
                with self.lock:
                    self.boxes.pop(opts.name, None)
                raise SandboxError("cancelled while waiting for the guest; the sandbox was removed")
            time.sleep(0.01)
        with self.lock:
            self.boxes[opts.name]["status"] = "running"
            self.created.append(opts.name)
            if opts.from_snapshot is not None:
                if opts.from_snapshot not in self.snapshots:
                    self.boxes.pop(opts.name)
                    raise SandboxError(f"stand-in: no snapshot {opts.from_snapshot}")
                self.restored[opts.name] = opts.from_snapshot
            if self.mute:
                self.mute -= 1
                self.muted.add(opts.name)
        return {"name": opts.name, "status": "running", "vmm": "fake", "accel": "none", "address": "10.0.0.2", "ready_s": 0.0, "run_s": 0.0}

    def plan(self, opts: CreateOptions) -> dict[str, Any]:
        return {"name": opts.name}

    def info(self, name: str) -> PsRow:
        with self.lock:
            box = self.boxes.get(name)
        if box is None:
            raise NotFound(f"no such sandbox: {name!r}")
        return PsRow(name=name, status=box["status"], labels=box["labels"])

    def list(self, *, all_: bool = False, labels: Mapping[str, str] | None = None) -> list[PsRow]:
        with self.lock:
            names = list(self.boxes)
        rows = [self.info(n) for n in names]
        return [r for r in rows if all(r.labels.get(k) == v for k, v in (labels or {}).items())]

    def remove(self, name: str, *, force: bool = False) -> None:
        with self.lock:
            if self.boxes.pop(name, None) is None:
                raise NotFound(f"no such sandbox: {name!r}")
            self.removed.append(name)

    def stop(self, name: str, timeout: float) -> str:
        self.boxes[name]["status"] = "stopped"
        return "poweroff"

    def inspect(self, name: str) -> dict[str, Any]:
        return {"name": name, **self.boxes[name]}

    def logs(self, name: str, *, follow: bool = False, max_seconds: float | None = None) -> Iterator[bytes]:
        yield b"SEALBOX-READY x\n"

    def spawn(self, name: str, remote: str, *, user: str | None, stdin: bool) -> tuple[Any, Callable[[], None]]:
        self.info(name)
        if name in self.muted:
            remote = "echo 'ssh: connect to host 10.0.0.2 port 22: Connection refused' >&2; exit 255"
        proc = subprocess.Popen(["/bin/bash", "-c", remote], stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, cwd=self.home,
                                env={"PATH": os.environ["PATH"], "SHELL": "/bin/bash", "HOME": self.home or "/"})
        return proc, lambda: None

    def disconnect(self, name: str) -> None:
        return None

    def snapshot(self, name: str, dest: Any = None, *, resume: bool = True) -> str:
        with self.lock:
            if self.boxes.get(name, {}).get("status") != "running":
                raise SandboxError(f"stand-in: {name} is not running")
            path = str(dest or f"/snapshots/{name}-{len(self.snapshots)}")
            self.snapshots[path] = name
            if not resume:
                self.boxes[name]["status"] = "paused"
        return path

    def remove_snapshots(self, name: str) -> list[str]:
        with self.lock:
            gone = [p for p, src in self.snapshots.items() if src == name]
            for p in gone:
                del self.snapshots[p]
        return gone
