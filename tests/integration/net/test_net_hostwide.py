"""No host-wide side effects: a nat sandbox leaves the host's other forwarding as it was.

Runs in the module's stand-in host (conftest.stand_in_host): its ip_forward is set per test, and
plain namespaces A and B routed through it stand for the host's other networks (docker bridges,
libvirt networks, a LAN behind a router).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sbnet_standins import GuestStandIn, Listener, Peer, attach, tcp_probe

from sealbox.sandbox.host import nft
from sealbox.sandbox.host.netns import list_netns, read_sysctl, write_sysctl
from sealbox.sandbox.host.network import network_steps
from sealbox.sandbox.model import NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lans(prefix: str) -> Iterator[tuple[Peer, Peer]]:
    a = attach(f"{prefix}-a", f"{prefix}a", "192.0.2.0/30")
    b = attach(f"{prefix}-b", f"{prefix}b", "192.0.2.4/30")
    lst = Listener(b.netns, b.ip, 8080)
    yield a, b
    lst.close()
    a.close()
    b.close()


@pytest.mark.parametrize("before", ["0", "1"])
def test_nat_sandbox_forwards_only_its_own_traffic(prefix: str, tmp_path: Path, run_dir: Path,
                                                   lans: tuple[Peer, Peer], before: str) -> None:
    a, b = lans
    write_sysctl("net.ipv4.ip_forward", before)
    name = f"{prefix}-fw{before}"
    state = StateDir(tmp_path / "state")
    state.ensure()
    spec = SandboxSpec(name=name, image_dir=tmp_path, net=NetMode.nat)
    net, steps = network_steps(state, spec, pool=f"10.35.{random.randrange(128, 256)}.0/24", run_dir=run_dir)
    log, guest = StepLog(), None
    try:
        a_b_before = tcp_probe(a.netns, b.ip, 8080, 1.5)
        apply_steps(steps, log, lambda: None)
        guest = GuestStandIn.start(net, f"{prefix}-fwg{before}")
        assert read_sysctl("net.ipv4.ip_forward") == "1"
        # the sandbox's own traffic is forwarded, masqueraded to the host's address towards B
        assert tcp_probe(guest.netns, b.ip, 8080, 5) == f"ok:{b.host_ip}"
        a_b, b_a = tcp_probe(a.netns, b.ip, 8080, 1.5), tcp_probe(b.netns, a.ip, 22, 1.5)  # nothing on a:22
        if before == "0":
            assert not a_b_before.startswith("ok")  # control: this host did not forward
            assert (a_b, b_a) == ("timeout", "timeout")  # ...and still forwards nothing but the sandbox's
            assert nft.counters(nft.FORWARD_GUARD_TABLE, family="ip")["not a sandbox"] >= 2
        else:
            assert a_b_before == f"ok:{a.ip}"
            assert (a_b, b_a) == (f"ok:{a.ip}", "refused")  # the host's own forwarding is untouched
            assert ("ip", nft.FORWARD_GUARD_TABLE) not in nft.list_tables()
    finally:
        if guest:
            guest.close()
        assert undo_steps(log, lambda: None) == []
    assert read_sysctl("net.ipv4.ip_forward") == before
    assert tcp_probe(a.netns, b.ip, 8080, 1.5).startswith("ok") == (before == "1")
    assert [t for t in nft.list_tables() if "sealbox" in t[1]] == []
    assert [n for n in list_netns() if n.startswith(f"sealbox-{name}")] == []
    write_sysctl("net.ipv4.ip_forward", "0")
