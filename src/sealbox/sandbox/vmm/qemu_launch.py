"""Starting, stopping and inspecting a jailed QEMU: the host steps behind QemuBackend.

Launch (QemuStartStep.do, as root): open every object in the plan's fd table (QMP listening socket,
console log, the TAP inside the sandbox netns, drives, kernel), then double-fork: the VMM becomes a
session leader re-parented away from `sealbox run` (it must outlive it), joins the sandbox cgroup
and gets its rlimits *before* exec, and has each fd placed at its planned number. The recorded pid +
start time identify it later; the cgroup is what reliably kills it and anything it spawned.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Literal

from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups, jail
from sealbox.sandbox.host.nsenter import enter_net
from sealbox.sandbox.model import VmPlan
from sealbox.sandbox.state import SandboxRecord, pid_alive, process_start_time
from sealbox.sandbox.steps import Step
from sealbox.sandbox.vmm.qemu import FdFile, QemuCommand, mode_of, tdx_support
from sealbox.sandbox.vmm.qmp import QmpClient, QmpError
from sealbox.util import atomic
from sealbox.util.pipes import read_until_eof
from sealbox.util.run import which
from sealbox.util.unixpath import short_path

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
NETNS_DIR = Path("/var/run/netns")
QEMU_COMM = "qemu-system-x86"  # /proc/PID/comm is cut at 15 characters


# ---- host checks ------------------------------------------------------------------------------

def check_host(plan: VmPlan, cmd: QemuCommand) -> None:
    for tool in ("qemu-system-x86_64", "bwrap", "setpriv"):
        which(tool)
    if plan.spec.tdx:
        ok, why = tdx_support()
        if not ok:
            raise SandboxError(f"--tdx cannot run on this host: {why}", hint="use a TDX-enabled host; --dry-run still shows the command line")
        if not plan.mrconfigid:  # a TD that any instance disk could configure proves nothing about who holds the keys
            raise SandboxError("refusing to start a TD whose MRCONFIGID is not bound to its instance data", hint="this is a bug in sealbox")
    if plan.accel == "kvm" or mode_of(plan.spec) == "tdx":
        _check_kvm_access(cmd)
    for f in cmd.fds:
        if f.kind != "file" or f.path == cmd.vars_copy:
            continue
        p = Path(f.path)
        if not p.is_file():
            raise SandboxError(f"VM file {p} does not exist", hint="rebuild the image or fix the --disk path")
        # kernel/initrd/UKI/firmware are reopened by the unprivileged VMM through /proc/self/fd
        if f"/proc/self/fd/{f.fd}" in cmd.qemu_argv and not p.stat().st_mode & 0o004:
            raise SandboxError(f"{p} is not world-readable; the unprivileged VMM reopens it", hint=f"chmod o+r {p}")


def _check_kvm_access(cmd: QemuCommand, dev: Path = Path("/dev/kvm")) -> None:
    """The jailed VMM opens /dev/kvm as its own uid: it needs o+rw or the kvm group it is given."""
    try:
        st = dev.stat()
    except OSError:
        raise SandboxError(f"KVM was selected but {dev} does not exist", hint="use --accel tcg") from None
    groups = cmd.argv[cmd.argv.index("--groups") + 1] if "--groups" in cmd.argv else None
    if st.st_mode & 0o006 == 0o006 or (groups == str(st.st_gid) and st.st_mode & 0o060 == 0o060):
        return
    raise SandboxError(
        f"{dev} (mode {st.st_mode & 0o777:o}, gid {st.st_gid}) is not usable by the unprivileged VMM user",
        hint="make it root:kvm 0660 (udev rule) and put the VMM user in kvm, or use --accel tcg",
    )


# ---- steps ------------------------------------------------------------------------------------

class RunDirStep(Step):
    """The VMM's per-sandbox files: console log, QMP socket, OVMF VARS copy, QEMU's stderr log.

    They stay root-owned (0600): QEMU writes them only through fds handed to it.
    """

    kind = "qemu-rundir"
    run_dir: str
    console_log: str
    qmp_socket: str
    agent_socket: str | None = None
    vars_template: str | None = None
    vars_copy: str | None = None

    def describe(self) -> str:
        extra = f" + OVMF VARS copy {self.vars_copy}" if self.vars_copy else ""
        return f"run dir {self.run_dir} (console {self.console_log}{extra})"

    def do(self) -> dict[str, Any]:
        run_dir = Path(self.run_dir)
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.console_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        if self.vars_copy and self.vars_template:
            atomic.write_bytes(Path(self.vars_copy), Path(self.vars_template).read_bytes(), mode=0o600)
        return {}

    def undo(self, outputs: dict[str, Any]) -> None:
        for p in (self.qmp_socket, self.agent_socket, self.vars_copy):
            if p:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
        with contextlib.suppress(OSError):
            Path(self.run_dir).rmdir()  # kept if logs remain: they are for `sealbox logs` until `rm`


class QemuStartStep(Step):
    kind = "qemu-start"
    name: str
    argv: list[str]
    fds: list[FdFile]
    cgroup_procs: list[str]
    rlimits: list[tuple[int, int, int]]
    launcher: list[str] = []  # exec'd in front of argv: systemd-run --scope ... (host/systemd_scope.py)
    join_cgroup: bool = True  # the child writes itself into cgroup_procs (not when systemd-run does it)
    qmp_socket: str
    vmm_log: str
    start_timeout: float = 30.0

    def describe(self) -> str:
        return f"start QEMU jailed as {self.argv[2]}:{self.argv[4]} in cgroup {Path(self.cgroup_procs[0]).parent if self.cgroup_procs else '-'}"

    def do(self) -> dict[str, Any]:
        pid = spawn(self)
        out: dict[str, Any] = {"pid": pid, "start_time": process_start_time(pid)}
        try:
            wait_ready(self, pid)
        except BaseException:
            self.undo(out)
            raise
        qpid = find_qemu(self.cgroup_dirs())
        out["qemu_pid"] = qpid
        return out

    def cgroup_dirs(self) -> list[Path]:
        return [Path(p).parent for p in self.cgroup_procs]

    def undo(self, outputs: dict[str, Any]) -> None:
        pid, start = outputs.get("pid"), outputs.get("start_time")
        if Path(self.qmp_socket).exists() and (pid is None or pid_alive(pid, start)):
            try:
                with QmpClient(self.qmp_socket, timeout=2.0) as q:
                    q.execute("quit")
            except QmpError:
                pass  # not answering: the cgroup kill below handles it
        _wait_gone(pid, start, self.cgroup_dirs(), 3.0)
        if pid and pid_alive(pid, start):
            os.kill(pid, signal.SIGKILL)
        left = cgroups.kill_all(self.cgroup_dirs())
        if left:
            raise SandboxError(f"QEMU processes {left} survived SIGKILL", hint="retry with 'sealbox gc'")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.qmp_socket)


def steps(plan: VmPlan, cmd: QemuCommand) -> list[Step]:
    cg = cgroups.CgroupStep.from_plan(plan.cgroup, cgroups.detect())
    rundir = RunDirStep(
        run_dir=cmd.run_dir, console_log=str(plan.console_log), qmp_socket=cmd.qmp_socket, agent_socket=cmd.agent_socket,
        vars_template=cmd.vars_template, vars_copy=cmd.vars_copy,
    )
    limits = [(res, soft, hard) for res, (soft, hard) in jail.rlimits(plan.spec.limits).items()]
    start = QemuStartStep(
        name=plan.spec.name, argv=cmd.argv, fds=cmd.fds, cgroup_procs=[str(p) for p in cg.procs_files()],
        launcher=cg.launch_prefix(), join_cgroup=cg.joins(), rlimits=limits, qmp_socket=cmd.qmp_socket, vmm_log=cmd.vmm_log,
        start_timeout=min(plan.spec.timeout, 60.0),
    )
    return [cg, rundir, start]


# ---- launching --------------------------------------------------------------------------------

def open_tap(netns: str, ifname: str) -> int:
    """Open TAP `ifname` (already created, persistent) inside netns `netns`; returns the fd.

    setns() changes the namespace of the calling *thread* only, so a short-lived thread does it and
    the caller's namespace is untouched. The fd stays bound to the TAP in that namespace.
    """
    result: dict[str, Any] = {}

    def worker() -> None:
        try:
            nsfd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            result["error"] = f"network namespace {netns!r} not found ({e.strerror})"
            return
        try:
            try:
                enter_net(nsfd)
            except OSError as e:
                result["error"] = f"setns into {netns!r} failed: {e.strerror}"
                return
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
            except OSError as e:
                os.close(fd)
                result["error"] = f"cannot attach to TAP {ifname!r} in {netns!r}: {e.strerror}"
                return
            result["fd"] = fd
        except OSError as e:
            result["error"] = f"cannot open /dev/net/tun: {e.strerror}"
        finally:
            os.close(nsfd)

    t = threading.Thread(target=worker, name="sealbox-tap")
    t.start()
    t.join()
    if "fd" not in result:
        raise SandboxError(result.get("error", "TAP open failed"), hint="was the sandbox network set up? see 'sealbox doctor'")
    return int(result["fd"])


def _open_fd(f: FdFile) -> int:
    if f.kind in ("qmp", "agent"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            with short_path(f.path) as name:
                s.bind(name)
        finally:
            os.umask(old)
        s.listen(8)
        return s.detach()
    if f.kind == "tap":
        return open_tap(f.path, f.ifname)
    if f.kind == "console":
        return os.open(f.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}[f.access]
    try:
        return os.open(f.path, flags | os.O_CLOEXEC)
    except OSError as e:
        raise SandboxError(f"cannot open VM file {f.path}: {e.strerror}", hint="check the image and --disk paths") from None


def spawn(step: QemuStartStep) -> int:
    """Start the jailed VMM detached; returns the pid of the jail's outermost process."""
    opened: list[tuple[int, int]] = []  # (target, source)
    try:
        for f in step.fds:
            opened.append((f.fd, _open_fd(f)))
        log_fd = os.open(step.vmm_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        opened.append((-1, log_fd))
        return _double_fork(step, [(t, s) for t, s in opened if t >= 0], log_fd)
    finally:
        for _t, s in opened:
            os.close(s)


def _double_fork(step: QemuStartStep, fds: list[tuple[int, int]], log_fd: int) -> int:
    pid_r, pid_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first == 0:  # intermediate: start the VMM in its own session, report its pid, vanish
        try:
            os.setsid()
            vmm = os.fork()
            if vmm == 0:
                _exec_vmm(step, fds, log_fd, err_w)  # never returns
            os.write(pid_w, str(vmm).encode())
        finally:
            os._exit(0)
    os.close(pid_w)
    os.close(err_w)
    os.waitpid(first, 0)
    try:
        pid_text = os.read(pid_r, 64).decode()
        err = read_until_eof(err_r, time.monotonic() + 10)  # EOF once the VMM exec'd (the pipe is close-on-exec)
    finally:
        os.close(pid_r)
        os.close(err_r)
    if err or not pid_text:
        raise SandboxError(f"cannot start QEMU: {err.decode(errors='replace') or 'fork failed'}")
    return int(pid_text)


def _exec_vmm(step: QemuStartStep, fds: list[tuple[int, int]], log_fd: int, err_w: int) -> None:
    try:
        if step.join_cgroup:
            cgroups.join([Path(p) for p in step.cgroup_procs])  # before exec: nothing runs outside the limits
        jail.apply_rlimits({res: (soft, hard) for res, soft, hard in step.rlimits})
        # move sources out of the way first so that placing one fd never clobbers another source
        high = [(target, fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, 1000)) for target, src in fds]
        log_fd = fcntl.fcntl(log_fd, fcntl.F_DUPFD_CLOEXEC, 1000)
        for target, src in high:
            os.dup2(src, target, inheritable=True)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        keep = {0, 1, 2, *(t for t, _s in fds)}
        for name in os.listdir("/proc/self/fd"):  # nothing inherited by sealbox leaks into the VMM
            if int(name) not in keep:
                with contextlib.suppress(OSError):
                    os.set_inheritable(int(name), False)
        argv = [*step.launcher, *step.argv]
        os.execv(argv[0], argv)
    except BaseException as e:  # noqa: BLE001 - report anything to the parent, then die
        try:
            os.write(err_w, f"{type(e).__name__}: {e}".encode())
        finally:
            os._exit(127)


def _tail(path: str, lines: int = 5) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def wait_ready(step: QemuStartStep, pid: int) -> None:
    """QEMU is up once it answers on QMP; if it dies first, its stderr says why."""
    start = process_start_time(pid)
    deadline = time.monotonic() + step.start_timeout
    last = ""
    while time.monotonic() < deadline:
        if not pid_alive(pid, start):
            raise SandboxError(f"QEMU exited during start: {_tail(step.vmm_log) or 'no output'}")  # its log goes with the sandbox
        try:
            with QmpClient(step.qmp_socket, timeout=min(2.0, max(0.1, deadline - time.monotonic()))) as q:
                q.execute("query-status")
            return
        except QmpError as e:
            last = str(e)
            time.sleep(0.1)
    raise SandboxError(f"QEMU did not answer on QMP within {step.start_timeout:g}s: {last}; its log: {_tail(step.vmm_log) or 'empty'}")


def find_qemu(dirs: list[Path]) -> int | None:
    for pid in cgroups.pids_in(dirs):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == QEMU_COMM:
                return pid
        except OSError:
            continue
    return None


def _wait_gone(pid: int | None, start: int | None, dirs: list[Path], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (pid and pid_alive(pid, start)) and find_qemu(dirs) is None:
            return True
        time.sleep(0.05)
    return False


# ---- stop / inspect ---------------------------------------------------------------------------

def _entry(record: SandboxRecord, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for e in record.steps.entries:
        if e.kind == kind:
            return e.params, e.outputs
    raise SandboxError(f"sandbox {record.name!r} has no {kind} step in its record", hint="was it started by the QEMU backend?")


def stop(record: SandboxRecord, timeout: float) -> Literal["powerdown", "quit", "killed", "not-running"]:
    """ACPI power button first (the guest shuts down cleanly), then QMP quit, then SIGKILL via the cgroup."""
    params, outputs = _entry(record, QemuStartStep.kind)
    step = QemuStartStep.model_validate(params)
    pid, start = outputs.get("pid"), outputs.get("start_time")
    dirs = step.cgroup_dirs()
    if _wait_gone(pid, start, dirs, 0):
        return "not-running"
    how: Literal["powerdown", "quit", "killed", "not-running"] = "killed"
    try:
        with QmpClient(step.qmp_socket, timeout=2.0) as q:
            q.execute("system_powerdown")
        if _wait_gone(pid, start, dirs, timeout):
            return "powerdown"
        with QmpClient(step.qmp_socket, timeout=2.0) as q:
            q.execute("quit")
        how = "quit"
    except QmpError:
        pass
    if not _wait_gone(pid, start, dirs, 3.0):
        how = "killed"
        left = cgroups.kill_all(dirs)
        if left:
            raise SandboxError(f"QEMU processes {left} of {record.name!r} survived SIGKILL", hint="retry 'sealbox stop'")
    return how


def inspect(record: SandboxRecord) -> dict[str, Any]:
    params, outputs = _entry(record, QemuStartStep.kind)
    step = QemuStartStep.model_validate(params)
    info: dict[str, Any] = {"pid": outputs.get("pid"), "qemu_pid": find_qemu(step.cgroup_dirs()), "qmp_socket": step.qmp_socket}
    try:
        with QmpClient(step.qmp_socket, timeout=3.0) as q:
            info["status"] = q.execute("query-status")
            info["cpus"] = q.execute("query-cpus-fast")
            info["block"] = q.execute("query-block")
            info["chardev"] = q.execute("query-chardev")
            info["kvm"] = q.execute("query-kvm")
            info["memory"] = q.execute("query-memory-size-summary")
            info["qemu_version"] = q.greeting.get("QMP", {}).get("version", {}).get("qemu")
    except QmpError as e:
        info["error"] = str(e)
    return info

