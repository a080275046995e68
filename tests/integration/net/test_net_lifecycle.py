"""Create, undo, crash and replay: after undo nothing of a sandbox's network remains on the host."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import multiprocessing
import os
import random
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from sbnet_standins import IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF, scrub

from sealbox.errors import SandboxError
from sealbox.sandbox.host import dns, forward, leftovers, netnames, nft
from sealbox.sandbox.host.netlink import list_links
from sealbox.sandbox.host.netns import NetnsStep, connect_in_netns, list_netns, netns_path, read_sysctl
from sealbox.sandbox.host.network import lease_of, network_steps
from sealbox.sandbox.host.nsenter import enter_net
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.model import NetMode, SandboxSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import Step, StepLog, apply_steps, step_from_record, undo_steps

pytestmark = pytest.mark.integration


@pytest.fixture
def env(prefix: str, run_dir: Path, tmp_path: Path) -> Iterator[tuple[StateDir, str, list[str]]]:
    state = StateDir(tmp_path / "state")
    state.ensure()
    used: list[str] = []  # sandbox names a test used, for the scrubber
    pool = f"10.213.{random.randrange(128, 256)}.0/24"
    yield state, pool, used
    left = scrub(prefix, used)
    assert not left, f"test left host objects behind: {left}"


def traces(name: str, state: StateDir, run_dir: Path) -> list[str]:
    """Every host trace of sandbox `name`."""
    found = []
    if netnames.netns_name(name) in list_netns():
        found.append("netns")
    if any(n == netnames.veth_name(name) for n, _ in list_links()):
        found.append("veth")
    if ("inet", netnames.root_table_name(name)) in nft.list_tables():
        found.append("nft table")
    reg = Registry(run_dir)
    if name in reg.leases():
        found.append("lease")
    if any(h.owner == state.mark(name) for h in reg.uid_holds().values()):
        found.append("uid")
    if state.mark(name) in forward.users(reg.host_dir):
        found.append("ip_forward user")
    if state.mark(name) in (o for _, o in dns.find_forwarders()):
        found.append("dns forwarder")
    return found


def build(state: StateDir, pool: str, run_dir: Path, name: str, nat: bool) -> list[Step]:
    spec = SandboxSpec(name=name, image_dir=state.root, net=NetMode.nat if nat else NetMode.isolated)
    _, steps = network_steps(state, spec, pool=pool, run_dir=run_dir)
    return steps


def test_undo_removes_everything_and_ip_forward_follows_last_nat(
    env: tuple[StateDir, str, list[str]], prefix: str, run_dir: Path, original_ip_forward: str
) -> None:
    state, pool, used = env
    names = [f"{prefix}-u{i}" for i in range(3)]
    used += names
    logs = {}
    for name, nat in zip(names, (False, True, True), strict=True):
        logs[name] = StepLog()
        apply_steps(build(state, pool, run_dir, name, nat), logs[name], lambda: None)
    assert traces(names[0], state, run_dir) == ["netns", "lease", "uid"]
    for n in names[1:]:
        assert traces(n, state, run_dir) == ["netns", "veth", "nft table", "lease", "uid", "ip_forward user", "dns forwarder"]
    assert read_sysctl("net.ipv4.ip_forward") == "1"

    assert undo_steps(logs[names[1]], lambda: None) == []
    assert read_sysctl("net.ipv4.ip_forward") == "1"  # the other nat sandbox still needs it
    assert undo_steps(logs[names[2]], lambda: None) == []
    assert read_sysctl("net.ipv4.ip_forward") == original_ip_forward
    assert undo_steps(logs[names[0]], lambda: None) == []
    for n in names:
        assert traces(n, state, run_dir) == [], n
    ours = {netnames.veth_name(n) for n in names}
    assert not [x for x in leftovers.find(state, keep=[], run_dir=run_dir) if x.sandbox in names or x.ident in ours]
    # undo is idempotent: replaying every step's undo again from its record changes nothing and fails nothing
    for log in logs.values():
        for entry in log.entries:
            step_from_record(entry.kind, entry.params).undo({})
    assert read_sysctl("net.ipv4.ip_forward") == original_ip_forward


def _crash_child(root: str, pool: str, run_dir: str, name: str, record: str, kill_at: str | None) -> None:
    """Runs in a forked child: set up, save the record after every transition, die without cleanup."""
    state = StateDir(Path(root))
    log = StepLog()

    def save() -> None:
        last = log.entries[-1] if log.entries else None
        # kill_at "<kind>": die right after <kind>.do() returned, before "done" reached the record
        if last is not None and kill_at == last.kind and last.state == "done":
            os.kill(os.getpid(), signal.SIGKILL)
        Path(record).write_text(log.model_dump_json())

    apply_steps(build(state, pool, Path(run_dir), name, nat=True), log, save)
    os.kill(os.getpid(), signal.SIGKILL)  # crash after everything was done


@pytest.mark.parametrize("kill_at", [None, "net.dns", "net.veth", "net.tap"])
def test_crash_then_undo_from_record(
    env: tuple[StateDir, str, list[str]], prefix: str, run_dir: Path, original_ip_forward: str, tmp_path: Path, kill_at: str | None
) -> None:
    state, pool, used = env
    name = f"{prefix}-c{random.randrange(1000)}"
    used.append(name)
    record = tmp_path / "record.json"
    ctx = multiprocessing.get_context("fork")
    child = ctx.Process(target=_crash_child, args=(str(state.root), pool, str(run_dir), name, str(record), kill_at))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert "netns" in traces(name, state, run_dir)  # the crash really left things behind

    # a later sealbox process: only the record survives
    log = StepLog.model_validate_json(record.read_text())
    if kill_at:
        assert log.entries[-1].kind == kill_at and log.entries[-1].state == "planned"
    assert undo_steps(log, lambda: None) == []
    assert traces(name, state, run_dir) == []
    assert all(e.state == "undone" for e in log.entries)
    assert read_sysctl("net.ipv4.ip_forward") == original_ip_forward


def test_leftovers_found_and_removed_without_record(
    env: tuple[StateDir, str, list[str]], prefix: str, run_dir: Path, original_ip_forward: str
) -> None:
    state, pool, used = env
    name, keep = f"{prefix}-lo", f"{prefix}-keep"
    used += [name, keep]
    apply_steps(build(state, pool, run_dir, name, nat=True), StepLog(), lambda: None)
    kept_log = StepLog()
    apply_steps(build(state, pool, run_dir, keep, nat=True), kept_log, lambda: None)
    # the record of `name` is lost; gc knows only `keep`
    mine = [x for x in leftovers.find(state, keep=[keep], run_dir=run_dir) if x.sandbox == name]
    assert sorted(x.kind for x in mine) == ["dns-forwarder", "ip-forward-user", "lease", "netns", "nft-table", "veth"]
    assert all(x.ours for x in mine)
    assert not [x for x in leftovers.find(state, keep=[keep], run_dir=run_dir) if x.sandbox == keep]
    for item in mine:
        leftovers.remove(item, run_dir=run_dir)
        leftovers.remove(item, run_dir=run_dir)  # idempotent
    assert traces(name, state, run_dir) == []
    assert traces(keep, state, run_dir) == ["netns", "veth", "nft table", "lease", "uid", "ip_forward user", "dns forwarder"]
    assert read_sysctl("net.ipv4.ip_forward") == "1"
    assert undo_steps(kept_log, lambda: None) == []
    assert read_sysctl("net.ipv4.ip_forward") == original_ip_forward


def _open_tap_as(netns: str, uid: int, gid: int) -> int:
    """In a forked child: enter netns, open /dev/net/tun as root (0600 here, as in a jail the VMM gets
    its own node), drop to uid/gid, attach to tap0 by name like Firecracker does. Returns errno."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fd = os.open(netns_path(netns), os.O_RDONLY)
            enter_net(fd)
            tun = os.open("/dev/net/tun", os.O_RDWR)
            os.setgroups([])
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", b"tap0", IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        except OSError as e:
            code = e.errno or 1
        except BaseException:  # noqa: BLE001
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_tap_opens_by_name_for_its_owner_only(env: tuple[StateDir, str, list[str]], prefix: str, run_dir: Path) -> None:
    state, pool, used = env
    name = f"{prefix}-tap"
    used.append(name)
    log = StepLog()
    steps = build(state, pool, run_dir, name, nat=False)
    apply_steps(steps, log, lambda: None)
    uid = lease_of(steps).uid
    try:
        assert _open_tap_as(netnames.netns_name(name), uid, uid) == 0
        assert _open_tap_as(netnames.netns_name(name), uid + 1, uid + 1) == errno.EPERM
    finally:
        assert undo_steps(log, lambda: None) == []


def test_netns_step_refuses_existing_and_connect_needs_netns(env: tuple[StateDir, str, list[str]], prefix: str) -> None:
    _, _, used = env
    name = f"{prefix}-ns"
    used.append(name)
    step = NetnsStep(netns=netnames.netns_name(name), mark=f"sealbox/0123456789abcdef/{name}")
    step.do()
    try:
        with pytest.raises(SandboxError, match="already exists"):
            step.do()
        assert read_sysctl("net.ipv4.ip_forward", step.netns) == "0"
        assert read_sysctl("net.ipv6.conf.default.disable_ipv6", step.netns) == "1"
    finally:
        step.undo({})
        step.undo({})
    assert step.netns not in list_netns()
    with pytest.raises(SandboxError, match="does not exist"):
        connect_in_netns(step.netns, "10.0.0.1", 22, timeout=1)


def test_failure_midway_undoes_what_was_done(env: tuple[StateDir, str, list[str]], prefix: str, run_dir: Path) -> None:
    state, pool, used = env
    name = f"{prefix}-f"
    used.append(name)
    steps = build(state, pool, run_dir, name, nat=True)

    class Boom(Step):
        kind = "test.boom"

        def do(self) -> None:
            raise SandboxError("boom")

        def undo(self, outputs: dict) -> None:  # type: ignore[type-arg]
            pass

    log = StepLog()
    with pytest.raises(SandboxError, match="boom"):
        apply_steps([*steps, Boom()], log, lambda: None)
    assert traces(name, state, run_dir) == []


def test_foreign_forward_drop_chains_are_reported(env: tuple[StateDir, str, list[str]], prefix: str) -> None:
    _, _, used = env
    name = f"{prefix}-fd"
    used.append(name)
    step = NetnsStep(netns=netnames.netns_name(name), mark=f"sealbox/0123456789abcdef/{name}")
    step.do()
    try:
        assert nft.foreign_forward_drops(step.netns) == []
        own = nft.host_ruleset(table=netnames.root_table_name(name), veth="sb0000000000000",
                               uplink=ipaddress.IPv4Network("10.213.0.4/30"), pool=ipaddress.IPv4Network("10.213.0.0/16"))
        nft.apply(own, step.netns)
        nft.apply(nft.sandbox_ruleset(table="sealbox", tap="tap0", guest_ip=ipaddress.IPv4Address("10.213.0.2"),
                                      host_ip=ipaddress.IPv4Address("10.213.0.1"), pool=ipaddress.IPv4Network("10.213.0.0/16"),
                                      uplink_if=None), step.netns)
        foreign = {"nftables": [
            {"add": {"table": {"family": "ip", "name": "filter"}}},
            {"add": {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward", "prio": 0,
                               "policy": "drop"}}},
        ]}
        nft.apply(foreign, step.netns)
        # sealbox's own tables (one with forward policy drop) are not reported, the foreign one is
        assert nft.foreign_forward_drops(step.netns) == ["ip filter FORWARD"]
    finally:
        step.undo({})
