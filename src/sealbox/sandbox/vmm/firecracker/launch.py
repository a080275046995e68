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
from sealbox.sandbox.vmm.firecracker import jailfs
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


def remove_stale_socket(lay: JailLayout) -> bool:
    """Remove a leftover API socket (Firecracker cannot bind over it); anything else there is refused."""
    try:
        with jailfs.open_root(lay.root) as root_fd:
            return jailfs.unlink(root_fd, J.API_SOCK, kind=stat.S_IFSOCK)
    except jailfs.JailRefusal:
        if not lay.root.exists():
            return False
        raise


def _uid(argv: tuple[str, ...]) -> int:
    """The VMM user, as the jailer was told (--uid)."""
    return int(argv[argv.index("--uid") + 1])


def socket_answers(path: Path, timeout: float = 0.5, jail_root: Path | None = None) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with uds_path(path, jail_root) as name:
            s.connect(name)
        return True
    except OSError:
        return False
    finally:
        s.close()


def in_cgroups(pid: int, dirs: list[Path]) -> bool:
    for d in dirs:
        with contextlib.suppress(OSError):
            if str(pid) in (d / "cgroup.procs").read_text().split():
                return True
    return False


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
        remove_stale_socket(lay)
        with jailfs.open_root(lay.root) as root_fd:  # the jailer opens its pid file create_new
            jailfs.unlink(root_fd, lay.pid_file.name, kind=stat.S_IFREG)
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
            raise SandboxError(f"the jailer did not exit within {self.start_timeout:g}s: "
                               f"{_tail(self.stderr_log, err_offset) or 'no output'}") from None
        if rc != 0:
            raise SandboxError(f"the jailer failed (exit {rc}): "
                               f"{_tail(self.stderr_log, err_offset) or 'no output'}")  # the log goes with the sandbox: its tail is here
        pid = self._vmm_pid(err_offset)
        start = process_start_time(pid)
        self._wait_api(pid, start, err_offset)
        with jailfs.open_root(lay.root) as root_fd:
            jailfs.chmod_socket(root_fd, J.API_SOCK, API_SOCK_MODE, uid=_uid(self.argv))
        if self.restore:
            client = FirecrackerClient(lay.api_sock, self.api_timeout, jail_root=lay.root)
            overrides = [{"iface_id": self.restore["iface_id"], "host_dev_name": self.restore["host_dev_name"]}]
            client.load_snapshot(self.restore["snapshot_path"], self.restore["mem_file_path"], resume_vm=True,
                                 network_overrides=overrides)
        return {"pid": pid, "start_time": start, "api_sock": str(lay.api_sock)}

    def _cgroups(self) -> list[Path]:
        lay = self.layout
        return J.jailer_cgroup_dirs(self.cgroup_version, list(self.cgroup_controllers), lay.exec_name, lay.jail_id,
                                    parent=self.cgroup_parent)

    def _vmm_pid(self, err_offset: int) -> int:
        """Firecracker's pid from the jailer's pid file. The file lies in the jail root, where the VMM
        (started before we read it) can replace it: trust only a root-owned regular file that names
        a process inside this jail's cgroups, which the VMM cannot move other processes into."""
        lay = self.layout
        what = f"use the pid file {lay.pid_file.name}"
        try:
            with jailfs.open_root(lay.root) as root_fd:
                text = jailfs.read_small(root_fd, lay.pid_file.name, what, uids=(0,)).decode(errors="replace").strip()
        except FileNotFoundError:
            raise SandboxError(f"the jailer exited without writing {lay.pid_file}") from None
        if not text.isdigit() or int(text) <= 0:
            raise jailfs.JailRefusal(f"refusing to {what}: {text[:40]!r} is not a pid", hint=jailfs.HINT)
        pid = int(text)
        if not pid_alive(pid):
            raise SandboxError(f"firecracker (pid {pid}) exited during start-up: {self._failure(err_offset)}", hint=f"see {self.stderr_log}")
        if not in_cgroups(pid, self._cgroups()):
            raise jailfs.JailRefusal(f"refusing to {what}: pid {pid} is not in the jail's cgroups", hint=jailfs.HINT)
        return pid

    def _failure(self, err_offset: int) -> str:
        return _tail(self.stderr_log, err_offset) or self._log_tail() or "no output"

    def _log_tail(self) -> str:
        """The last lines of Firecracker's own log, read only if it is still the VMM's regular file."""
        try:
            with jailfs.open_root(self.layout.root) as root_fd:
                data = jailfs.read_tail(root_fd, J.LOG_FILE, f"read {J.LOG_FILE}", uids=(_uid(self.argv),))
        except FileNotFoundError:
            return ""
        except jailfs.JailRefusal as e:
            return f"({e.message})"
        kept = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()][-4:]
        return " | ".join(kept)

    def _wait_api(self, pid: int, start: int | None, err_offset: int) -> None:
        deadline = time.monotonic() + self.start_timeout
        sock = self.layout.api_sock
        while True:
            if socket_answers(sock, jail_root=self.layout.root):
                return
            if not pid_alive(pid, start):
                raise SandboxError(f"firecracker (pid {pid}) exited during start-up: {self._failure(err_offset)}")  # its log goes with the sandbox
            if time.monotonic() >= deadline:
                raise SandboxError(f"firecracker's API socket {sock} did not come up within {self.start_timeout:g}s")
            time.sleep(_POLL)

    def undo(self, outputs: dict[str, Any]) -> None:
        lay = self.layout
        ours = self._ours()
        if outputs.get("pid"):
            kill(int(outputs["pid"]), outputs.get("start_time"))
        if ours:  # without a recorded pid (a crash), the cgroup kill below stops the VMM: no pid file is read
            for cg in self._cgroups():
                remove_cgroup(cg)
            try:
                remove_stale_socket(lay)
            except jailfs.JailRefusal as e:
                log.warning("%s (%s); the jail is removed with its stage step", e.message, jailfs.HINT)


def stop_vm(api_sock: Path, pid: int, start_time: int | None, timeout: float, api_timeout: float = 2.0,
            jail_root: Path | None = None) -> str:
    """SendCtrlAltDel, wait up to `timeout` for Firecracker to exit, then SIGKILL. Returns how it ended."""
    if not pid_alive(pid, start_time):
        return "not running"
    try:
        FirecrackerClient(api_sock, min(api_timeout, max(timeout, 0.1)), jail_root=jail_root).send_ctrl_alt_del()
    except SandboxError as e:
        log.info("SendCtrlAltDel failed, killing: %s", e)
    else:
        if wait_exit(pid, start_time, timeout):
            return "shut down"
    kill(pid, start_time)
    return "killed"
