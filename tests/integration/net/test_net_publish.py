"""`--publish`: host ports relayed into the guest by the forwarder (host/publish.py, host/portfwd.py), with the real
sandbox network (netns, nft, tap0) and a guest stand-in's kernel (sbnet_standins.GuestStandIn) behind it; clients
are plain sockets in the module's stand-in host. What the host namespace can reach of the guest: exactly the
published ports, on exactly the published address."""

from __future__ import annotations

import os
import random
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sbnet_standins import GuestStandIn, Listener

from sealbox.sandbox.host import leftovers, procmark, publish
from sealbox.sandbox.host.netns import netns_path, socket_in_netns
from sealbox.sandbox.host.network import network_steps
from sealbox.sandbox.model import GuestNet, NetMode, PortMap, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.status import published
from sealbox.sandbox.steps import StepLog, StepRefused, apply_steps, undo_steps

pytestmark = pytest.mark.integration
UPLINK_ADDR = "203.0.113.10"  # the stand-in host's own non-loopback address (conftest.STAND_IN_UPLINK)


class UdpEcho:
    """Answers every datagram on (addr, port) inside `netns` with 'echo:' + the datagram."""

    def __init__(self, netns: str, addr: str, port: int) -> None:
        self.sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, port))
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            self.sock.sendto(b"echo:" + data, peer)

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@dataclass
class Box:
    spec: SandboxSpec
    net: GuestNet
    log: StepLog
    guest: GuestStandIn
    servers: list[Any] = field(default_factory=list)

    def ports(self) -> dict[str, int]:
        """'8080/tcp' -> the host port the kernel gave."""
        e = next(e for e in self.log.entries if e.kind == "net.publish")
        out = {}
        for text in e.outputs["published"]:
            host, _, guest = text.partition("->")
            out[guest] = int(host.rsplit(":", 1)[1])
        return out


@dataclass
class World:
    prefix: str
    tmp: Path
    state: StateDir
    pool: str
    run_dir: Path
    boxes: list[Box] = field(default_factory=list)

    def start(self, key: str, ports: list[str], **kw: Any) -> Box:
        spec = SandboxSpec(name=f"{self.prefix}-p{key}", image_dir=self.tmp, publish=tuple(PortMap.parse(p) for p in ports), **kw)
        net, steps = network_steps(self.state, spec, pool=self.pool, run_dir=self.run_dir)
        log = StepLog()
        apply_steps(steps, log, lambda: None)
        box = Box(spec=spec, net=net, log=log, guest=GuestStandIn.start(net, f"{self.prefix}-pg{key}"))
        self.boxes.append(box)
        ip = str(net.guest_ip)
        box.servers += [Listener(box.guest.netns, ip, 8080), Listener(box.guest.netns, ip, 22), UdpEcho(box.guest.netns, ip, 9000)]
        return box


@pytest.fixture(scope="module")
def world(prefix: str, run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("publish")
    state = StateDir(tmp / "state")
    state.ensure()
    w = World(prefix=prefix, tmp=tmp, state=state, pool=f"10.36.{random.randrange(128, 256)}.0/24", run_dir=run_dir)
    try:
        yield w
    finally:
        problems = []
        for box in w.boxes:
            for s in box.servers:
                s.close()
            box.guest.close()
            problems += undo_steps(box.log, lambda: None)
        assert not problems


def _get(port: int, addr: str = "127.0.0.1", timeout: float = 3.0) -> str:
    with socket.create_connection((addr, port), timeout=timeout) as s:
        return s.recv(100).decode().strip()


def _udp(port: int, payload: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


@pytest.mark.parametrize("mode", [NetMode.isolated, NetMode.nat])
def test_published_ports_answer_and_nothing_else_of_the_guest_does(world: World, mode: NetMode) -> None:
    box = world.start(mode.value[:3], ["8080", "9000/udp"], net=mode)
    ports = box.ports()
    assert set(ports) == {"8080/tcp", "9000/udp"} and all(p > 0 for p in ports.values())
    # the guest sees connections from the host side of its own link: the relay sits in the sandbox namespace
    assert _get(ports["8080/tcp"]) == str(box.net.host_ip)
    assert _udp(ports["9000/udp"], b"ping") == b"echo:ping"
    assert _udp(ports["9000/udp"], b"second") == b"echo:second"  # one session per client, reused
    # only on loopback: the host's own global address does not answer on the published port
    with pytest.raises(ConnectionRefusedError):
        _get(ports["8080/tcp"], UPLINK_ADDR)
    # the guest itself is not reachable from the host namespace (no route to its link), not even port 22 or 8080
    for port in (22, 8080):
        with pytest.raises(OSError):
            _get(port, str(box.net.guest_ip), timeout=1.0)


def test_the_forwarder_lives_in_the_sandbox_and_owns_nothing(world: World) -> None:
    box = world.start("fwd", ["8080"])  # its own box: tests run in any order (CI shuffles them)
    (pid,) = [p for p, o in procmark.find(publish.MODULE) if o == world.state.mark(box.spec.name)]
    status = Path(f"/proc/{pid}/status").read_text()
    assert "\nUid:\t65534\t65534\t65534\t65534\n" in status and "\nGroups:\t \n" in status
    assert "\nNoNewPrivs:\t1\n" in status and "\nCapEff:\t0000000000000000\n" in status
    assert os.stat(f"/proc/{pid}/environ").st_uid == 0  # not dumpable
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns_path(box.net.netns)).st_ino


def test_a_taken_port_is_refused_before_anything_stays(world: World) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    spec = SandboxSpec(name=f"{world.prefix}-ptk", image_dir=world.tmp, publish=(PortMap.parse(f"{port}:80"),))
    net, steps = network_steps(world.state, spec, pool=world.pool, run_dir=world.run_dir)
    log = StepLog()
    try:
        with pytest.raises(StepRefused) as e:
            apply_steps(steps, log, lambda: None)
    finally:
        taken.close()
    assert str(e.value) == (f"--publish 127.0.0.1:{port}->80/tcp: host port 127.0.0.1:{port}/tcp is already in use "
                            "(choose another host port, or leave it out to take any free one)")
    assert [x.state for x in log.entries][-1] == "refused" and all(x.state in ("undone", "refused") for x in log.entries)
    assert not [o for _p, o in procmark.find(publish.MODULE) if o == world.state.mark(spec.name)]


def test_undo_frees_the_port_and_gc_finds_a_lost_forwarder(world: World) -> None:
    box = world.start("gone", ["127.0.0.1:0:8080/tcp"])
    port = box.ports()["8080/tcp"]
    assert published_ports(box) == [f"127.0.0.1:{port}->8080/tcp"]
    for s in box.servers:
        s.close()
    box.servers = []
    assert undo_steps(box.log, lambda: None) == []
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again: the forwarder (and with it the reservation) is gone
    lost = world.start("lost", ["8080"])
    items = [x for x in leftovers.find(world.state, keep=[b.spec.name for b in world.boxes if b is not lost], run_dir=world.run_dir)
             if x.sandbox == lost.spec.name]
    assert "port-forwarder" in {x.kind for x in items}
    for item in sorted(items, key=lambda x: x.kind != "port-forwarder"):
        leftovers.remove(item, run_dir=world.run_dir)
    assert not [o for _p, o in procmark.find(publish.MODULE) if o == world.state.mark(lost.spec.name)]
    lost.log.entries.clear()  # everything is gone already


def published_ports(box: Box) -> list[str]:
    from sealbox.sandbox.state import SandboxRecord

    return published(SandboxRecord(name=box.spec.name, created_at=0.0, steps=box.log))


def test_helpers_in_the_sandbox_namespace_reach_only_the_guest(world: World) -> None:
    """The forwarder's uid (nobody) may open connections in a nat sandbox's namespace towards the guest only: its
    packets towards the uplink (whose egress policy covers forwarded guest traffic, not local sockets) are dropped by
    the sandbox table's output chain (its counter is the oracle), root's and those towards the guest are not."""
    import ipaddress
    import subprocess

    from sealbox.sandbox.host import nft

    box = world.start("hlp", ["8080"], net=NetMode.nat)
    uplink = next(e for e in box.log.entries if e.kind == "net.host-nat").params["uplink"]
    target = str(next(ipaddress.IPv4Network(uplink).hosts()))  # the uplink's root side, in the stand-in host

    def dropped(*who: str, dest: str = target, port: int = 9) -> int:
        before = nft.counters("sealbox", box.net.netns).get("helpers reach only the guest", 0)
        subprocess.run(["ip", "netns", "exec", box.net.netns, *who, "timeout", "1.5", "bash", "-c", f"exec 3<>/dev/tcp/{dest}/{port}"],
                       capture_output=True, text=True, timeout=20)
        return nft.counters("sealbox", box.net.netns).get("helpers reach only the guest", 0) - before

    nobody = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")
    assert dropped(*nobody) >= 1
    assert dropped() == 0  # root in the namespace: not this rule's business (the host table drops it further on)
    assert dropped(*nobody, dest=str(box.net.guest_ip), port=8080) == 0  # the guest: allowed
