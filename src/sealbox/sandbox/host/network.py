"""Per-sandbox networking as a list of steps.

The manager calls `network_steps` after `StateDir.reserve` and hands the steps to `apply_steps`:

    guest, steps = network_steps(state, spec)           # leases name, addresses and uid now
    apply_steps(steps, record.steps, save)               # recorded, undone on failure

Step order (undo runs in reverse):
    HostLeaseStep -> NetnsStep -> SandboxFirewallStep -> TapStep [-> HostNatStep -> VethStep -> DnsForwarderStep]
    [-> PublishStep (--publish: the host ports are bound here, before any VM exists)]
The firewall comes before any interface (its rules match names), and the root-namespace table
before the veth, so no interface ever exists without its rules. Every step carries the sandbox's
ownership mark (host/owner.py) and its undo acts only on objects that carry it.

If the manager fails between `network_steps` and recording the first step, the lease is an orphan;
gc finds it by its mark (host/leftovers.py) and releases it.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from pathlib import Path

from sealbox.errors import UsageError
from sealbox.sandbox.host import dns, egress, ipam, netnames
from sealbox.sandbox.host.firewall import HostNatStep, SandboxFirewallStep
from sealbox.sandbox.host.netlink import TapStep, VethStep
from sealbox.sandbox.host.netns import NetnsStep
from sealbox.sandbox.host.publish import PublishStep
from sealbox.sandbox.host.registry import HostLeaseStep, Lease, Registry
from sealbox.sandbox.model import GuestNet, NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import Step

log = logging.getLogger("sealbox.network")


def network_steps(
    state: StateDir,
    spec: SandboxSpec,
    *,
    dry_run: bool = False,
    pool: str | None = None,
    run_dir: Path | None = None,
    link: ipaddress.IPv4Network | None = None,
    resolv_conf: Path | None = None,
) -> tuple[GuestNet, list[Step]]:
    """The guest's network view and the host steps that build it.

    Without dry_run the lease (name, addresses, uid) is taken in the host registry (and visible to
    every other sealbox process) before this returns; with dry_run it is only computed, so
    describe() shows what a run would do. `pool` overrides $SEALBOX_SUBNET_POOL (default
    10.213.0.0/16), `run_dir` the registry's $SEALBOX_RUN_DIR. `link` fixes the guest link instead
    of taking the lowest free one (snapshot restore: the guest keeps its old address).
    """
    name = spec.name
    nat = spec.net == NetMode.nat
    if spec.allow_egress and not nat:
        raise UsageError("--allow-egress only applies to --net nat", hint="add --net nat or drop --allow-egress")
    pool_net = ipam.parse_pool(pool)
    reg = Registry(run_dir)
    mark = state.mark(name)
    blocked = egress.blocked_for(pool_net, nat=nat)
    dns.check(nat=nat, dns=spec.dns, egress=spec.allow_egress, blocked=blocked)  # before anything is leased
    lease = reg.allocate(name, mark, str(state.root), nat=nat, pool=pool_net, link=link, dry_run=dry_run)
    host_ip, guest_ip = lease.link.network_address + 1, lease.link.network_address + 2
    announced, upstreams = dns.plan(nat=nat, dns=spec.dns, egress=spec.allow_egress, host_ip=host_ip,
                                    resolv_conf=resolv_conf or dns.resolv_conf_path())
    ns = netnames.netns_name(name)
    guest = GuestNet(
        subnet=lease.link,
        host_ip=host_ip,
        guest_ip=guest_ip,
        guest_mac=netnames.guest_mac(name),
        tap=netnames.TAP_NAME,
        netns=ns,
        dns=announced,
    )
    steps: list[Step] = [
        HostLeaseStep(run_dir=str(reg.root), host=reg.host, lease=lease),
        NetnsStep(netns=ns, mark=mark),
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
            mark=mark,
        ),
        TapStep(netns=ns, tap=netnames.TAP_NAME, uid=lease.uid, gid=lease.gid, host_ip=host_ip,
                prefixlen=lease.link.prefixlen, mark=mark),
    ]
    if nat:
        assert lease.uplink is not None
        veth = netnames.veth_name(name)
        steps += [
            HostNatStep(table=netnames.root_table_name(name), veth=veth, uplink=lease.uplink, pool=pool_net,
                        run_dir=str(reg.host_dir), owner=mark, egress=spec.allow_egress, blocked=blocked),
            VethStep(netns=ns, root_if=veth, peer=netnames.PEER_NAME, uplink=lease.uplink, mark=mark),
        ]
    if upstreams:
        steps.append(dns.DnsForwarderStep(netns=ns, listen=host_ip, client=guest_ip, upstreams=tuple(upstreams),
                                          owner=mark))
    if spec.publish:
        steps.append(PublishStep(netns=ns, guest_ip=guest_ip, ports=spec.publish, owner=mark))
    return guest, steps


def lease_of(steps: Sequence[Step]) -> Lease:
    """The lease (uid/gid for the VMM, addresses) of a step list made by network_steps."""
    first = steps[0]
    assert isinstance(first, HostLeaseStep)
    return first.lease
