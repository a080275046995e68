"""The two firewall steps: the sandbox netns table (both modes) and the root-namespace nat table."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
from typing import Any

from sealbox.sandbox.host import forward, nft, owner
from sealbox.sandbox.host.egress import BlockedNet, openings
from sealbox.sandbox.host.netns import owned_by
from sealbox.sandbox.model import EgressRule, RateLimit
from sealbox.sandbox.steps import Step, StepRefused

log = logging.getLogger("sealbox.firewall")


def _rate(limit: RateLimit | None) -> str:
    if limit is None:
        return "none"
    rate, burst = nft.rate_bucket(limit)
    return f"{rate} B/s (burst {burst} B)"


def _blocked(blocked: tuple[BlockedNet, ...], egress: tuple[EgressRule, ...]) -> str:
    if not blocked:
        return ""
    opened = openings(egress, blocked)
    text = f", {', '.join(str(b.cidr) for b in blocked)}"
    return text + (f" (opened: {', '.join(str(r.cidr) + (f':{r.port}' if r.port else '') for r in opened)})" if opened else "")


class SandboxFirewallStep(Step):
    """`inet sealbox` in the sandbox netns: deny by default, metadata and pool dropped, optional
    egress allow-list (nat) and per-direction rate limits on the TAP. See sealbox.sandbox.host.nft.

    Run before the TAP and veth exist (rules match interface *names*), so there is never a moment
    with an interface but no rules.
    """

    kind = "net.firewall"
    netns: str
    table: str
    tap: str
    guest_ip: ipaddress.IPv4Address
    host_ip: ipaddress.IPv4Address
    pool: ipaddress.IPv4Network
    uplink_if: str | None = None  # None: isolated
    egress: tuple[EgressRule, ...] = ()
    blocked: tuple[BlockedNet, ...] = ()  # host/egress.py: dropped unless an egress entry names it
    rx: RateLimit | None = None
    tx: RateLimit | None = None
    mark: str  # the namespace's: the table lives and dies inside it

    def ruleset(self) -> dict[str, Any]:
        return nft.sandbox_ruleset(
            table=self.table,
            tap=self.tap,
            guest_ip=self.guest_ip,
            host_ip=self.host_ip,
            pool=self.pool,
            uplink_if=self.uplink_if,
            egress=self.egress,
            blocked=self.blocked,
            rx=self.rx,
            tx=self.tx,
        )

    def describe(self) -> str:
        if self.uplink_if is None:
            reach = f"guest {self.guest_ip} reaches only {self.host_ip}"
        else:
            allowed = ", ".join(f"{r.cidr}" + (f":{r.port}" if r.port else "") for r in self.egress) or "any"
            reach = f"guest {self.guest_ip} reaches {self.host_ip} and, via {self.uplink_if}, egress to {allowed}"
        return (
            f"nft table inet {self.table} in {self.netns} (input/forward policy drop): {reach}; "
            f"drop pool {self.pool}{_blocked(self.blocked, self.egress)}; rate rx {_rate(self.rx)}, tx {_rate(self.tx)}"
        )

    def do(self) -> dict[str, Any] | None:
        nft.apply(self.ruleset(), self.netns)
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        if owned_by(self.netns, self.mark):  # else gone with it, or another's namespace of the same name
            nft.apply(nft.delete_table_doc(self.table), self.netns)


class HostNatStep(Step):
    """Root-namespace table `inet sealbox-<name>` for one nat sandbox, plus its share of
    net.ipv4.ip_forward (sealbox.sandbox.host.forward)."""

    kind = "net.host-nat"
    table: str
    veth: str
    uplink: ipaddress.IPv4Network
    pool: ipaddress.IPv4Network
    run_dir: str  # the host registry's directory (host/registry.py), home of the ip_forward count
    owner: str  # ownership mark (host/owner.py): on the table, and the ip_forward user key
    egress: tuple[EgressRule, ...] = ()
    blocked: tuple[BlockedNet, ...] = ()

    def ruleset(self) -> dict[str, Any]:
        return nft.host_ruleset(table=self.table, veth=self.veth, uplink=self.uplink, pool=self.pool,
                                egress=self.egress, blocked=self.blocked)

    def describe(self) -> str:
        return (
            f"nft table inet {self.table} in the root namespace: masquerade {self.uplink} leaving the host, "
            f"forward only from/to {self.veth} as established, drop new connections from {self.veth} to the host"
            f"{_blocked(tuple(b for b in self.blocked if b.cidr.version == 4), self.egress)}; "
            f"net.ipv4.ip_forward=1 while any nat sandbox runs (previous value restored after the last; "
            f"if it was 0, table ip {nft.FORWARD_GUARD_TABLE} forwards nothing but the sandboxes' veths)"
        )

    def do(self) -> dict[str, Any] | None:
        if self.table in owner.nft_table_marks():
            raise StepRefused(f"nft table inet {self.table} already exists in the root namespace",
                               hint="another state dir or tool uses it, or a crash left it: 'sealbox gc' removes it if it is ours")
        nft.apply(owner.nft_create_marked(self.ruleset(), self.table, self.owner))  # fails if it appeared meanwhile
        st = forward.acquire(Path(self.run_dir), self.owner, iface=self.veth)
        return {"ip_forward_previous": st.previous}

    def undo(self, outputs: dict[str, Any]) -> None:
        found = owner.nft_table_marks().get(self.table, "")
        if found == self.owner:
            nft.apply(nft.delete_table_doc(self.table))
        elif found != "":
            log.warning("not deleting nft table inet %s: not ours (mark %r)", self.table, found)
        if forward.release(Path(self.run_dir), self.owner):
            log.info("restored net.ipv4.ip_forward (last nat sandbox gone)")
