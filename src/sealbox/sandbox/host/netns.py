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

import ctypes
import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sealbox.errors import SandboxError
from sealbox.sandbox.steps import Step

log = logging.getLogger("sealbox.netns")

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/var/run/netns")  # where iproute2 and pyroute2 bind-mount named namespaces
T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def netns_path(netns: str) -> Path:
    if not netns or "/" in netns or netns in (".", ".."):
        raise SandboxError(f"invalid network namespace name {netns!r}")
    return NETNS_RUN_DIR / netns


def netns_exists(netns: str) -> bool:
    return netns_path(netns).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def run_in_netns(netns: str | None, fn: Callable[[], T], *, timeout: float = 30.0) -> T:
    """Run `fn` in a fresh thread inside `netns` (None: the current namespace, no thread)."""
    if netns is None:
        return fn()
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SandboxError(f"network namespace {netns!r} does not exist", hint="is the sandbox running? see 'sealbox ps'") from None
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _setns(fd)
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = e

    try:
        worker = threading.Thread(target=target, name=f"netns:{netns}", daemon=True)
        worker.start()
        worker.join(timeout)
    finally:
        os.close(fd)
    if worker.is_alive():
        raise SandboxError(f"operation in network namespace {netns!r} did not finish within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


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


def link_up_lo(netns: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute(netns=netns, flags=0) as ipr:
        (idx,) = ipr.link_lookup(ifname="lo")
        ipr.link("set", index=idx, state="up")


def remove_netns(netns: str) -> bool:
    """Unmount and unlink a named namespace; idempotent. True if something was removed.

    Devices inside (tap0, veth0) go away when the last user of the namespace is gone; a VMM still
    running in it keeps it alive anonymously, which is why the VMM is stopped first.
    """
    path = netns_path(netns)
    if not os.path.lexists(path):
        return False
    from pyroute2 import netns as p2netns

    try:
        p2netns.remove(netns)  # umount2(MNT_DETACH) (result ignored: maybe never mounted) + unlink
    except FileNotFoundError:
        return False
    return True


class NetnsStep(Step):
    """Creates the sandbox's network namespace with only `lo`, IPv6 off and forwarding off.

    IPv6 is disabled before any interface exists so no link-local address ever appears (the
    firewall, an `inet` table, would drop IPv6 anyway). Forwarding is set explicitly to 0 because a
    new namespace inherits net.ipv4.ip_forward from the root namespace; VethStep turns it on for nat.
    """

    kind = "net.netns"
    netns: str

    def describe(self) -> str:
        return f"create network namespace {self.netns} (lo up, IPv6 off, forwarding off)"

    def do(self) -> dict[str, Any] | None:
        from pyroute2 import netns as p2netns

        if os.path.lexists(netns_path(self.netns)):
            raise SandboxError(
                f"network namespace {self.netns!r} already exists",
                hint="a sandbox of this name is still set up (another state dir?) or was not cleaned up: run 'sealbox gc'",
            )
        try:
            p2netns.create(self.netns)
        except OSError as e:
            raise SandboxError(f"cannot create network namespace {self.netns!r}: {e}", hint="sealbox must run as root") from None
        for key, value in (
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
            ("net.ipv4.ip_forward", "0"),
        ):
            try:
                write_sysctl(key, value, self.netns)
            except OSError as e:
                if e.errno != errno.ENOENT:  # no IPv6 in this kernel: nothing to disable
                    raise
        link_up_lo(self.netns)
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        if remove_netns(self.netns):
            log.info("removed network namespace %s", self.netns)
