"""Destinations a guest never reaches unless the user names them: metadata services and the host.

Dropped by default, in the sandbox's own table and (nat) in its root-namespace table, before any
accept (sealbox.sandbox.host.nft):
- cloud metadata and host agents: all of 169.254.0.0/16 (AWS/GCP/OpenStack metadata, ECS task
  metadata, AWS's resolver and time server...), 168.63.129.16 (Azure wireserver: metadata, DNS,
  health probes), 100.100.100.200 (Alibaba metadata), fd00:ec2::254 (AWS metadata over IPv6; the
  guest link is IPv4-only, the rule is there so the ruleset states it);
- the host itself: every IPv4 address of the root namespace (services listening on 0.0.0.0 or on a
  LAN address), and the networks of those addresses that are private (RFC 1918, RFC 6598 shared
  space) — the host's LAN, a docker bridge, a libvirt network, a VPC subnet with its resolver.
  Read when the sandbox starts; the root table's input chain also drops every new connection to the
  host, so an address added later is covered there.

An `--allow-egress CIDR[:PORT]` entry opens a blocked range only if its CIDR lies *inside* that
range: `--allow-egress 168.63.129.16/32:80` opens the wireserver's port 80, `0.0.0.0/0` or
`10.0.0.0/8` open nothing blocked. Never openable: the sealbox pool (other sandboxes). The guest's
own DNS resolver is the host side of its link (host/dns.py), which stays reachable.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict

from sealbox.sandbox.model import EgressRule

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class BlockedNet(BaseModel):
    model_config = ConfigDict(frozen=True)
    cidr: Net
    why: str  # also the nft rule comment (after "blocked: ")


METADATA: tuple[BlockedNet, ...] = tuple(
    BlockedNet(cidr=ipaddress.ip_network(c), why=w)
    for c, w in (
        ("169.254.0.0/16", "link-local/metadata"),
        ("168.63.129.16/32", "Azure wireserver"),
        ("100.100.100.200/32", "Alibaba metadata"),
        ("fd00:ec2::254/128", "AWS metadata (IPv6)"),
    )
)
PRIVATE_V4 = tuple(ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10"))
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def host_interfaces() -> list[ipaddress.IPv4Interface]:
    """Every IPv4 address (with prefix) of the namespace this process runs in (the host)."""
    from pyroute2 import IPRoute

    out = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=socket.AF_INET):
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")  # LOCAL: own end of a p2p link
            if addr:
                out.append(ipaddress.IPv4Interface(f"{addr}/{msg['prefixlen']}"))
    return out


def host_blocked(ifaces: Iterable[ipaddress.IPv4Interface], pool: ipaddress.IPv4Network) -> list[BlockedNet]:
    """The host's own addresses and its connected private networks (sealbox's pool left out: it is
    dropped as a whole anyway, and the root ends of other sandboxes' uplinks live there)."""
    addrs: set[ipaddress.IPv4Network] = set()
    nets: set[ipaddress.IPv4Network] = set()
    for i in ifaces:
        if i.ip in LOOPBACK or i.ip in pool or i.ip.is_link_local:
            continue  # martian from a guest / other sandboxes / covered by 169.254.0.0/16
        addrs.add(ipaddress.IPv4Network(i.ip))
        if any(i.network.subnet_of(p) for p in PRIVATE_V4) and not i.network.overlaps(pool):
            nets.add(i.network)
    # an address inside a blocked network is listed too: each of the host's addresses has its own rule
    return [BlockedNet(cidr=n, why="host network") for n in sorted(nets)] + [BlockedNet(cidr=a, why="host address") for a in sorted(addrs)]


def blocked_for(pool: ipaddress.IPv4Network, *, nat: bool) -> tuple[BlockedNet, ...]:
    """What a sandbox's table drops; the host part is read only in nat mode (isolated forwards nothing)."""
    return METADATA + (tuple(host_blocked(host_interfaces(), pool)) if nat else ())


def openings(egress: Sequence[EgressRule], blocked: Sequence[BlockedNet]) -> tuple[EgressRule, ...]:
    """The allow-list entries that name something inside a blocked range (accepted before the drops)."""
    v4 = [b.cidr for b in blocked if isinstance(b.cidr, ipaddress.IPv4Network)]
    return tuple(r for r in egress if any(r.cidr.subnet_of(b) for b in v4))
