"""Network namespaces: the NetnsStep, and running code or sockets inside a namespace.

Entering a namespace: setns(CLONE_NEWNET) changes the network namespace of the *calling thread*
only (it is a per-task attribute; Linux allows it in multi-threaded processes, unlike mount or
user namespaces). So `run_in_netns` starts a short-lived thread, enters the namespace there and runs
the function; the thread exits afterwards, so no other thread ever observes the change. Everything
that thread creates belongs to the namespace for good: a socket keeps the namespace it was created
in (so it can be used from any thread afterwards), a child process inherits it (so `nft` and other
tools run inside), and /proc/sys/net opened there shows that namespace's sysctls. Python 3.11 has
no os.setns, hence ctypes.

pyroute2 is imported inside functions: importing it costs ~0.3 s, which `sealbox ps` must not pay.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import socket
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sealbox.errors import SandboxError
from sealbox.sandbox.host import rtnl
from sealbox.sandbox.host.nsenter import CLONE_NEWNET, enter_net
from sealbox.sandbox.steps import Step, StepRefused

log = logging.getLogger("sealbox.netns")

MS_BIND, MS_REC, MS_SHARED = 0x1000, 0x4000, 1 << 20
MNT_DETACH = 2
LO_INDEX = 1  # loopback is the first device of every network namespace
TMP_PREFIX = ".sealbox-tmp-"  # placeholders being written (host/leftovers.py removes a crash's)
NETNS_RUN_DIR = Path("/var/run/netns")  # where iproute2 and pyroute2 bind-mount named namespaces
T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _libc_call(fn: str, *args: Any) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if getattr(_libc, fn)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{fn}: {os.strerror(err)}")


def netns_path(netns: str) -> Path:
    if not netns or "/" in netns or netns in (".", ".."):
        raise SandboxError(f"invalid network namespace name {netns!r}")
    return NETNS_RUN_DIR / netns


def netns_exists(netns: str) -> bool:
    return netns_path(netns).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir() if not p.name.startswith(TMP_PREFIX))
    except FileNotFoundError:
        return []


def placeholder_temps() -> dict[Path, str | None]:
    """Placeholder files a crash left under their temporary names -> the mark they hold."""
    found: dict[Path, str | None] = {}
    for p in NETNS_RUN_DIR.glob(f"{TMP_PREFIX}*") if NETNS_RUN_DIR.is_dir() else []:
        found[p] = None
        if p.is_file() and not p.is_symlink():
            with contextlib.suppress(OSError):
                found[p] = p.read_text(errors="replace").strip() or None
    return found


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run `fn` in a fresh thread inside `netns` (None: the current namespace, no thread)."""
    if netns is None:
        return fn()
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SandboxError(f"network namespace {netns!r} does not exist", hint="is the sandbox running? see 'sealbox ps'") from None
    value: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_net(fd)
            value.append(fn())
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    try:
        worker = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
        worker.start()
        worker.join(timeout)
    finally:
        os.close(fd)
    if worker.is_alive():
        raise SandboxError(f"operation in network namespace {netns!r} did not finish within {timeout:g}s")
    if error:
        raise error[0]
    return value[0]


def socket_in_netns(netns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket that lives in `netns` (usable from any thread)."""
    return run_in_netns(netns, lambda: socket.socket(family, type), timeout=10.0)


def connect_in_netns(netns: str, host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to host:port made from inside `netns` (SSH probe, `sealbox _proxy`).

    Connection failures are raised as the usual OSError subclasses (ConnectionRefusedError,
    TimeoutError, ...) so that a readiness probe can retry; a missing namespace is a SandboxError.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket_in_netns(netns, family)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return sock


def _sysctl_path(key: str) -> Path:
    if not key or ".." in key or key.startswith(("/", ".")):
        raise SandboxError(f"invalid sysctl key {key!r}")
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str, netns: str | None = None) -> str:
    return run_in_netns(netns, lambda: _sysctl_path(key).read_text().strip())


def write_sysctl(key: str, value: str, netns: str | None = None) -> None:
    """Write a sysctl; with netns, the namespace's own copy (net.* sysctls are per namespace)."""
    run_in_netns(netns, lambda: _sysctl_path(key).write_text(value))


def remove_netns(netns: str) -> bool:
    """Unmount and unlink a named namespace; idempotent. True if something was removed.

    Only for namespaces known to be ours (NetnsStep.undo and gc check the mark first). Devices inside
    (tap0, veth0) go away when the last user of the namespace is gone; a VMM still running in it
    keeps it alive anonymously, which is why the VMM is stopped first.
    """
    path = netns_path(netns)
    if not os.path.lexists(path):
        return False
    try:
        _libc_call("umount2", str(path).encode(), MNT_DETACH)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: not a mount point (a placeholder never bound)
            raise
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _share_run_dir() -> None:
    """Make /var/run/netns a shared mount, as `ip netns add` does, so that namespaces bound there
    later also appear in (and vanish from) mount namespaces copied from this one."""
    NETNS_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    d = str(NETNS_RUN_DIR).encode()
    try:
        _libc_call("mount", b"none", d, None, MS_SHARED | MS_REC, None)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _libc_call("mount", d, d, b"none", MS_BIND | MS_REC, None)  # not a mount point yet
        _libc_call("mount", b"none", d, None, MS_SHARED | MS_REC, None)


def is_bound(netns: str) -> bool:
    """Whether a namespace is bind-mounted on the name (not just a placeholder file)."""
    try:
        return os.stat(netns_path(netns)).st_dev != os.stat(NETNS_RUN_DIR).st_dev
    except FileNotFoundError:
        return False


def netns_mark(netns: str) -> str | None:
    """The ownership mark of a named namespace: its `lo` alias, or the placeholder's content while
    nothing is bound on the name yet. None if it does not exist or carries no mark."""
    path = netns_path(netns)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    if is_bound(netns):
        return run_in_netns(netns, lambda: rtnl.link_alias(LO_INDEX), timeout=10.0)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 512).decode(errors="replace").strip() or None
    finally:
        os.close(fd)


def create_marked(netns: str, mark: str, sysctls: dict[str, str]) -> None:
    """Create named namespace `netns` that carries `mark` from its first moment (see host/owner.py).

    The name is claimed with O_EXCL (an existing namespace of that name is refused, never adopted)
    by a placeholder file holding the mark; a thread then unshares a new namespace for itself, sets
    `sysctls` and `lo` (up, alias = mark) there, and bind-mounts it over the placeholder."""
    _share_run_dir()
    path = netns_path(netns)
    # the placeholder is written under a temporary name, then linked to the real one (link fails if
    # the name exists): the name never exists without the mark, not even for a moment
    tmp = NETNS_RUN_DIR / f"{TMP_PREFIX}{netns}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
    try:
        os.write(fd, mark.encode() + b"\n")
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise StepRefused(
            f"network namespace {netns!r} already exists",
            hint="another state dir or tool uses this name, or a crash left it: 'sealbox gc' removes it if it is ours",
        ) from None
    finally:
        os.unlink(tmp)
    box: dict[str, BaseException] = {}

    def inside() -> None:
        try:
            _libc_call("unshare", CLONE_NEWNET)  # this thread only
            for key, value in sysctls.items():
                with contextlib.suppress(FileNotFoundError):  # e.g. no IPv6 in this kernel: nothing to disable
                    _sysctl_path(key).write_text(value)
            rtnl.set_link(LO_INDEX, up=True, alias=mark)
            _libc_call("mount", b"/proc/thread-self/ns/net", str(path).encode(), b"none", MS_BIND, None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e

    worker = threading.Thread(target=inside, name=f"netns-create:{netns}", daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive() or "error" in box:
        err = box.get("error", "timed out")
        raise SandboxError(f"cannot create network namespace {netns!r}: {err}", hint="sealbox must run as root")


class NetnsStep(Step):
    """Creates the sandbox's network namespace with only `lo`, IPv6 off and forwarding off, marked
    as the sandbox's own; undo removes it only if it still carries that mark.

    IPv6 is disabled before any interface exists so no link-local address ever appears (the
    firewall, an `inet` table, would drop IPv6 anyway). Forwarding is set explicitly to 0 because a
    new namespace would otherwise start from the kernel default; VethStep turns it on for nat.
    """

    kind = "net.netns"
    netns: str
    mark: str

    def describe(self) -> str:
        return f"create network namespace {self.netns} (lo up, IPv6 off, forwarding off), marked {self.mark}"

    def do(self) -> dict[str, Any] | None:
        create_marked(self.netns, self.mark, {
            "net.ipv6.conf.all.disable_ipv6": "1",
            "net.ipv6.conf.default.disable_ipv6": "1",
            "net.ipv4.ip_forward": "0",
        })
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        found = netns_mark(self.netns)
        if found is None and not os.path.lexists(netns_path(self.netns)):
            return
        if found != self.mark:
            log.warning("not removing network namespace %s: it is not ours (mark %r)", self.netns, found)
            return
        if remove_netns(self.netns):
            log.info("removed network namespace %s", self.netns)


def owned_by(netns: str, mark: str) -> bool:
    """Whether namespace `netns` exists and carries `mark` (steps inside it check this before undo)."""
    try:
        return netns_mark(netns) == mark
    except SandboxError:
        return False
