"""Master SSH connections: one per (sandbox, guest user), so a command costs a session, not a handshake.

Under TCG a new SSH connection to a guest takes about a second (key exchange in the emulated guest); a
session multiplexed over an open connection about a tenth of that. A master is a child of this process
(`ssh -N -M`, started in the sandbox's netns) whose control socket lives in a private 0700 directory; it is
killed when this process ends, also by SIGKILL (setpriv --pdeathsig, armed from one long-lived thread: the
signal follows the thread that forked), and when the SDK removes or stops the sandbox. If it is not up, or
all its sessions are taken (sshd's MaxSessions defaults to 10), a command connects by itself: masters only
ever make things faster, never required. The socket directory is named after its process (pid and start
time); one left by a process that was killed is removed by the next one that makes its own. A sandbox removed
by another process (`sealbox rm`) loses its master within WATCH seconds: a watcher ends masters whose sandbox
directory is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import queue
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.sandbox import ssh
from sealbox.sandbox.state import pid_alive, process_start_time

DIR_PREFIX = "sealbox-ssh-"
SESSIONS = 8  # below sshd's default MaxSessions (10): one spare for `kill`
READY_WAIT = 30.0
WATCH = 2.0


@dataclass
class Master:
    proc: subprocess.Popen[bytes]
    control: Path
    sessions: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(SESSIONS))

    def alive(self) -> bool:
        return self.proc.poll() is None and self.control.exists()


class _Spawner:
    """Starts processes from one thread that lives as long as this process (pdeathsig follows that thread)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        threading.Thread(target=self._loop, daemon=True, name="sealbox-ssh-masters").start()

    def _loop(self) -> None:
        while True:
            fn, reply = self.jobs.get()
            try:
                reply.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                reply.put((False, e))

    def call(self, fn: Callable[[], Any]) -> Any:
        reply: queue.Queue[Any] = queue.Queue()
        self.jobs.put((fn, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value


class Masters:
    """The master connections of this process, keyed by (state dir, sandbox, user)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._masters: dict[tuple[str, str, str], Master] = {}
        self._starting: dict[tuple[str, str, str], threading.Event] = {}
        self._dir: Path | None = None
        self._spawner: _Spawner | None = None
        self._watcher: threading.Thread | None = None

    def _socket_dir(self) -> Path:
        if self._dir is None:
            sweep(Path(tempfile.gettempdir()))
            pid = os.getpid()
            # 0700: a socket in it is a root login to the guest
            self._dir = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{pid}-{process_start_time(pid)}-"))
            atexit.register(self.close_all)
        return self._dir

    def acquire(self, t: ssh.SshTarget, user: str) -> tuple[Path, threading.BoundedSemaphore] | None:
        """The control socket of a live master with a free session slot (taken: release it when the
        session ends), starting the master if needed; None: connect directly."""
        key = (str(t.state_root), t.name, user)
        for _ in range(3):
            with self._lock:
                m = self._masters.get(key)
                if m is not None and m.alive():
                    return (m.control, m.sessions) if m.sessions.acquire(blocking=False) else None
                if m is not None:
                    self._drop(key)
                event = self._starting.get(key)
                mine = event is None
                if event is None:
                    event = self._starting[key] = threading.Event()
            if not mine:  # another thread is starting it: wait for that, then look again
                event.wait(READY_WAIT)
                continue
            master = None
            try:
                master = self._start(t, user, key)
            finally:
                with self._lock:
                    if master is not None:
                        self._masters[key] = master
                        self._watch()
                    self._starting.pop(key).set()
            if master is None:
                return None
        return None

    def _start(self, t: ssh.SshTarget, user: str, key: tuple[str, str, str]) -> Master | None:
        started: Master | None = None
        name = hashlib.sha256("\0".join(key).encode()).hexdigest()[:20]
        control = self._socket_dir() / f"{name}.sock"
        with contextlib.suppress(FileNotFoundError):
            control.unlink()  # a master of this key that died left it
        argv = ssh.in_netns_argv(t.netns, ssh.master_argv(t, control, user=user))
        if self._spawner is None:
            self._spawner = _Spawner()
        proc: subprocess.Popen[bytes] = self._spawner.call(
            lambda: subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + READY_WAIT
        while time.monotonic() < deadline and proc.poll() is None:
            if control.exists():  # ssh listens on it once the connection is authenticated
                started = Master(proc, control)
                break
            time.sleep(0.02)
        if started is None:
            _stop(proc)
        return started

    def _watch(self) -> None:
        """Start the watcher (caller holds the lock)."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, daemon=True, name="sealbox-ssh-watch")
            self._watcher.start()

    def _watch_loop(self) -> None:
        while True:
            time.sleep(WATCH)
            with self._lock:
                for key in [k for k in self._masters if not (Path(k[0]) / "sandboxes" / k[1]).is_dir()]:
                    self._drop(key)  # removed behind our back: do not hold its namespace any longer

    def _drop(self, key: tuple[str, str, str]) -> None:
        m = self._masters.pop(key, None)
        if m is not None:
            _stop(m.proc)
            with contextlib.suppress(FileNotFoundError):
                m.control.unlink()

    def close(self, state_root: Path, name: str) -> None:
        """End every master of sandbox `name` (before it is stopped or removed)."""
        with self._lock:
            for key in [k for k in self._masters if k[:2] == (str(state_root), name)]:
                self._drop(key)

    def close_all(self) -> None:
        with self._lock:
            for key in list(self._masters):
                self._drop(key)
            if self._dir is not None and os.getpid() == self._owner_pid:
                shutil.rmtree(self._dir, ignore_errors=True)

    _owner_pid = os.getpid()


def sweep(parent: Path) -> list[Path]:
    """Remove the socket directories under `parent` of this user's processes that are gone (killed before their
    exit handler ran); returns them. Only directories named by this module, owned by us, not symlinks."""
    removed = []
    for d in parent.glob(f"{DIR_PREFIX}*"):
        pid, _, rest = d.name[len(DIR_PREFIX) :].partition("-")
        start = rest.partition("-")[0]
        try:
            st = d.lstat()
        except OSError:
            continue
        if not (pid.isdigit() and start.isdigit() and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()):
            continue
        if not pid_alive(int(pid), int(start)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


MASTERS = Masters()
