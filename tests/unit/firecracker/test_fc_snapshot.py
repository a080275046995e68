"""Snapshot create/verify/restore-planning against the stand-in Firecracker API server.

The stand-in writes the state and memory files into the jail when PUT /snapshot/create arrives,
as Firecracker would; everything else (moving, copying drives, digests, manifest) is the real code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fc_testlib import StandInFirecrackerApi, running_record, spec_path, vmm_uid

from sealbox.errors import SandboxError
from sealbox.sandbox.model import DiskSpec
from sealbox.sandbox.vmm.firecracker import snapshot as S
from sealbox.sandbox.vmm.firecracker.schema import load_spec


def vmm_file(path: Path, data: bytes) -> None:
    """A file as the VMM user would create it (owned by the VMM uid, one link)."""
    path.write_bytes(data)
    os.chown(path, vmm_uid(), vmm_uid())


@pytest.fixture
def setup(tmp_path: Path):
    disk0 = tmp_path / "disk0.src"
    disk0.write_bytes(b"data" * 1000)
    with StandInFirecrackerApi(tmp_path / "api.sock", load_spec(str(spec_path()))) as srv:
        backend, record, lay = running_record(tmp_path, srv.sock, disks=(DiskSpec(path=disk0),),
                                              staged={"/vmlinux": "link", "/initrd.img": "link", "/instance.img": "copy", "/disk0.img": "link"})
        lay.host("/snapshot").mkdir(parents=True)
        os.chown(lay.host("/snapshot"), vmm_uid(), vmm_uid())
        vmm_file(lay.host("/instance.img"), b"SEALBOX-INSTANCE-V1\n".ljust(4096, b"\0"))
        os.link(disk0, lay.host("/disk0.img"))  # an rw disk is the same inode as the user's file
        srv.vm_config["drives"] = [
            {"drive_id": "instance", "path_on_host": "/instance.img", "is_root_device": False, "is_read_only": True},
            {"drive_id": "disk0", "path_on_host": "/disk0.img", "is_root_device": False, "is_read_only": False},
        ]

        def write_snapshot(body):
            vmm_file(lay.host(body["snapshot_path"]), b"vmstate-bytes")
            vmm_file(lay.host(body["mem_file_path"]), b"\0" * 8192)

        srv.hooks["PUT /snapshot/create"] = write_snapshot
        yield srv, backend, record, lay, tmp_path


def test_snapshot_pauses_creates_copies_and_resumes(setup) -> None:
    srv, backend, record, lay, tmp = setup
    dest = tmp / "snap1"
    m = backend.snapshot(record, dest)
    assert [(mth, p) for mth, p, _ in srv.requests] == [
        ("GET", "/"), ("PATCH", "/vm"), ("PUT", "/snapshot/create"), ("GET", "/vm/config"), ("PATCH", "/vm")]
    assert srv.requests[1][2] == {"state": "Paused"} and srv.requests[4][2] == {"state": "Resumed"}
    assert srv.violations == []
    assert sorted(p.name for p in dest.iterdir()) == ["disks", "manifest.json", "memory", "vmstate"]
    assert (dest / "disks" / "disk0.img").read_bytes() == b"data" * 1000
    assert dest.stat().st_mode & 0o777 == 0o700
    assert not lay.host("/snapshot/vmstate").exists()  # moved out of the jail
    assert m.source_resumed and m.firecracker_version == "1.16.1" and m.network == {"guest_ip": "10.213.0.6"}
    assert {d.drive_id: d.in_jail for d in m.drives} == {"instance": "/instance.img", "disk0": "/disk0.img"}
    again = S.read_manifest(dest)
    assert again == m
    files = S.restore_files(dest, again)
    assert {f.in_jail: f.force_copy for f in files} == {
        "/snapshot/vmstate": False, "/snapshot/memory": False, "/instance.img": False, "/disk0.img": True}


def test_a_paused_sandbox_stays_paused_and_leave_paused_is_honoured(setup) -> None:
    srv, backend, record, _, tmp = setup
    srv.state = "Paused"
    assert not backend.snapshot(record, tmp / "a").source_resumed
    srv.state = "Running"
    srv.requests.clear()
    backend.snapshot(record, tmp / "b", resume=False)
    assert [b for m, p, b in srv.requests if p == "/vm"] == [{"state": "Paused"}]


def test_a_failed_create_resumes_and_leaves_no_destination(setup) -> None:
    srv, backend, record, _, tmp = setup
    srv.fail_next["PUT /snapshot/create"] = (400, "Cannot create snapshot: No space left on device")
    with pytest.raises(SandboxError, match="No space left on device"):
        backend.snapshot(record, tmp / "failed")
    assert not (tmp / "failed").exists()
    assert srv.requests[-1][1:] == ("/vm", {"state": "Resumed"})


def test_refusals(setup) -> None:
    srv, backend, record, _, tmp = setup
    (tmp / "exists").mkdir()
    with pytest.raises(SandboxError, match="already exists"):
        backend.snapshot(record, tmp / "exists")
    srv.state = "Not started"
    with pytest.raises(SandboxError, match="has not started"):
        backend.snapshot(record, tmp / "new")


def test_tampering_and_bad_manifests_are_detected(setup) -> None:
    srv, backend, record, _, tmp = setup
    dest = tmp / "snap"
    backend.snapshot(record, dest)
    (dest / "memory").write_bytes(b"\1" * 8192)
    with pytest.raises(SandboxError, match="does not match its recorded sha256"):
        S.read_manifest(dest)
    S.read_manifest(dest, verify=False)
    data = json.loads((dest / "manifest.json").read_text())
    data["drives"][0]["file"] = "../../etc/passwd"
    (dest / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SandboxError, match="outside the snapshot"):
        S.read_manifest(dest, verify=False)
    data["drives"][0]["file"] = "disks/instance.img"
    data["drives"][0]["in_jail"] = "relative.img"
    (dest / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(SandboxError, match="unusable jail path"):
        S.read_manifest(dest, verify=False)
    (dest / "manifest.json").write_text("{}")
    with pytest.raises(SandboxError, match="manifest .* is invalid"):
        S.read_manifest(dest)
    with pytest.raises(SandboxError, match="not a sealbox Firecracker snapshot"):
        S.read_manifest(tmp / "nowhere")


def test_pause_resume_and_live_rate_limits(setup) -> None:
    from sealbox.sandbox.model import Limits, RateLimit

    srv, backend, record, _, _ = setup
    backend.pause(record)
    backend.resume(record)
    backend.set_rate_limits(record, Limits(disk_bytes=RateLimit(size=10_000), net_tx_bytes=RateLimit(size=5000, refill_ms=100)))
    assert srv.violations == []
    patched = [(p, b) for m, p, b in srv.requests if m == "PATCH" and p != "/vm"]
    assert patched == [
        ("/drives/disk0", {"drive_id": "disk0", "rate_limiter": {"bandwidth": {"size": 10_000, "refill_time": 1000}}}),
        ("/network-interfaces/eth0", {"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 5000, "refill_time": 100}}}),
    ]
    insp = backend.inspect(record)
    assert insp["instance"]["state"] == "Running" and insp["vm_config"]["drives"][1]["drive_id"] == "disk0"


def test_the_client_key_stays_in_a_0600_file_of_its_own(setup) -> None:
    """The private key is never copied into the manifest (not even from an older record that carried it);
    the snapshot keeps it in its own 0600 file, and a restore takes it from there."""
    from sealbox.sandbox import lifecycle

    srv, backend, record, lay, tmp = setup
    key = tmp / "sandbox" / "id_ed25519"
    key.parent.mkdir(exist_ok=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret\n-----END OPENSSH PRIVATE KEY-----\n")
    key.chmod(0o600)
    record.guest.update(client_key=str(key), client_key_openssh=key.read_text(), hostkeys=["ssh-ed25519 AAAA"])
    dest = tmp / "snap"
    m = backend.snapshot(record, dest)
    assert "PRIVATE KEY" not in (dest / "manifest.json").read_text()
    assert "client_key_openssh" not in m.guest
    kept = dest / m.client_key
    assert kept.read_text() == key.read_text() and kept.stat().st_mode & 0o777 == 0o600
    restored = tmp / "restored"
    restored.mkdir()
    got = lifecycle.restore_client_key(dest, S.read_manifest(dest), restored)
    assert got.read_text() == key.read_text() and got.stat().st_mode & 0o777 == 0o600
