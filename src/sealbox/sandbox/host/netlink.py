"""Links and addresses of a sandbox (pyroute2 over rtnetlink): the TAP and the nat veth.

pyroute2 does all of it: `IPRoute(netns=...)` opens its netlink socket inside the namespace (a
short-lived child enters it and passes the socket back), and TAP creation, which rtnetlink cannot
do, is done by pyroute2 with the TUNSETIFF/TUNSETOWNER/TUNSETGROUP/TUNSETPERSIST ioctls in a child
that entered the namespace (a TAP belongs to the namespace of whoever opened /dev/net/tun). No `ip`
command is needed. `flags=0` everywhere: pyroute2's default would *create* a missing namespace.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.host.netns import netns_exists, owned_by, write_sysctl
from sealbox.sandbox.steps import Step, StepRefused

log = logging.getLogger("sealbox.netlink")


@contextmanager
def _iproute(netns: str | None, what: str) -> Iterator[Any]:
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute(netns=netns, flags=0) if netns else IPRoute() as ipr:
            yield ipr
    except NetlinkError as e:
        where = f" in network namespace {netns}" if netns else ""
        raise SandboxError(f"{what}{where} failed: {e.args[1] if len(e.args) > 1 else e} (errno {e.code})") from None


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def link_kind(ipr: Any, index: int) -> str | None:
    (msg,) = ipr.link("get", index=index)
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def list_links(netns: str | None = None) -> list[tuple[str, str | None]]:
    """(name, kind) of every link in a namespace."""
    return [(name, kind) for name, kind, _alias in list_links_marked(netns)]


def list_links_marked(netns: str | None = None) -> list[tuple[str, str | None, str | None]]:
    """(name, kind, alias) of every link in a namespace; the alias is sealbox's ownership mark."""
    with _iproute(netns, "listing links") as ipr:
        out = []
        for msg in ipr.get_links():
            info = msg.get_attr("IFLA_LINKINFO")
            out.append((msg.get_attr("IFLA_IFNAME"), info.get_attr("IFLA_INFO_KIND") if info else None, msg.get_attr("IFLA_IFALIAS")))
        return out


def delete_marked_link(ifname: str, mark: str, kind: str) -> bool:
    """Delete root-namespace link `ifname` only if it is a `kind` carrying `mark`. Idempotent."""
    with _iproute(None, f"deleting {ifname}") as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        (msg,) = ipr.link("get", index=idx)
        info = msg.get_attr("IFLA_LINKINFO")
        found_kind, alias = (info.get_attr("IFLA_INFO_KIND") if info else None), msg.get_attr("IFLA_IFALIAS")
        if found_kind != kind or alias != mark:
            log.warning("not deleting %s: not ours (%s, mark %r)", ifname, found_kind, alias)
            return False
        ipr.link("del", index=idx)
    return True


def delete_link(ifname: str, netns: str | None = None, kind: str | None = None) -> bool:
    """Delete a link if present (and, when `kind` is given, only if it is of that kind). Idempotent."""
    if netns is not None and not netns_exists(netns):
        return False  # the namespace and everything in it is already gone
    with _iproute(netns, f"deleting {ifname}") as ipr:
        idx = _index(ipr, ifname)
        if idx is None:
            return False
        if kind is not None and link_kind(ipr, idx) != kind:
            log.warning("not deleting %s: it is not a %s", ifname, kind)
            return False
        ipr.link("del", index=idx)
    return True


class TapStep(Step):
    """A persistent TAP in the sandbox netns, owned by the VMM's uid/gid, with the host side address.

    Persistent so that the unprivileged VMM can open it by name later (TUNSETIFF on an existing
    device is allowed to its owner/group without CAP_NET_ADMIN). Created VNET_HDR-capable (the
    VMM's own open decides whether it uses the header) and single-queue, matching what QEMU and
    Firecracker ask for. Carrier stays down until the VMM opens it.
    """

    kind = "net.tap"
    netns: str
    tap: str
    uid: int
    gid: int
    host_ip: ipaddress.IPv4Address
    prefixlen: int
    mark: str  # the namespace's: the TAP lives and dies inside it

    def describe(self) -> str:
        return (
            f"create TAP {self.tap} in {self.netns} (owner {self.uid}:{self.gid}, vnet_hdr), "
            f"address {self.host_ip}/{self.prefixlen}, up"
        )

    def do(self) -> dict[str, Any] | None:
        with _iproute(self.netns, f"creating TAP {self.tap}") as ipr:
            if _index(ipr, self.tap) is not None:
                raise StepRefused(f"{self.tap} already exists in network namespace {self.netns}", hint="run 'sealbox gc'")
            ipr.link(
                "add",
                ifname=self.tap,
                kind="tuntap",
                mode="tap",
                uid=self.uid,
                gid=self.gid,
                ifr={"no_pi": 1, "vnet_hdr": 1},
            )
            idx = _index(ipr, self.tap)
            if idx is None:
                raise SandboxError(f"TAP {self.tap} did not appear in network namespace {self.netns}")
            ipr.addr("add", index=idx, address=str(self.host_ip), prefixlen=self.prefixlen)
            ipr.link("set", index=idx, state="up")
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        if owned_by(self.netns, self.mark):  # never a TAP in another's namespace of the same name
            delete_link(self.tap, self.netns, kind="tun")


class VethStep(Step):
    """nat uplink: veth `root_if` (root ns, .1 of the uplink /30) <-> `peer` (sandbox ns, .2).

    Made inside the sandbox's own namespace, given the ownership mark as alias there, and only then
    moved to the root namespace in one request: the root end never exists without its mark, and if
    `root_if` is taken in the root namespace the move fails and the pair dies with the namespace.
    The sandbox ns gets a default route via the root side and forwarding on; its firewall decides
    what may actually be forwarded. IPv6 is disabled on the root end (nothing of ours uses it).
    """

    kind = "net.veth"
    netns: str
    root_if: str
    peer: str
    uplink: ipaddress.IPv4Network
    mark: str

    def describe(self) -> str:
        root_ip, ns_ip = self._ips()
        return (
            f"create veth {self.root_if} ({root_ip}/{self.uplink.prefixlen}, root ns, alias {self.mark}) <-> "
            f"{self.peer} ({ns_ip}, {self.netns}), default route via {root_ip}, forwarding on in {self.netns}"
        )

    def _ips(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        return self.uplink.network_address + 1, self.uplink.network_address + 2

    def do(self) -> dict[str, Any] | None:
        root_ip, ns_ip = self._ips()
        plen = self.uplink.prefixlen
        with _iproute(None, f"checking {self.root_if}") as ipr:
            if _index(ipr, self.root_if) is not None:
                raise StepRefused(f"interface {self.root_if} already exists in the root namespace",
                                   hint="another state dir or tool uses it, or a crash left it: 'sealbox gc' removes it if it is ours")
        with _iproute(self.netns, f"creating veth {self.root_if}") as ipr:
            ipr.link("add", ifname=self.root_if, kind="veth", peer={"ifname": self.peer})
            idx = _index(ipr, self.root_if)
            if idx is None:
                raise SandboxError(f"veth {self.root_if} did not appear in {self.netns}")
            ipr.link("set", index=idx, ifalias=self.mark)
            ipr.link("set", index=idx, net_ns_pid=os.getpid())  # to the namespace sealbox runs in
        with _iproute(None, f"configuring veth {self.root_if}") as ipr:
            idx = _index(ipr, self.root_if)
            if idx is None:
                raise SandboxError(f"veth {self.root_if} did not reach the root namespace")
            with contextlib.suppress(FileNotFoundError):  # kernel without IPv6
                write_sysctl(f"net.ipv6.conf.{self.root_if}.disable_ipv6", "1")
            ipr.addr("add", index=idx, address=str(root_ip), prefixlen=plen)
            ipr.link("set", index=idx, state="up")
        with _iproute(self.netns, f"configuring {self.peer}") as ipr:
            idx = _index(ipr, self.peer)
            if idx is None:
                raise SandboxError(f"{self.peer} did not appear in network namespace {self.netns}")
            ipr.addr("add", index=idx, address=str(ns_ip), prefixlen=plen)
            ipr.link("set", index=idx, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=str(root_ip))
        write_sysctl("net.ipv4.ip_forward", "1", self.netns)
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        # Deleting one end deletes both; a pair still inside the namespace goes with the namespace.
        delete_marked_link(self.root_if, self.mark, kind="veth")
