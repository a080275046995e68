"""Metadata services and host-local services are dropped by default and opened only explicitly.

Runs in the module's stand-in host (conftest.stand_in_host). Stand-in servers own the real metadata
addresses inside test namespaces that the stand-in host routes to — no packet is ever sent toward
the real addresses:
- `up` (the uplink): 169.254.169.254 (AWS/GCP/OpenStack), 169.254.170.2 (ECS), 168.63.129.16 (Azure
  wireserver), 100.100.100.200 (Alibaba) and 198.51.100.7 (an ordinary "internet" server);
- `lan`: 192.168.K.2 on a private network the host is connected to (host side 192.168.K.1);
- the stand-in host itself: a listener on 0.0.0.0 (its own addresses: 203.0.113.10 on its uplink,
  192.168.K.1, 198.18.K.1).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sbnet_standins import GuestStandIn, Listener, Peer, attach, probe_many, sh

from sealbox.sandbox.host import nft
from sealbox.sandbox.host.network import network_steps
from sealbox.sandbox.model import EgressRule, GuestNet, NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps

pytestmark = pytest.mark.integration

METADATA = ("169.254.169.254", "169.254.170.2", "168.63.129.16", "100.100.100.200")
PUBLIC = "198.51.100.7"
PORT = 80


@dataclass
class Box:
    net: GuestNet
    log: StepLog
    guest: GuestStandIn | None = None


@dataclass
class World:
    k: int
    up: Peer
    lan: Peer
    boxes: dict[str, Box] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)

    @property
    def host_addrs(self) -> tuple[str, ...]:
        return ("203.0.113.10", self.lan.host_ip, self.up.host_ip)


@pytest.fixture(scope="module")
def world(prefix: str, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("hostlocal")
    k = random.randrange(1, 250)
    up = attach(f"{prefix}-up", f"{prefix}u", f"198.18.{k}.0/24", extra=(*METADATA, PUBLIC))
    w = World(k=k, up=up, lan=attach(f"{prefix}-lan", f"{prefix}l", f"192.168.{k}.0/24"))
    w.closers += [w.up, w.lan]
    for dst in ("169.254.0.0/16", "168.63.129.16", "100.100.100.200", "198.51.100.0/24"):
        sh("ip", "route", "add", dst, "via", up.ip)
    state = StateDir(tmp / "state")
    state.ensure()
    pool = f"10.35.{random.randrange(128, 256)}.0/24"
    specs: dict[str, dict[str, Any]] = {
        "dflt": {},
        "open": {"allow_egress": tuple(EgressRule.parse(t) for t in (
            "0.0.0.0/0", "168.63.129.16/32:80", f"{w.lan.ip}/32", f"{w.lan.host_ip}/32:{PORT}"))},
    }
    try:
        for key, extra in specs.items():
            spec = SandboxSpec(name=f"{prefix}-{key}", image_dir=tmp, net=NetMode.nat, **extra)
            net, steps = network_steps(state, spec, pool=pool, run_dir=run_dir)
            box = w.boxes[key] = Box(net=net, log=StepLog())
            apply_steps(steps, box.log, lambda: None)
            box.guest = GuestStandIn.start(net, f"{prefix}-g{key}")
        w.closers += [Listener(up.netns, a, PORT) for a in (*METADATA, PUBLIC)]
        w.closers += [Listener(w.lan.netns, w.lan.ip, PORT), Listener(None, "0.0.0.0", PORT)]
        yield w
    finally:
        for box in w.boxes.values():
            if box.guest:
                box.guest.close()
        problems = [p for box in w.boxes.values() for p in undo_steps(box.log, lambda: None)]
        for c in reversed(w.closers):
            c.close()
        assert not problems


def _probes(w: World, key: str) -> dict[str, str]:
    g = w.boxes[key].guest
    assert g is not None
    targets = [*METADATA, PUBLIC, w.lan.ip, *w.host_addrs]
    return probe_many({t: (g.netns, t, PORT) for t in targets}, timeout=2.0)


def test_metadata_and_host_local_dropped_by_default(world: World) -> None:
    got = _probes(world, "dflt")
    reached = sorted(t for t, r in got.items() if r.startswith("ok"))
    assert reached == [PUBLIC], got  # the control: ordinary egress works
    c = nft.counters("sealbox", world.boxes["dflt"].net.netns)
    assert c["blocked: link-local/metadata"] >= 2 and c["blocked: Azure wireserver"] >= 1
    assert c["blocked: Alibaba metadata"] >= 1 and c["blocked: host network"] >= 1 and c["blocked: host address"] >= 3


def test_explicit_allow_egress_opens_exactly_what_it_names(world: World) -> None:
    got = _probes(world, "open")
    reached = sorted(t for t, r in got.items() if r.startswith("ok"))
    # 0.0.0.0/0 opens nothing blocked; the /32s named explicitly do (the host address on its port only)
    assert reached == sorted([PUBLIC, "168.63.129.16", world.lan.ip, world.lan.host_ip]), got


def _daddr(rule: dict[str, Any]) -> list[str]:
    out = []
    for e in rule["expr"]:
        m = e.get("match")
        if m and m["left"].get("payload", {}).get("field") == "daddr" and m["op"] == "==":
            r = m["right"]
            out.append(f"{r['prefix']['addr']}/{r['prefix']['len']}" if isinstance(r, dict) else str(r))
    return out


def test_live_ruleset_drops_every_range_before_any_accept(world: World) -> None:
    box = world.boxes["dflt"]
    rules = [i["rule"] for i in nft.list_ruleset(box.net.netns, table="sealbox") if "rule" in i and i["rule"]["chain"] == "forward"]
    first_accept = next(i for i, r in enumerate(rules) if any("accept" in e for e in r["expr"]))
    dropped_early = {d for r in rules[:first_accept] if any("drop" in e for e in r["expr"]) for d in _daddr(r)}
    want = {"169.254.0.0/16", "168.63.129.16", "100.100.100.200", "fd00:ec2::254", f"192.168.{world.k}.0/24",
            *world.host_addrs}
    assert want <= dropped_early, (want - dropped_early, rules)
    assert first_accept > len(want)
    assert ipaddress.ip_address(world.lan.ip) in ipaddress.ip_network(f"192.168.{world.k}.0/24")
