"""Undo removes only what its step created: foreign objects of the same name (another state dir's,
another tool's) are refused by do() and left untouched by undo; two state dirs share one host registry.

Each of these failed on the code before ownership marks: NetnsStep/VethStep undo deleted a foreign
namespace/veth of the same name, HostNatStep.do replaced a foreign nft table, and two state dirs
handed out the same /30s."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path

import pytest
from sbnet_standins import sh

from sealbox.errors import SandboxError
from sealbox.sandbox.host import forward, netnames, owner
from sealbox.sandbox.host.firewall import HostNatStep
from sealbox.sandbox.host.netlink import VethStep, list_links_marked
from sealbox.sandbox.host.netns import NetnsStep, list_netns, netns_mark, read_sysctl
from sealbox.sandbox.host.network import lease_of, network_steps
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.model import NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps

pytestmark = pytest.mark.integration
OTHER = "sealbox/fedcba9876543210/"  # a mark of some other state dir



def _table(name: str) -> str:
    return sh("nft", "list", "table", "inet", name, check=False).stdout


def test_netns_of_another_is_refused_and_survives_undo(prefix: str, used: list[str]) -> None:
    unmarked, marked = netnames.netns_name(f"{prefix}-fn1"), netnames.netns_name(f"{prefix}-fn2")
    used += [f"{prefix}-fn1", f"{prefix}-fn2"]
    sh("ip", "netns", "add", unmarked)  # another tool's
    NetnsStep(netns=marked, mark=OTHER + "x").do()  # another state dir's
    for ns in (unmarked, marked):
        step = NetnsStep(netns=ns, mark=f"sealbox/0123456789abcdef/{ns}")
        with pytest.raises(SandboxError, match="already exists"):
            step.do()
        step.undo({})
        assert ns in list_netns(), f"undo removed {ns}, which it did not create"
    assert netns_mark(marked) == OTHER + "x" and netns_mark(unmarked) is None
    NetnsStep(netns=marked, mark=OTHER + "x").undo({})
    assert marked not in list_netns()  # its owner's undo does remove it
    sh("ip", "netns", "del", unmarked)


def test_veth_of_another_is_refused_and_survives_undo(prefix: str, used: list[str]) -> None:
    name = f"{prefix}-fv"
    used.append(name)
    veth = netnames.veth_name(name)
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"{prefix}p")
    mark = f"sealbox/0123456789abcdef/{name}"
    ns = NetnsStep(netns=netnames.netns_name(name), mark=mark)
    ns.do()
    try:
        step = VethStep(netns=ns.netns, root_if=veth, peer="veth0", uplink=ipaddress.IPv4Network("10.34.250.0/30"), mark=mark)
        with pytest.raises(SandboxError, match="already exists in the root namespace"):
            step.do()
        step.undo({})
        assert (veth, "veth", None) in list_links_marked(), "undo removed a veth it did not create"
    finally:
        ns.undo({})
        sh("ip", "link", "del", veth, check=False)


def test_host_nat_table_of_another_is_neither_replaced_nor_removed(prefix: str, run_dir: Path, used: list[str]) -> None:
    name = f"{prefix}-ft"
    used.append(name)
    table = netnames.root_table_name(name)
    sh("nft", "add", "table", "inet", table)
    sh("nft", "add", "chain", "inet", table, "foreign")
    fwd = Registry(run_dir).host_dir
    step = HostNatStep(table=table, veth="sb0000000000001", uplink=ipaddress.IPv4Network("10.34.250.4/30"),
                       pool=ipaddress.IPv4Network("10.34.0.0/16"), run_dir=str(fwd), owner=f"sealbox/0123456789abcdef/{name}")
    try:
        with pytest.raises(SandboxError, match="already exists"):
            step.do()
        assert "chain foreign" in _table(table) and step.owner not in forward.users(fwd)
        step.undo({})
        assert "chain foreign" in _table(table), "undo removed a table it did not create"
    finally:
        sh("nft", "delete", "table", "inet", table, check=False)


def test_host_nat_table_is_created_marked(prefix: str, run_dir: Path, used: list[str]) -> None:
    name = f"{prefix}-fm"
    used.append(name)
    table = netnames.root_table_name(name)
    fwd = Registry(run_dir).host_dir
    mine = f"sealbox/0123456789abcdef/{name}"
    step = HostNatStep(table=table, veth="sb0000000000002", uplink=ipaddress.IPv4Network("10.34.250.8/30"),
                       pool=ipaddress.IPv4Network("10.34.0.0/16"), run_dir=str(fwd), owner=mine)
    step.do()
    try:
        assert owner.nft_table_marks()[table] == mine and "masquerade" in _table(table)
        other = step.model_copy(update={"owner": OTHER + name})
        other.undo({})  # another sandbox's record naming the same table: leaves ours alone
        assert owner.nft_table_marks()[table] == mine
    finally:
        step.undo({})
    assert table not in owner.nft_table_marks() and mine not in forward.users(fwd)


def _nat(state: StateDir, name: str, pool: str, run_dir: Path) -> tuple[StepLog, list]:  # type: ignore[type-arg]
    spec = SandboxSpec(name=name, image_dir=state.root, net=NetMode.nat)
    _, steps = network_steps(state, spec, pool=pool, run_dir=run_dir)
    log = StepLog()
    apply_steps(steps, log, lambda: None)  # on failure it undoes what it recorded, then raises
    return log, steps


def _objects(state: StateDir, name: str, run_dir: Path) -> list[str]:
    reg, mark = Registry(run_dir), state.mark(name)
    found = []
    if netns_mark(netnames.netns_name(name)) == mark:
        found.append("netns")
    if any(n == netnames.veth_name(name) and a == mark for n, _k, a in list_links_marked()):
        found.append("veth")
    if owner.nft_table_marks().get(netnames.root_table_name(name)) == mark:
        found.append("nft table")
    if reg.leases().get(name) is not None and reg.leases()[name].owner == mark:
        found.append("lease")
    if mark in forward.users(reg.host_dir):
        found.append("ip_forward user")
    return found


ALL = ["netns", "veth", "nft table", "lease", "ip_forward user"]


def test_two_state_dirs_same_name_nat(prefix: str, run_dir: Path, tmp_path: Path, used: list[str]) -> None:
    """The second state dir is refused cleanly (by the host registry); its failed run's undo — and even
    a run that bypassed the registry (another registry dir: a misconfigured second sealbox) — leaves the
    first sandbox whole."""
    name = f"{prefix}-same"
    used.append(name)
    a, b = StateDir(tmp_path / "a"), StateDir(tmp_path / "b")
    pool = f"10.34.{random.randrange(128, 256)}.0/24"
    log_a, _ = _nat(a, name, pool, run_dir)
    try:
        assert _objects(a, name, run_dir) == ALL
        with pytest.raises(SandboxError, match=f"in use on this host by the state dir {a.root}"):
            _nat(b, name, pool, run_dir)
        with pytest.raises(SandboxError, match="already exists"):
            _nat(b, name, pool, tmp_path / "elsewhere")  # its own registry: refused by the netns step
        assert _objects(a, name, run_dir) == ALL  # undo of b's half-made sandbox touched nothing of a
        assert read_sysctl("net.ipv4.ip_forward") == "1"
    finally:
        assert undo_steps(log_a, lambda: None) == []
    assert _objects(a, name, run_dir) == []


def test_two_state_dirs_both_nat_at_once(prefix: str, run_dir: Path, tmp_path: Path, used: list[str], original_ip_forward: str) -> None:
    a, b = StateDir(tmp_path / "a"), StateDir(tmp_path / "b")
    na, nb = f"{prefix}-na", f"{prefix}-nb"
    used += [na, nb]
    pool = f"10.34.{random.randrange(128, 256)}.0/24"
    log_a, steps_a = _nat(a, na, pool, run_dir)
    log_b, steps_b = _nat(b, nb, pool, run_dir)
    try:
        la, lb = lease_of(steps_a), lease_of(steps_b)
        assert not set(la.subnets()) & set(lb.subnets()) and la.uid != lb.uid  # one table for the host
        assert undo_steps(log_a, lambda: None) == []
        assert _objects(a, na, run_dir) == [] and _objects(b, nb, run_dir) == ALL
        assert read_sysctl("net.ipv4.ip_forward") == "1"  # b still needs it
    finally:
        undo_steps(log_a, lambda: None)
        assert undo_steps(log_b, lambda: None) == []
    assert _objects(b, nb, run_dir) == [] and read_sysctl("net.ipv4.ip_forward") == original_ip_forward


def test_a_placeholder_left_by_a_crash_is_ours_only_by_its_mark(tmp_path: Path, run_dir: Path) -> None:
    """A crash between writing a namespace's placeholder and linking it to its name leaves the temp file."""
    from sealbox.sandbox.host import leftovers
    from sealbox.sandbox.host.netns import NETNS_RUN_DIR, TMP_PREFIX

    state = StateDir(tmp_path / "s")
    mine, theirs = NETNS_RUN_DIR / f"{TMP_PREFIX}sealbox-x.1.aa", NETNS_RUN_DIR / f"{TMP_PREFIX}sealbox-x.2.bb"
    NETNS_RUN_DIR.mkdir(exist_ok=True)
    mine.write_text(state.mark("x") + "\n")
    theirs.write_text(OTHER + "x\n")
    try:
        found = {Path(i.ident): i for i in leftovers.find(state, keep=[], run_dir=run_dir) if i.kind == "netns-placeholder"}
        assert found[mine].ours and not found[theirs].ours
        leftovers.remove(found[mine], run_dir=run_dir)
        assert not mine.exists() and theirs.exists()
        with pytest.raises(ValueError, match="not ours"):
            leftovers.remove(found[theirs], run_dir=run_dir)
    finally:
        mine.unlink(missing_ok=True)
        theirs.unlink(missing_ok=True)


def test_the_registry_is_keyed_by_the_hosts_network_namespace(prefix: str, used: list[str]) -> None:
    """A simulated host (sealbox running inside another network namespace of this machine) has a registry of its own."""
    from sealbox.sandbox.host.netns import run_in_netns
    from sealbox.sandbox.host.registry import host_key

    name = f"{prefix}-hk"
    used.append(name)
    ns = NetnsStep(netns=netnames.netns_name(name), mark=f"sealbox/0123456789abcdef/{name}")
    ns.do()
    try:
        here, there = host_key(), run_in_netns(ns.netns, host_key)
        assert here != there and here == Registry().host
        assert there == f"net-{Path('/var/run/netns', ns.netns).stat().st_ino}"
    finally:
        ns.undo({})
