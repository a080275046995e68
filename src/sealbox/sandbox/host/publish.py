"""`sealbox run --publish [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]`: host ports forwarded to the guest.

Mechanism: a small forwarder process per sandbox (host/portfwd.py), not nftables DNAT. sealbox binds every published
host address and port itself, in the host's namespace, and hands the bound sockets to the forwarder, which then
moves into the sandbox's namespace, drops to an unprivileged uid and relays bytes to the guest's port.
Why not DNAT:
- an isolated sandbox has no route between the host and its namespace at all; DNAT would need one (a veth, a
  route, forwarding) for every sandbox that publishes a port, i.e. a path into the guest's namespace the rest of
  the design never opens;
- DNAT from a loopback address needs net.ipv4.conf.*.route_localnet=1, which makes 127.0.0.0/8 routable on those
  interfaces: packets from elsewhere addressed to 127.x reach loopback-only services (the kube-proxy advisory,
  CVE-2020-8558);
- a DNAT rule reserves nothing: a host process could bind the same port and silently lose its traffic, or a port
  already in use could be "published" over it. A bound socket is a reservation by the kernel: taken is refused with
  EADDRINUSE (one line, before the VM starts), and the port is free again exactly when the forwarder is gone.
Costs: one process per publishing sandbox (no parsing: bytes are relayed), the guest sees connections from the host
side of its link instead of the client's address, and throughput is that of a userspace copy.
The step is recorded before the sockets are bound; undo (rm/gc) stops the forwarder by its --owner mark.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.host import nft, procmark
from sealbox.sandbox.host.netns import netns_path
from sealbox.sandbox.model import PortMap
from sealbox.sandbox.steps import Step, StepRefused

MODULE = "sealbox.sandbox.host.portfwd"
NOBODY = nft.HELPER_UID  # the sandbox table lets this uid reach the guest's link only
BACKLOG = 128


def bind(port: PortMap) -> socket.socket:
    """A socket bound (TCP: listening) on the host address and port; StepRefused if someone else has the port."""
    kind = socket.SOCK_STREAM if port.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
    try:
        if port.proto == "tcp":  # TIME_WAIT leftovers of an earlier sandbox must not block the port; a listener does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((str(port.host_ip), port.host_port))
        if port.proto == "tcp":
            s.listen(BACKLOG)
    except OSError as e:
        s.close()
        where = f"{port.host_ip}:{port.host_port}/{port.proto}"
        if e.errno == errno.EADDRINUSE:
            raise StepRefused(f"--publish {port}: host port {where} is already in use",
                               hint="choose another host port, or leave it out to take any free one") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise SandboxError(f"--publish {port}: {port.host_ip} is not an address of this host",
                               hint="leave the address out for 127.0.0.1, or name one of the host's addresses") from None
        raise SandboxError(f"--publish {port}: cannot bind {where}: {e.strerror}") from None
    return s


def bound(port: PortMap, s: socket.socket) -> PortMap:
    """The mapping with the host port the kernel gave (host port 0 asks for any free one)."""
    _ip, got = s.getsockname()
    return port.model_copy(update={"host_port": int(got)})


class PublishStep(Step):
    """The published ports of one sandbox: bound here, relayed by host/portfwd.py inside the sandbox netns."""

    kind = "net.publish"
    netns: str
    guest_ip: ipaddress.IPv4Address
    ports: tuple[PortMap, ...]
    owner: str  # the sandbox's mark, on the forwarder's command line (undo and gc find it by it)
    uid: int = NOBODY
    gid: int = NOBODY

    def describe(self) -> str:
        return (f"publish {', '.join(str(p) for p in self.ports)} to {self.guest_ip} in {self.netns}: host sockets bound by sealbox, "
                f"relayed by a forwarder inside the sandbox namespace as uid {self.uid}")

    def do(self) -> dict[str, Any]:
        socks: list[socket.socket] = []
        try:
            for p in self.ports:
                socks.append(bind(p))
            return self._start(socks)
        finally:
            for s in socks:
                s.close()  # the forwarder holds its own copies

    def _start(self, socks: list[socket.socket]) -> dict[str, Any]:
        args = ["--netns", str(netns_path(self.netns)), "--target", str(self.guest_ip), "--owner", self.owner,
                "--uid", str(self.uid), "--gid", str(self.gid)]
        for p, s in zip(self.ports, socks, strict=True):
            args += ["--map", f"{s.fileno()}:{p.proto}:{p.guest_port}"]
        started = procmark.spawn(MODULE, args, [s.fileno() for s in socks], "port forwarder")
        return {**started, "published": [str(bound(p, s)) for p, s in zip(self.ports, socks, strict=True)]}

    def undo(self, outputs: dict[str, Any]) -> None:
        left = procmark.stop(MODULE, self.owner, outputs.get("pid"), outputs.get("start_time"))
        if left:
            raise SandboxError(f"port forwarder {left} survived SIGKILL", hint="retry with 'sealbox gc'")
