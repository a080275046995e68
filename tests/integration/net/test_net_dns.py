"""A nat guest resolves names through the forwarder on its own link; the forwarder follows the sandbox's
egress policy and goes away with the sandbox.

Runs in the module's stand-in host. The host's "resolv.conf" (a test file) names a stand-in upstream
resolver at 168.63.129.16 — a blocked address, as Azure's resolver is — owned by a test namespace
behind the stand-in host's uplink; a second stand-in at 198.51.100.53 is an ordinary public resolver.
The guest side uses the real glibc resolver (`getent` run with `ip netns exec`, which bind-mounts
/etc/netns/<guest>/resolv.conf) as an independent client.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sbnet_standins import ANSWER, DnsStandIn, GuestStandIn, Peer, attach, dns_query, sh

from sealbox.errors import UsageError
from sealbox.guest.instance import InstanceData, parse, render
from sealbox.sandbox.host import dns, leftovers
from sealbox.sandbox.host.network import network_steps
from sealbox.sandbox.model import EgressRule, GuestNet, NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps

pytestmark = pytest.mark.integration

AZURE, PUBLIC = "168.63.129.16", "198.51.100.53"


@dataclass
class Box:
    spec: SandboxSpec
    net: GuestNet
    log: StepLog
    steps: list[Any]
    guest: GuestStandIn | None = None


@dataclass
class World:
    prefix: str
    tmp: Path
    state: StateDir
    pool: str
    run_dir: Path
    resolv: Path
    up: Peer
    upstream: DnsStandIn
    public: DnsStandIn
    boxes: dict[str, Box] = field(default_factory=dict)
    etc: list[Path] = field(default_factory=list)

    def start(self, key: str, **kw: Any) -> Box:
        spec = SandboxSpec(name=f"{self.prefix}-d{key}", image_dir=self.tmp, **kw)
        net, steps = network_steps(self.state, spec, pool=self.pool, run_dir=self.run_dir, resolv_conf=self.resolv)
        box = self.boxes[key] = Box(spec=spec, net=net, log=StepLog(), steps=steps)
        apply_steps(steps, box.log, lambda: None)
        box.guest = GuestStandIn.start(net, f"{self.prefix}-dg{key}")
        return box

    def getent(self, box: Box, name: str) -> str:
        """The guest's glibc resolver, configured from what the instance data announces."""
        assert box.guest is not None
        etc = Path("/etc/netns") / box.guest.netns
        etc.mkdir(parents=True, exist_ok=True)
        self.etc.append(etc)
        lines = [f"nameserver {ip}" for ip in box.net.dns] or ["nameserver 192.0.2.99"]  # no resolver: nothing answers
        (etc / "resolv.conf").write_text("\n".join([*lines, "options timeout:2 attempts:1"]) + "\n")
        p = subprocess.run(["ip", "netns", "exec", box.guest.netns, "getent", "ahostsv4", name],
                           capture_output=True, text=True, timeout=30)
        return p.stdout.split()[0] if p.returncode == 0 and p.stdout else f"exit {p.returncode}"


@pytest.fixture(scope="module")
def world(prefix: str, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("dns")
    k = random.randrange(1, 250)
    up = attach(f"{prefix}-dup", f"{prefix}d", f"198.18.{k}.0/24", extra=(AZURE, PUBLIC))
    for dst in (AZURE, "198.51.100.0/24"):
        sh("ip", "route", "add", dst, "via", up.ip)
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"# the stand-in host's resolvers\nnameserver {AZURE}\nnameserver fe80::1%eth0\n")
    state = StateDir(tmp / "state")
    state.ensure()
    w = World(prefix=prefix, tmp=tmp, state=state, pool=f"10.35.{random.randrange(128, 256)}.0/24", run_dir=run_dir,
              resolv=resolv, up=up, upstream=DnsStandIn(up.netns, AZURE), public=DnsStandIn(up.netns, PUBLIC))
    try:
        yield w
    finally:
        for box in w.boxes.values():
            if box.guest:
                box.guest.close()
        problems = [p for box in w.boxes.values() for p in undo_steps(box.log, lambda: None)]
        for d in w.etc:
            shutil.rmtree(d, ignore_errors=True)
        w.upstream.close()
        w.public.close()
        up.close()
        assert not problems


def test_nat_guest_resolves_through_the_forwarder_on_its_link(world: World) -> None:
    box = world.boxes.get("nat") or world.start("nat", net=NetMode.nat)  # shared with the forwarder test, in either order
    assert box.net.dns == (box.net.host_ip,)  # announced with the instance data
    disk = parse(render(InstanceData(hostname="x", address=f"{box.net.guest_ip}/30", gateway=box.net.host_ip, dns=box.net.dns)))
    assert disk["dns"] == [str(box.net.host_ip)]
    assert world.getent(box, "www.sealbox.test") == ANSWER  # UDP
    assert world.getent(box, "tcp-big.sealbox.test") == ANSWER  # truncated over UDP: glibc retries over TCP
    # the upstream saw the host's address, never the guest's, and both transports were relayed
    peers = {(t, p) for t, p, n in world.upstream.asked if n.endswith("sealbox.test")}
    assert {("udp", world.up.host_ip), ("tcp", world.up.host_ip)} <= peers, world.upstream.asked
    assert str(box.net.guest_ip) not in {p for _, p, _ in world.upstream.asked}
    # the resolver's address itself is blocked for the guest: only the relay may talk to it
    assert box.guest is not None
    assert dns_query(box.guest.netns, AZURE, "direct.sealbox.test", timeout=1.5) == "timeout"


def test_forwarder_process_is_unprivileged_and_marked(world: World) -> None:
    box = world.boxes.get("nat") or world.start("nat", net=NetMode.nat)
    owner = world.state.mark(box.spec.name)
    (pid,) = [p for p, o in dns.find_forwarders() if o == owner]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status and "\nGroups:\t \n" in status
    assert "\nNoNewPrivs:\t1\n" in status and "\nCapEff:\t0000000000000000\n" in status
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0  # non-dumpable: no ptrace by its own uid
    with open(f"/proc/{pid}/ns/net") as f1, open("/proc/thread-self/ns/net") as f2:
        assert os.fstat(f1.fileno()).st_ino == os.fstat(f2.fileno()).st_ino  # it lives in the host namespace
    # hostile input: a non-query is dropped, the forwarder keeps serving
    assert box.guest is not None
    assert dns_query(box.guest.netns, str(box.net.host_ip), "ok.sealbox.test") == [ANSWER]


def test_isolated_guest_gets_no_resolver(world: World) -> None:
    box = world.start("iso")
    assert box.net.dns == () and not [s for s in box.steps if isinstance(s, dns.DnsForwarderStep)]
    assert box.guest is not None
    assert dns_query(box.guest.netns, str(box.net.host_ip), "x.sealbox.test", timeout=1.5) in ("timeout", "refused")


def test_allow_list_decides_which_upstreams_the_forwarder_uses(world: World, caplog: pytest.LogCaptureFixture) -> None:
    narrow = world.start("lst", net=NetMode.nat, allow_egress=(EgressRule.parse("198.51.100.0/24:443"),))
    assert narrow.net.dns == () and "gets no DNS resolver" in caplog.text
    opened = world.start("l53", net=NetMode.nat, allow_egress=(EgressRule.parse(f"{AZURE}/32:53"),))
    assert opened.net.dns == (opened.net.host_ip,)
    assert world.getent(opened, "l53.sealbox.test") == ANSWER


def test_dns_flag_names_the_guests_own_resolver(world: World) -> None:
    import ipaddress

    box = world.start("own", net=NetMode.nat, dns=(ipaddress.IPv4Address(PUBLIC),))
    assert box.net.dns == (ipaddress.IPv4Address(PUBLIC),)
    assert not [s for s in box.steps if isinstance(s, dns.DnsForwarderStep)]
    assert world.getent(box, "own.sealbox.test") == ANSWER
    assert ("udp", world.up.host_ip, "own.sealbox.test") in world.public.asked  # straight from the guest, masqueraded
    for kw in ({"dns": (ipaddress.IPv4Address(PUBLIC),)}, {"net": NetMode.nat, "dns": (ipaddress.IPv4Address(AZURE),)},
               {"net": NetMode.nat, "dns": (ipaddress.IPv4Address(PUBLIC),), "allow_egress": (EgressRule.parse("0.0.0.0/0:443"),)}):
        with pytest.raises(UsageError, match="--dns"):
            network_steps(world.state, SandboxSpec(name=f"{world.prefix}-bad", image_dir=world.tmp, **kw),
                          pool=world.pool, run_dir=world.run_dir, resolv_conf=world.resolv)


def test_undo_and_gc_stop_the_forwarder(world: World) -> None:
    box = world.start("gone", net=NetMode.nat)
    owner = world.state.mark(box.spec.name)
    assert [o for _, o in dns.find_forwarders() if o == owner]
    assert box.guest is not None
    box.guest.close()
    box.guest = None
    assert undo_steps(box.log, lambda: None) == []
    assert not [o for _, o in dns.find_forwarders() if o == owner]
    # a crash that lost the record: gc finds the forwarder by its mark and stops it
    lost = world.start("lost", net=NetMode.nat)
    assert lost.guest is not None
    lost.guest.close()
    lost.guest = None
    items = [x for x in leftovers.find(world.state, keep=[b.spec.name for k, b in world.boxes.items() if k != "lost"],
                                       run_dir=world.run_dir) if x.sandbox == lost.spec.name]
    assert sorted(x.kind for x in items) == ["dns-forwarder", "ip-forward-user", "lease", "netns", "nft-table", "veth"]
    for item in items:
        leftovers.remove(item, run_dir=world.run_dir)
    assert not [o for _, o in dns.find_forwarders() if o == world.state.mark(lost.spec.name)]
    lost.log.entries.clear()  # everything is gone already
