"""QEMU snapshot files (sandbox/snapshot.py): what a restore refuses, in one line and before anything is created; the
shape a restore takes from the snapshot; ownership for `rm --snapshots`; unfinished snapshots for gc."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.sandbox import planning
from sealbox.sandbox import snapshot as snap
from sealbox.sandbox.state import StateDir

VERSION = "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"


def write_snapshot(d: Path, image: Path, state: StateDir | None = None, source: str = "src", **machine: object) -> Path:
    d.mkdir(mode=0o700, parents=True)
    (d / snap.STATE_FILE).write_bytes(b"QEVM" + bytes(1020))
    os.chmod(d / snap.STATE_FILE, 0o600)
    shape = {"accel": "tcg", "cpus": 2, "memory_mib": 512, "rootfs": "initrd", "guest_mac": "02:01:02:03:04:05",
             "instance_disk_size": 4096, **machine}
    m = snap.SnapshotManifest(
        source=source, owner=state.mark(source) if state else f"sealbox/0/{source}", created_at=time.time(),
        image=snap.ImageRef(name="demo", dir=str(image), digest=snap.image_digest(image)),
        vmm={"backend": "qemu", "version": VERSION}, machine=snap.Machine.model_validate(shape),
        state=snap.StateFile(size=1024, sha256="0" * 64), source_hostkeys=[], save_s=0.3)
    (d / snap.MANIFEST).write_text(m.model_dump_json())
    os.chmod(d / snap.MANIFEST, 0o600)
    return d


def shape(**kw: object) -> snap.Machine:
    base = {"accel": "tcg", "cpus": 2, "memory_mib": 512, "rootfs": "initrd", "guest_mac": "x", "instance_disk_size": 1}
    return snap.Machine.model_validate({**base, **kw})


def test_a_snapshot_is_refused_for_another_image_qemu_or_shape(tmp_path: Path, image_dir: Path, make_image) -> None:  # type: ignore[no-untyped-def]
    s = write_snapshot(tmp_path / "s", image_dir)
    m = snap.load(s)
    snap.check(m, s, image_dir=image_dir, shape=shape(), vmm_version=VERSION)  # the same: accepted
    other = make_image("other", cmdline=["console=ttyS0"])
    cases = [
        ({"image_dir": other}, r"was taken from image 'demo' \(sha256:.*\), not from .*other"),
        ({"vmm_version": "8.2.2 (Debian)"}, r"was saved by QEMU 7\.2\.22 .*; this host has QEMU 8\.2\.2"),
        ({"shape": shape(memory_mib=1024)}, r"is a microvm/tcg, 2 vCPUs, 512 MiB, root on initrd, 0 extra disks machine; "
                                            r"this restore asks for microvm/tcg, 2 vCPUs, 1024 MiB"),
        ({"shape": shape(cpus=1)}, "1 vCPUs"),
        ({"shape": shape(accel="kvm")}, "microvm/kvm"),
        ({"shape": shape(rootfs="disk")}, "root on disk"),
        ({"shape": shape(disks=1)}, "1 extra disks"),
    ]
    for kw, msg in cases:
        args = {"image_dir": image_dir, "shape": shape(), "vmm_version": VERSION, **kw}
        with pytest.raises(UsageError, match=msg) as e:
            snap.check(m, s, **args)  # type: ignore[arg-type]
        assert "\n" not in str(e.value)


def test_only_a_private_complete_snapshot_loads(tmp_path: Path, image_dir: Path) -> None:
    s = write_snapshot(tmp_path / "s", image_dir)
    os.chmod(s / snap.STATE_FILE, 0o644)
    with pytest.raises(UsageError, match=r"state file .* mode 644.*chmod go="):
        snap.load(s)
    os.chmod(s / snap.STATE_FILE, 0o600)
    os.chmod(s, 0o755)
    with pytest.raises(UsageError, match="snapshot directory .* mode 755"):
        snap.load(s)
    os.chmod(s, 0o700)
    with open(s / snap.STATE_FILE, "ab") as f:
        f.write(b"x")
    with pytest.raises(UsageError, match="has 1025 bytes, its manifest says 1024"):
        snap.load(s)
    with pytest.raises(UsageError, match="not a sealbox snapshot"):
        snap.backend_of(tmp_path)
    (s / snap.STATE_FILE).unlink()
    os.symlink("/etc/passwd", s / snap.STATE_FILE)  # never followed
    with pytest.raises(UsageError, match="is not a regular file"):
        snap.load(s)


def test_verify_compares_the_state_files_sha256(tmp_path: Path, image_dir: Path) -> None:
    s = write_snapshot(tmp_path / "s", image_dir)
    with pytest.raises(UsageError, match="does not match the sha256"):
        snap.verify(s)


def test_a_restore_takes_the_snapshots_shape_and_refuses_another(tmp_path: Path, image_dir: Path) -> None:
    s = write_snapshot(tmp_path / "s", image_dir, cpus=1, memory_mib=384)
    spec = planning.make_spec(name="r1", image_dir=image_dir, from_snapshot=s)
    assert (spec.cpus, spec.memory_mib, spec.rootfs, spec.accel) == (1, 384, "initrd", "tcg")
    spec = planning.make_spec(name="r1", image_dir=image_dir, from_snapshot=s, memory_mib=1024, cpus=2)
    assert (spec.cpus, spec.memory_mib) == (2, 1024)  # refused by check() against the snapshot's own values
    with pytest.raises(UsageError, match="asks for microvm/tcg, 2 vCPUs, 1024 MiB"):
        snap.check(snap.load(s), s, image_dir=image_dir, vmm_version=VERSION,
                   shape=snap.shape_of(spec, "tcg", guest_mac="x", instance_disk_size=1))
    assert planning.vmm_without_probe(spec) == "qemu"


def test_rm_removes_the_snapshots_of_its_sandbox_only_when_asked(tmp_path: Path, image_dir: Path, state: StateDir) -> None:
    from sealbox.sandbox import control

    base = state.root / snap.SNAPSHOTS
    mine = [write_snapshot(base / f"a-{i}", image_dir, state, "a") for i in range(2)]
    theirs = write_snapshot(base / "b-1", image_dir, state, "b")
    foreign = write_snapshot(base / "a-other", image_dir, StateDir(tmp_path / "other"), "a")  # another state dir's "a"
    assert snap.owned(state, "a") == sorted(mine)
    assert control.remove_snapshots(state, "a") == sorted(mine)  # the sandbox itself may be gone
    assert not any(p.exists() for p in mine) and theirs.exists() and foreign.exists()


def test_gc_finds_unfinished_snapshots_but_not_one_being_written(tmp_path: Path, state: StateDir) -> None:
    base = state.root / snap.SNAPSHOTS
    crashed = base / ".x.staging.abc"
    busy = base / ".y.staging.def"
    for d in (crashed, busy):
        d.mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert snap.stale_staging(state) == [crashed]
    finally:
        os.close(fd)


def test_the_qemu_version_is_the_binarys_and_cached_while_it_stays(tmp_path: Path) -> None:
    from sealbox.sandbox.vmm.qemu import qemu_version

    calls = tmp_path / "calls"
    fake = tmp_path / "qemu"
    fake.write_text(f"#!/bin/sh\necho x >> {calls}\necho 'QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)'\n")
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    assert qemu_version(str(fake), cache_dir=cache) == "7.2.22 (Debian 1:7.2+dfsg-7)"
    assert qemu_version(str(fake), cache_dir=cache) == "7.2.22 (Debian 1:7.2+dfsg-7)"
    assert calls.read_text().count("x") == 1
    fake.write_text(fake.read_text().replace("7.2.22", "8.2.2"))  # an upgrade: another size and mtime
    assert qemu_version(str(fake), cache_dir=cache).startswith("8.2.2")
    fake.write_text("#!/bin/sh\necho 'something else'\n")
    with pytest.raises(Exception, match="not a QEMU version"):
        qemu_version(str(fake))


def _qemu_record(state: StateDir, image: Path, name: str, *, agent: bool = True, status: str = "running", **spec: object) -> None:
    from sealbox.sandbox.state import SandboxRecord, process_start_time
    from sealbox.sandbox.steps import StepEntry

    me = os.getpid()
    steps = [StepEntry(kind="qemu-rundir", state="done", params={"agent_socket": "/nonexistent/agent.sock"} if agent else {}),
             StepEntry(kind="qemu-start", state="done", params={"qmp_socket": "/nonexistent/qmp.sock"})]
    rec = SandboxRecord(name=name, created_at=time.time(), status=status, spec={"name": name, "image_dir": str(image), **spec},
                        vmm={"backend": "qemu", "accel": "tcg", "pid": me, "start_time": process_start_time(me)},
                        network={"guest_mac": "02:00:00:00:00:01"})
    rec.steps.entries = steps
    state.reserve(rec)
    (state.sandbox_dir(name) / "instance.img").write_bytes(bytes(4096))


def test_what_cannot_be_restored_is_not_snapshotted(tmp_path: Path, image_dir: Path, state: StateDir) -> None:
    """Refused before QEMU is asked for anything (the QMP sockets here do not exist)."""
    from sealbox.errors import SealboxError

    cases = [
        ({"firmware": "ovmf"}, "runs under firmware"),
        ({"tdx": True}, "runs under firmware"),
        ({"disks": [{"path": str(tmp_path / "d.img")}]}, "has --disk files"),
        ({"agent": False}, "without the restore agent's port"),
        ({"status": "stopped"}, "is stopped; only a running sandbox"),
        ({}, "restore agent does not answer"),  # its guest's agent (here: no socket at all) never says hello
    ]
    for i, (kw, msg) in enumerate(cases):
        name = f"q{i}"
        _qemu_record(state, image_dir, name, **kw)  # type: ignore[arg-type]
        with pytest.raises(SealboxError, match=msg):
            snap.take(state, name, tmp_path / f"s{i}")
        assert not (tmp_path / f"s{i}").exists() and not list((tmp_path).glob(f".s{i}.staging*"))
