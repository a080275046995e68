"""Starting Firecracker through the jailer (a step), waiting for its API, and stopping it.

Why no `--daemonize`: the jailer's daemonize mode points Firecracker's stdout at /dev/null, and
Firecracker's serial console *is* its stdout (a config file cannot name a serial output; PUT /serial
is pre-boot only and a config file boots at once). The guest's console carries the ready marker and
the host keys we pin, so we detach the jailer ourselves (new session, stdin /dev/null) and hand it
the console log as stdout; `--new-pid-ns` makes the jailer exit right after spawning Firecracker,
so we still learn the jailer's exit status and its error message.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.state import pid_alive, process_start_time
from sealbox.sandbox.steps import Step
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.api import FirecrackerClient, uds_path
from sealbox.sandbox.vmm.firecracker.jailer import JailLayout

log = logging.getLogger("sealbox.firecracker")
API_SOCK_MODE = 0o200  # only the VMM user (and root) may connect
_POLL = 0.05


def _tail(path: Path, offset: int = 0, lines: int = 4) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(64 * 1024).decode(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in data.splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def remove_stale_socket(path: Path) -> bool:
    """Remove a leftover API socket (Firecracker cannot bind over it). Refuses to remove non-sockets."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise SandboxError(f"{path} exists and is not a socket", hint="remove it by hand if it is stale")
    os.unlink(path)
    return True


def socket_answers(path: Path, timeout: float = 0.5) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with uds_path(path) as name:
            s.connect(name)
        return True
    except OSError:
        return False
    finally:
        s.close()


def read_pid(pid_file: Path) -> int | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def wait_exit(pid: int, start_time: int | None, timeout: float) -> bool:
    """True once `pid` (that process, not a reuse of its number) is gone; bounded by `timeout`."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid, start_time):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def kill(pid: int, start_time: int | None, timeout: float = 5.0) -> None:
    if not pid_alive(pid, start_time):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_exit(pid, start_time, timeout):
        raise SandboxError(f"firecracker pid {pid} did not die after SIGKILL within {timeout:g}s")


def remove_cgroup(path: Path, timeout: float = 3.0) -> None:
    """Kill what is left in a jailer cgroup and rmdir it (cgroup dirs go with rmdir, not unlink)."""
    if not path.is_dir():
        return
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            for line in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(line), signal.SIGKILL)
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise SandboxError(f"cannot remove cgroup {path}: {e.strerror}") from None
        time.sleep(_POLL)


class FirecrackerJailerStep(Step):
    """Run the jailer; wait for Firecracker's pid file and API socket; lock the socket down."""

    kind = "firecracker-jailer"
    argv: tuple[str, ...]
    layout: JailLayout
    owner: str  # same marker as the stage step: only ever kill/remove what belongs to this sandbox
    netns: Path | None
    console_log: Path
    stderr_log: Path
    cgroup_version: int
    cgroup_controllers: tuple[str, ...]
    cgroup_parent: str | None = None  # the jailer's --parent-cgroup (None: its default, exec_name)
    launcher: tuple[str, ...] = ()  # exec'd in front of argv: systemd-run --scope ... (host/systemd_scope.py)
    start_timeout: float = 10.0
    api_timeout: float = 5.0
    restore: dict[str, str] | None = None  # {"snapshot_path", "mem_file_path", "iface_id", "host_dev_name"} in the jail

    def describe(self) -> str:
        return f"start firecracker via the jailer (jail {self.layout.root})"

    def _ours(self) -> bool:
        try:
            return self.layout.marker.read_text().strip() == self.owner
        except OSError:
            return not self.layout.jail_dir.exists()  # no jail: nothing of another sandbox lives here

    def do(self) -> dict[str, Any]:
        lay = self.layout
        if self.netns is not None and not self.netns.exists():
            raise SandboxError(f"network namespace handle {self.netns} does not exist", hint="the sandbox's netns step must run first")
        if not Path(self.argv[0]).is_file():
            raise SandboxError(f"jailer binary {self.argv[0]} not found", hint="set SEALBOX_JAILER or install it on PATH")
        remove_stale_socket(lay.api_sock)
        with contextlib.suppress(FileNotFoundError):
            lay.pid_file.unlink()  # the jailer opens it create_new
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        err_offset = _size(self.stderr_log)
        with open(self.console_log, "ab") as out, open(self.stderr_log, "ab") as err:
            proc = subprocess.Popen([*self.launcher, *self.argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True, cwd="/")
        try:
            rc = proc.wait(timeout=self.start_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise SandboxError(f"the jailer did not exit within {self.start_timeout:g}s: {_tail(self.stderr_log, err_offset) or 'no output'}") from None
        if rc != 0:
            raise SandboxError(f"the jailer failed (exit {rc}): {_tail(self.stderr_log, err_offset) or 'no output'}")
        pid = read_pid(lay.pid_file)
        if pid is None:
            raise SandboxError(f"the jailer exited without writing {lay.pid_file}")
        start = process_start_time(pid)
        self._wait_api(pid, start, err_offset)
        os.chmod(lay.api_sock, API_SOCK_MODE)
        if self.restore:
            client = FirecrackerClient(lay.api_sock, self.api_timeout)
            overrides = [{"iface_id": self.restore["iface_id"], "host_dev_name": self.restore["host_dev_name"]}]
            client.load_snapshot(self.restore["snapshot_path"], self.restore["mem_file_path"], resume_vm=True,
                                 network_overrides=overrides)
        return {"pid": pid, "start_time": start, "api_sock": str(lay.api_sock)}

    def _wait_api(self, pid: int, start: int | None, err_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        sock = self.layout.api_sock
        while True:
            if sock.exists() and socket_answers(sock):
                return
            if not pid_alive(pid, start):
                detail = _tail(self.stderr_log, err_offset) or _tail(self.layout.host(J.LOG_FILE)) or "no output"
                raise SandboxError(f"firecracker (pid {pid}) exited during start-up: {detail}")  # its log goes with the sandbox
            if time.monotonic() >= deadline:
                raise SandboxError(f"firecracker's API socket {sock} did not come up within {self.start_timeout:g}s")
            time.sleep(_POLL)

    def undo(self, outputs: dict[str, Any]) -> None:
        lay = self.layout
        ours = self._ours()
        if outputs.get("pid"):
            kill(int(outputs["pid"]), outputs.get("start_time"))
        elif ours:
            pid = read_pid(lay.pid_file)
            if pid is not None and _is_jailed_firecracker(pid, lay):
                kill(pid, None)
        if ours:
            for cg in J.jailer_cgroup_dirs(self.cgroup_version, list(self.cgroup_controllers), lay.exec_name, lay.jail_id,
                                           parent=self.cgroup_parent):
                remove_cgroup(cg)
            with contextlib.suppress(FileNotFoundError, SandboxError):
                remove_stale_socket(lay.api_sock)


def _is_jailed_firecracker(pid: int, lay: JailLayout) -> bool:
    """A pid from a pid file is trusted only if that process is firecracker started with our jail id
    (its root and exe paths are those of another mount namespace, so compare the command line)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in args]
    return bool(words) and Path(words[0]).name == lay.exec_name and (
        f"--id={lay.jail_id}" in words or any(a == "--id" and b == lay.jail_id for a, b in zip(words, words[1:])))


def stop_vm(api_sock: Path, pid: int, start_time: int | None, timeout: float, api_timeout: float = 2.0) -> str:
    """SendCtrlAltDel, wait up to `timeout` for Firecracker to exit, then SIGKILL. Returns how it ended."""
    if not pid_alive(pid, start_time):
        return "not running"
    try:
        FirecrackerClient(api_sock, min(api_timeout, max(timeout, 0.1))).send_ctrl_alt_del()
    except SandboxError as e:
        log.info("SendCtrlAltDel failed, killing: %s", e)
    else:
        if wait_exit(pid, start_time, timeout):
            return "shut down"
    kill(pid, start_time)
    return "killed"
