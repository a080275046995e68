"""Per-sandbox networking as a list of steps, and detection of leftovers for `gc`.

The manager calls `network_steps` after `StateDir.reserve` and hands the steps to `apply_steps`:

    guest, steps = network_steps(state, spec, uid, gid)       # allocates the addresses now
    apply_steps(steps, record.steps, save)                     # recorded, undone on failure

Step order (undo runs in reverse):
    IpamAllocation -> NetnsStep -> SandboxFirewallStep -> TapStep [-> HostNatStep -> VethStep -> DnsForwarderStep]
The firewall comes before any interface (its rules match names), and the root-namespace table
before the veth, so no interface ever exists without its rules.

If the manager fails between `network_steps` and recording the first step, the allocation file is
an orphan; `find_leftovers` reports it (as it does every sealbox-named netns, veth, nft table and
ip_forward user that no kept sandbox owns) and `remove_leftover` removes it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.host import dns, egress, forward, ipam, netnames, nft
from sealbox.sandbox.host.firewall import HostNatStep, SandboxFirewallStep
from sealbox.sandbox.host.netlink import TapStep, VethStep, delete_link, list_links
from sealbox.sandbox.host.netns import NetnsStep, list_netns, remove_netns
from sealbox.sandbox.model import GuestNet, NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import Step

log = logging.getLogger("sealbox.network")


def forward_owner(state_root: Path, name: str) -> str:
    return f"{Path(state_root).resolve()}:{name}"


def network_steps(
    state: StateDir,
    spec: SandboxSpec,
    uid: int,
    gid: int,
    *,
    dry_run: bool = False,
    pool: str | None = None,
    run_dir: Path = forward.DEFAULT_RUN_DIR,
    link: ipaddress.IPv4Network | None = None,
    resolv_conf: Path | None = None,
) -> tuple[GuestNet, list[Step]]:
    """The guest's network view and the host steps that build it.

    Without dry_run the addresses are allocated (and visible to other sealbox processes) before this
    returns; with dry_run they are only computed, so describe() shows what a run would do.
    `pool` overrides $SEALBOX_SUBNET_POOL (default 10.213.0.0/16). `link` fixes the guest link
    instead of taking the lowest free one (snapshot restore: the guest keeps its old address).
    """
    name = spec.name
    nat = spec.net == NetMode.nat
    if spec.allow_egress and not nat:
        raise UsageError("--allow-egress only applies to --net nat", hint="add --net nat or drop --allow-egress")
    pool_net = ipam.parse_pool(pool)
    blocked = egress.blocked_for(pool_net, nat=nat)
    dns.check(nat=nat, dns=spec.dns, egress=spec.allow_egress, blocked=blocked)  # before anything is allocated
    alloc = ipam.allocate(state, name, nat=nat, pool=pool_net, dry_run=dry_run, link=link)
    host_ip, guest_ip = alloc.link.network_address + 1, alloc.link.network_address + 2
    announced, upstreams = dns.plan(nat=nat, dns=spec.dns, egress=spec.allow_egress, host_ip=host_ip,
                                    resolv_conf=resolv_conf or dns.resolv_conf_path())
    ns = netnames.netns_name(name)
    guest = GuestNet(
        subnet=alloc.link,
        host_ip=host_ip,
        guest_ip=guest_ip,
        guest_mac=netnames.guest_mac(name),
        tap=netnames.TAP_NAME,
        netns=ns,
        dns=announced,
    )
    steps: list[Step] = [
        ipam.IpamAllocation(state_root=str(state.root), name=name, link=alloc.link, uplink=alloc.uplink, pool=pool_net),
        NetnsStep(netns=ns),
        SandboxFirewallStep(
            netns=ns,
            table=netnames.NETNS_TABLE,
            tap=netnames.TAP_NAME,
            guest_ip=guest_ip,
            host_ip=host_ip,
            pool=pool_net,
            uplink_if=netnames.PEER_NAME if nat else None,
            egress=spec.allow_egress,
            blocked=blocked,
            rx=spec.limits.net_rx_bytes,
            tx=spec.limits.net_tx_bytes,
        ),
        TapStep(netns=ns, tap=netnames.TAP_NAME, uid=uid, gid=gid, host_ip=host_ip, prefixlen=alloc.link.prefixlen),
    ]
    if nat:
        assert alloc.uplink is not None
        veth = netnames.veth_name(name)
        steps += [
            HostNatStep(
                table=netnames.root_table_name(name),
                veth=veth,
                uplink=alloc.uplink,
                pool=pool_net,
                run_dir=str(run_dir),
                owner=forward_owner(state.root, name),
                egress=spec.allow_egress,
                blocked=blocked,
            ),
            VethStep(netns=ns, root_if=veth, peer=netnames.PEER_NAME, uplink=alloc.uplink),
        ]
    if upstreams:
        steps.append(dns.DnsForwarderStep(netns=ns, listen=host_ip, client=guest_ip, upstreams=tuple(upstreams),
                                          owner=forward_owner(state.root, name)))
    return guest, steps


# --- leftovers ---------------------------------------------------------------------------------
LeftoverKind = Literal["netns", "veth", "nft-table", "ipam", "ip-forward-user", "dns-forwarder"]


class NetLeftover(BaseModel):
    kind: LeftoverKind
    ident: str  # netns name, interface name, table name, sandbox name (ipam) or owner key
    sandbox: str | None = None  # best guess of the sandbox it belonged to

    def describe(self) -> str:
        owner = f" (sandbox {self.sandbox})" if self.sandbox else ""
        return f"{self.kind} {self.ident}{owner}"


def find_leftovers(
    state: StateDir, keep: Collection[str], *, run_dir: Path = forward.DEFAULT_RUN_DIR
) -> list[NetLeftover]:
    """Host network objects named like sealbox's that belong to no sandbox in `keep`.

    `keep` = the sandboxes whose records still own their resources (gc undoes failed records first,
    then passes the remaining names). Netns, veth and nft names are host-global: with several state
    dirs on one host, objects of another state dir's sandboxes are reported too.
    """
    keep = set(keep)
    found: list[NetLeftover] = []
    known: set[str] = set()
    for ns in list_netns():
        owner = netnames.sandbox_of_netns(ns)
        if owner is not None:
            known.add(owner)
            if owner not in keep:
                found.append(NetLeftover(kind="netns", ident=ns, sandbox=owner))
    for family, table in nft.list_tables():
        owner = netnames.sandbox_of_table(table)
        if family == nft.FAMILY and owner is not None:
            known.add(owner)
            if owner not in keep:
                found.append(NetLeftover(kind="nft-table", ident=table, sandbox=owner))
    for name in ipam.read_allocations(state.root):
        known.add(name)
        if name not in keep:
            found.append(NetLeftover(kind="ipam", ident=name, sandbox=name))
    prefix = f"{state.root.resolve()}:"
    for user in forward.users(run_dir):
        if user.startswith(prefix):
            name = user[len(prefix):]
            if name not in keep:
                found.append(NetLeftover(kind="ip-forward-user", ident=user, sandbox=name))
    for _pid, owner in dns.find_forwarders():
        if owner.startswith(prefix) and owner[len(prefix):] not in keep:
            found.append(NetLeftover(kind="dns-forwarder", ident=owner, sandbox=owner[len(prefix):]))
    kept_veths = {netnames.veth_name(n) for n in keep}
    guess = {netnames.veth_name(n): n for n in known}
    for ifname, kind in list_links():
        if kind == "veth" and netnames.VETH_RE.fullmatch(ifname) and ifname not in kept_veths:
            found.append(NetLeftover(kind="veth", ident=ifname, sandbox=guess.get(ifname)))
    return found


def remove_leftover(item: NetLeftover, state: StateDir, *, run_dir: Path = forward.DEFAULT_RUN_DIR) -> None:
    """Remove one leftover; idempotent, any order (a veth whose netns is gone is gone already)."""
    if item.kind == "netns":
        remove_netns(item.ident)
    elif item.kind == "veth":
        delete_link(item.ident, None, kind="veth")
    elif item.kind == "nft-table":
        nft.apply(nft.delete_table_doc(item.ident))
    elif item.kind == "ipam":
        ipam.release(state.root, item.ident)
    elif item.kind == "ip-forward-user":
        forward.release(run_dir, item.ident)
    elif item.kind == "dns-forwarder":
        left = dns.stop_forwarders(item.ident)
        if left:
            raise SandboxError(f"DNS forwarder {left} survived SIGKILL")
    log.info("removed leftover %s", item.describe())
