"""One unprivileged identity per sandbox: two sandboxes' VMMs run as different uids, and the second
VMM's uid cannot open the first one's disks, TAP, API socket or jail files (tried for real as that
uid). Firecracker through the STAND-IN jailer (standins.py), with guest readiness stood in; every host
object, process and uid is real. Before: every VMM ran as the one `sealbox-vmm` user."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_integ import leftovers
from standins import as_uid, attach_tap_as, firecracker_env, guest_ready_standin, open_dir, proc_uids, standin_image

from sealbox.sandbox import control, manager
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.firecracker.backend import firecracker_entries

pytestmark = [pytest.mark.integration]


def _jail(state: StateDir, name: str) -> tuple[Path, int]:
    rec = state.load(name)
    _stage, start = firecracker_entries(rec)
    root = Path(start.params["layout"]["chroot_base"]) / start.params["layout"]["exec_name"] / name / "root"
    return root, int(start.outputs["pid"])


@pytest.fixture
def jail_base() -> Iterator[Path]:
    with open_dir() as d:
        yield d / "jails"


def test_each_firecracker_runs_as_its_own_uid_and_cannot_reach_the_other(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         jail_base: Path) -> None:
    firecracker_env(tmp_path, monkeypatch, jail_base)
    guest_ready_standin(monkeypatch)
    state = StateDir(tmp_path / "state")
    image = standin_image(tmp_path / "image")
    tag = f"id{os.getpid() % 10000}{int(time.time()) % 1000}"
    names = [f"{tag}-a", f"{tag}-b"]
    disks = {}
    for n in names:  # a writable data disk each, on the jail's filesystem (it is hard-linked in)
        disks[n] = jail_base.parent / f"{n}.img"
        disks[n].write_bytes(b"DATA".ljust(1 << 16, b"\0"))
    try:
        for n in names:
            spec = manager.make_spec(name=n, image_dir=image, vmm="firecracker", memory_mib=128, disks=[f"{disks[n]}:rw"])
            assert manager.run(spec, state)["status"] == "running"
        (root_a, pid_a), (_root_b, pid_b) = _jail(state, names[0]), _jail(state, names[1])
        leases = Registry().leases()
        uid_a, uid_b = leases[names[0]].uid, leases[names[1]].uid
        assert uid_a != uid_b and min(uid_a, uid_b) >= 1000
        assert proc_uids(pid_a) == (uid_a, uid_a) and proc_uids(pid_b) == (uid_b, uid_b)  # the VMMs themselves
        st = root_a.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid_a, 0o700)  # the jail root belongs to a's uid only
        files = {"disk": root_a / "disk0.img", "instance disk": root_a / "instance.img", "config": root_a / "config.json",
                 "log": root_a / "firecracker.log"}
        for what, path in files.items():
            assert path.stat().st_uid == uid_a, what
            assert as_uid(uid_a, "read", path) == "ok", f"a's VMM must open its own {what}"
            assert as_uid(uid_b, "read", path) == "EACCES", f"b's VMM opened a's {what}"
            assert as_uid(uid_b, "write", path) == "EACCES", f"b's VMM wrote a's {what}"
        sock = root_a / "run" / "firecracker.socket"
        assert as_uid(uid_a, "connect", sock) == "ok"
        assert as_uid(uid_b, "connect", sock) == "EACCES"
        netns_a = state.load(names[0]).network["netns"]
        assert attach_tap_as(netns_a, "tap0", uid_b) == "EPERM"  # the TAP is a's uid's only
        assert attach_tap_as(netns_a, "tap0", uid_a) == "ok"  # (the stand-in holds no TAP: a's uid can)
    finally:
        for n in names:
            if state.exists(n):
                control.remove(state, n, force=True)
    for n in names:
        assert leftovers(state.root, n) == []
    assert not [u for u, h in Registry().uid_holds().items() if h.owner in (state.mark(n) for n in names)]
    for n in names:  # the rw disks got their owner back
        assert disks[n].stat().st_uid == 0
