"""Naming, network_steps (dry run: no host change), step records, and the proxy pump."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.sandbox.host import netnames, users
from sealbox.sandbox.host.network import lease_of, network_steps
from sealbox.sandbox.host.proxy import pump
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.model import EgressRule, Limits, NetMode, RateLimit, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import step_from_record


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    st = StateDir(tmp_path / "state")
    st.ensure()
    return st


def spec(tmp_path: Path, **kw: object) -> SandboxSpec:
    return SandboxSpec(name=str(kw.pop("name", "box-1")), image_dir=tmp_path, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "x" * 64, "Box-9"])
def test_names(name: str) -> None:
    veth = netnames.veth_name(name)
    assert len(veth) <= 15 and netnames.VETH_RE.fullmatch(veth)
    mac = netnames.guest_mac(name)
    octets = [int(x, 16) for x in mac.split(":")]
    assert len(octets) == 6 and octets[0] == 0x02  # locally administered, unicast
    assert netnames.sandbox_of_netns(netnames.netns_name(name)) == name
    assert netnames.sandbox_of_table(netnames.root_table_name(name)) == name


def test_names_are_distinct_per_sandbox() -> None:
    assert netnames.veth_name("a") != netnames.veth_name("b")
    assert netnames.guest_mac("a") != netnames.guest_mac("b")
    assert netnames.sandbox_of_netns("other-ns") is None and netnames.sandbox_of_netns("sealbox-bad/x") is None


def test_isolated_plan(state: StateDir, tmp_path: Path) -> None:
    guest, steps = network_steps(state, spec(tmp_path), dry_run=True, pool="10.77.0.0/24", run_dir=tmp_path / "run")
    assert [s.kind for s in steps] == ["host.lease", "net.netns", "net.firewall", "net.tap"]
    assert (str(guest.host_ip), str(guest.guest_ip), guest.netns, guest.tap) == ("10.77.0.1", "10.77.0.2", "sealbox-box-1", "tap0")
    assert guest.kernel_ip_arg("box-1") == "ip=10.77.0.2::10.77.0.1:255.255.255.252:box-1:eth0:off"
    assert not (tmp_path / "run").exists()  # a dry run leases nothing
    uid = lease_of(steps).uid
    assert uid == lease_of(steps).gid and uid >= users.uid_range()[0]
    text = "\n".join(s.describe() for s in steps)
    assert "reaches only 10.77.0.1" in text and f"owner {uid}:{uid}" in text
    assert all(getattr(s, "mark", state.mark("box-1")) == state.mark("box-1") for s in steps)


def test_nat_plan_with_egress_and_limits(state: StateDir, tmp_path: Path) -> None:
    sp = spec(
        tmp_path,
        net=NetMode.nat,
        allow_egress=(EgressRule.parse("198.18.0.0/24:443"),),
        limits=Limits(net_rx_bytes=RateLimit(size=1_000_000), net_tx_bytes=RateLimit(size=200_000)),
    )
    guest, steps = network_steps(state, sp, pool="10.77.0.0/24", run_dir=tmp_path / "run")
    assert [s.kind for s in steps] == ["host.lease", "net.netns", "net.firewall", "net.tap", "net.host-nat", "net.veth"]
    assert "box-1" in Registry(tmp_path / "run").leases()  # leased for real (no dry_run)
    assert steps[4].owner == state.mark("box-1") and steps[4].run_dir == str(Registry(tmp_path / "run").host_dir)  # type: ignore[attr-defined]
    fw = steps[2]
    assert fw.uplink_if == "veth0" and fw.egress == sp.allow_egress  # type: ignore[attr-defined]
    assert "egress to 198.18.0.0/24:443" in fw.describe()
    assert "rx 1000000 B/s" in fw.describe() and "tx 200000 B/s" in fw.describe()
    for s in steps:  # every step survives the record round trip exactly
        assert step_from_record(s.kind, s.model_dump(mode="json")) == s


def test_allow_egress_needs_nat(state: StateDir, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--net nat"):
        network_steps(state, spec(tmp_path, allow_egress=(EgressRule.parse("1.2.3.0/24"),)), dry_run=True)


def _echo_server(sock: socket.socket) -> None:
    conn, _ = sock.accept()
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data.upper())
    # recv returned b"": the proxy half-closed after stdin EOF; closing ends the proxy


def test_pump_copies_both_ways_and_ends_after_stdin_eof() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    t = threading.Thread(target=_echo_server, args=(srv,), daemon=True)
    t.start()
    client = socket.create_connection(srv.getsockname(), timeout=5)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"hello over the proxy\n")
    os.close(in_w)  # EOF on stdin
    why = pump(client, in_r, out_w, idle_timeout=10)
    os.close(out_w)
    assert why == "remote closed"
    assert os.read(out_r, 1000) == b"HELLO OVER THE PROXY\n"
    t.join(5)
    for fd in (in_r, out_r):
        os.close(fd)
    client.close()
    srv.close()


def test_pump_ends_when_remote_closes_first_and_idle_timeout_bounds() -> None:
    a, b = socket.socketpair()
    in_r, in_w = os.pipe()  # stdin stays open
    out_r, out_w = os.pipe()
    b.sendall(b"bye")
    b.close()
    assert pump(a, in_r, out_w, idle_timeout=5) == "remote closed"
    assert os.read(out_r, 10) == b"bye"
    c, d = socket.socketpair()
    assert pump(c, in_r, out_w, idle_timeout=0.2) == "idle timeout"
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)
    for s in (a, c, d):
        s.close()
