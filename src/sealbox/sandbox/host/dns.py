"""The guest's DNS: which resolver it is told about, and the forwarder that answers on its link.

Decision (`plan`), made when the network is planned:
- `--dns IP` (repeatable, nat only): the guest is told to use IP itself; no forwarder. Its queries are
  ordinary egress, so IP:53 must pass the sandbox's policy — refused up front if the allow-list does
  not cover it or it lies in a blocked range (host/egress.py) nobody opened.
- isolated: no resolver (the guest has no egress, and DNS through the host would be a way out).
- nat: a forwarder (host/dnsfwd.py) on the host side of the guest's link (`.1`, UDP and TCP 53)
  relays queries to the host's own resolvers (resolv.conf). It is subject to the sandbox's egress
  policy: with an allow-list, only the resolvers the list covers on port 53 are used; if none is,
  the guest gets no resolver and a warning names the fix. Resolvers in blocked ranges (a cloud's
  169.254.169.253 or 168.63.129.16, a LAN router) are fine: only the relay talks to them, and only DNS.

The forwarder is a host resource: DnsForwarderStep records it before it starts, undo (rm/gc) stops
it; it carries the sandbox's owner key on its command line, the mark undo and gc look for.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.host import procmark
from sealbox.sandbox.host.egress import BlockedNet, openings
from sealbox.sandbox.host.netns import socket_in_netns
from sealbox.sandbox.model import EgressRule
from sealbox.sandbox.steps import Step

log = logging.getLogger("sealbox.dns")

RESOLV_CONF = Path("/etc/resolv.conf")
MODULE = "sealbox.sandbox.host.dnsfwd"
PORT = 53
MAX_UPSTREAMS = 3  # as many as glibc's resolver uses
NOBODY = 65534
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def resolv_conf_path() -> Path:
    """$SEALBOX_RESOLV_CONF (tests, hosts whose resolvers are listed elsewhere), else /etc/resolv.conf."""
    env = os.environ.get("SEALBOX_RESOLV_CONF")
    return Path(env) if env else RESOLV_CONF


def host_resolvers(resolv_conf: Path = RESOLV_CONF) -> list[IPAddress]:
    """`nameserver` lines of the host's resolv.conf (scoped IPv6 link-local ones skipped)."""
    try:
        text = resolv_conf.read_text(errors="replace")
    except OSError:
        return []
    out: list[IPAddress] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and "%" not in words[1]:
            try:
                addr = ipaddress.ip_address(words[1])
            except ValueError:
                continue
            if addr not in out:
                out.append(addr)
    return out[:MAX_UPSTREAMS]


def _allows_dns(rule: EgressRule, addr: IPAddress) -> bool:
    return isinstance(addr, ipaddress.IPv4Address) and addr in rule.cidr and rule.port in (None, PORT)


def check(*, nat: bool, dns: Sequence[ipaddress.IPv4Address], egress: Sequence[EgressRule], blocked: Sequence[BlockedNet]) -> None:
    """--dns is usable: nat, and each resolver passes the sandbox's egress policy on port 53."""
    if dns and not nat:
        raise UsageError("--dns only applies to --net nat (an isolated guest has no egress)", hint="add --net nat or drop --dns")
    for ip in dns:
        _check_direct(ip, egress, blocked)


def plan(*, nat: bool, dns: Sequence[ipaddress.IPv4Address], egress: Sequence[EgressRule], host_ip: ipaddress.IPv4Address,
         resolv_conf: Path = RESOLV_CONF) -> tuple[tuple[ipaddress.IPv4Address, ...], list[IPAddress]]:
    """(resolvers announced to the guest, upstreams of a forwarder — empty: no forwarder). After check()."""
    if dns:
        return tuple(dns), []
    if not nat:
        return (), []
    ups = host_resolvers(resolv_conf)
    if egress:
        ups = [u for u in ups if any(_allows_dns(r, u) for r in egress)]
    if not ups:
        found = ", ".join(map(str, host_resolvers(resolv_conf))) or f"none in {resolv_conf}"
        log.warning("the guest gets no DNS resolver: the host's resolvers (%s) are not allowed by --allow-egress; "
                    "add --allow-egress RESOLVER/32:53 or pass --dns IP", found)
        return (), []
    return (host_ip,), ups


def _check_direct(ip: ipaddress.IPv4Address, egress: Sequence[EgressRule], blocked: Sequence[BlockedNet]) -> None:
    if egress and not any(_allows_dns(r, ip) for r in egress):
        raise UsageError(f"--dns {ip}: the --allow-egress list does not allow {ip} port 53", hint=f"add --allow-egress {ip}/32:53")
    inside = [b for b in blocked if b.cidr.version == 4 and ip in b.cidr]
    if inside and not [r for r in openings(egress, inside) if _allows_dns(r, ip)]:
        raise UsageError(f"--dns {ip} is blocked for guests ({inside[0].why} {inside[0].cidr})",
                         hint=f"open it explicitly with --allow-egress {ip}/32:53, or drop --dns to use the forwarder")


# --- the forwarder process -----------------------------------------------------------------------
def find_forwarders() -> list[tuple[int, str]]:
    """(pid, owner key) of every running forwarder (found by its module name and --owner mark)."""
    return procmark.find(MODULE)


def stop_forwarders(owner: str, pid: int | None = None, start: int | None = None, timeout: float = 5.0) -> list[int]:
    """Stop the forwarder(s) carrying `owner` (and the recorded pid, if still the same process).
    Returns the pids that survived SIGKILL (normally none)."""
    return procmark.stop(MODULE, owner, pid, start, timeout)


class DnsForwarderStep(Step):
    """UDP+TCP port 53 on `listen` (the host side of the guest's link, inside `netns`), relayed to
    `upstreams` by a small unprivileged process in the root namespace (host/dnsfwd.py)."""

    kind = "net.dns"
    netns: str
    listen: ipaddress.IPv4Address
    client: ipaddress.IPv4Address
    upstreams: tuple[IPAddress, ...]
    owner: str  # "<state dir>:<name>": the mark on the process's command line
    uid: int = NOBODY
    gid: int = NOBODY

    def describe(self) -> str:
        return (f"DNS forwarder on {self.listen}:53 (udp, tcp) in {self.netns} for {self.client}, "
                f"relaying to {', '.join(map(str, self.upstreams))} as uid {self.uid}")

    def _sockets(self) -> tuple[socket.socket, socket.socket]:
        udp = socket_in_netns(self.netns, socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket_in_netns(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        try:
            udp.bind((str(self.listen), PORT))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((str(self.listen), PORT))
            tcp.listen(16)
        except OSError as e:
            udp.close()
            tcp.close()
            raise SandboxError(f"cannot listen on {self.listen}:53 in {self.netns}: {e.strerror}") from None
        return udp, tcp

    def do(self) -> dict[str, Any]:
        udp, tcp = self._sockets()
        args = ["--udp-fd", str(udp.fileno()), "--tcp-fd", str(tcp.fileno()), "--client", str(self.client),
                "--owner", self.owner, "--uid", str(self.uid), "--gid", str(self.gid)]
        for up in self.upstreams:
            args += ["--upstream", str(up)]
        try:
            return procmark.spawn(MODULE, args, (udp.fileno(), tcp.fileno()), "DNS forwarder")
        finally:
            for s in (udp, tcp):
                s.close()  # the forwarder holds its own copies

    def undo(self, outputs: dict[str, Any]) -> None:
        left = stop_forwarders(self.owner, outputs.get("pid"), outputs.get("start_time"))
        if left:
            raise SandboxError(f"DNS forwarder {left} survived SIGKILL", hint="retry with 'sealbox gc'")
