"""Snapshot collection with a hostile VMM (issue 11: root never follows paths the VMM controls).

The stand-in Firecracker API (fc_testlib, NOT Firecracker) acts as a compromised VMM would: everything
inside the jail root belongs to the VMM user, so when it is asked for a snapshot it plants symlinks to a
canary file outside the jail, or lies about its drives in GET /vm/config. The real snapshot code must
leave the canary's mode, owner and content alone, copy nothing of it, refuse with a clear message, and
still resume the guest."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from test_fc_snapshot import setup, vmm_file  # noqa: F401 - the fixture is reused

from sealbox.errors import SandboxError

SECRET = b"canary: a host file the VMM must never reach\n"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    c = d / "memory"  # same name as a snapshot file: a symlinked /snapshot dir points here
    c.write_bytes(SECRET)
    os.chmod(c, 0o600)
    return c


def facts(p: Path) -> tuple[int, int, bytes]:
    st = os.lstat(p)
    return stat.S_IMODE(st.st_mode), st.st_uid, p.read_bytes()


def refused(srv, backend, record, dest: Path, canary: Path) -> str:  # type: ignore[no-untyped-def]
    before = facts(canary)
    err: Exception | None = None
    try:
        backend.snapshot(record, dest)
    except Exception as e:  # noqa: BLE001 - judged below, after the canary
        err = e
    assert facts(canary) == before, "the canary's mode, owner or content changed"
    assert isinstance(err, SandboxError), f"not refused: {err!r}"
    assert not dest.exists()
    for p in dest.parent.glob(f".{dest.name}*"):  # no half-written staging dir either
        raise AssertionError(f"left behind: {p}")
    assert srv.requests[-1][1:] == ("/vm", {"state": "Resumed"}), "the guest was left paused"
    assert "refusing" in str(err), str(err)
    return str(err)


def test_vmstate_symlink_to_a_host_file_is_refused(setup, canary: Path) -> None:  # noqa: F811
    srv, backend, record, lay, tmp = setup

    def plant(body):  # type: ignore[no-untyped-def]
        lay.host(body["snapshot_path"]).symlink_to(canary)
        vmm_file(lay.host(body["mem_file_path"]), b"\0" * 4096)

    srv.hooks["PUT /snapshot/create"] = plant
    msg = refused(srv, backend, record, tmp / "snap", canary)
    assert "vmstate" in msg


def test_snapshot_dir_symlinked_to_a_host_dir_is_refused(setup, canary: Path) -> None:  # noqa: F811
    srv, backend, record, lay, tmp = setup

    def plant(body):  # type: ignore[no-untyped-def]
        snap = lay.host("/snapshot")
        snap.rmdir()
        snap.symlink_to(canary.parent)  # root would move the host's "memory" file out of its directory
        (canary.parent / "vmstate").symlink_to(canary)

    srv.hooks["PUT /snapshot/create"] = plant
    refused(srv, backend, record, tmp / "snap", canary)
    assert (canary.parent / "vmstate").is_symlink()  # root removed nothing outside the jail


def test_hard_linked_memory_file_is_refused(setup, canary: Path) -> None:  # noqa: F811
    srv, backend, record, lay, tmp = setup
    own = tmp / "vmm-owned-elsewhere"  # a second name for the VMM's file outside the jail: not ours to copy
    vmm_file(own, b"\0" * 4096)

    def plant(body):  # type: ignore[no-untyped-def]
        vmm_file(lay.host(body["snapshot_path"]), b"state")
        os.link(own, lay.host(body["mem_file_path"]))

    srv.hooks["PUT /snapshot/create"] = plant
    assert "hard links" in refused(srv, backend, record, tmp / "snap", canary)


def test_drive_swapped_for_a_symlink_is_refused(setup, canary: Path) -> None:  # noqa: F811
    srv, backend, record, lay, tmp = setup
    inst = lay.host("/instance.img")
    inst.unlink()
    inst.symlink_to(canary)
    assert "instance.img" in refused(srv, backend, record, tmp / "snap", canary)


def test_drive_paths_come_from_the_record_not_the_api(setup, canary: Path) -> None:  # noqa: F811
    srv, backend, record, lay, tmp = setup
    # the VMM answers GET /vm/config with a drive that escapes the jail
    srv.vm_config["drives"][0]["path_on_host"] = "/../" * 12 + str(canary).lstrip("/")
    srv.vm_config["drives"].append({"drive_id": "extra", "path_on_host": str(canary), "is_root_device": False, "is_read_only": True})
    before = facts(canary)
    m = backend.snapshot(record, tmp / "snap")
    assert facts(canary) == before
    assert {d.drive_id: d.in_jail for d in m.drives} == {"instance": "/instance.img", "disk0": "/disk0.img"}
    for f in (tmp / "snap").rglob("*"):
        if f.is_file():
            assert SECRET not in f.read_bytes(), f"{f} holds the canary's content"
