"""Real staging on this machine (root): link vs copy, ownership, rw-disk owner restore, sparse copies,
refusal of tmpfs/nodev/noexec chroot bases and cross-filesystem rw disks, and marker-guarded undo."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker.jailer import JailLayout
from sealbox.sandbox.vmm.firecracker.staging import FirecrackerStageStep, StageFile, check_chroot_base, writable_stage_file

pytestmark = pytest.mark.integration
UID = GID = 64124


@contextlib.contextmanager
def mounted(target: Path, *args: str):
    target.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", *args, str(target)], check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def step(tmp: Path, files: tuple[StageFile, ...], owner: str = "sandbox-A", base: Path | None = None) -> FirecrackerStageStep:
    return FirecrackerStageStep(layout=JailLayout(chroot_base=base or tmp / "jails", exec_name="firecracker", jail_id="st-1"),
                                owner=owner, uid=UID, gid=GID, files=files, config={"drives": [], "boot-source": {}},
                                empty_files=("/firecracker.log",), empty_dirs=("/snapshot",))


def test_link_copy_ownership_and_undo(tmp_path: Path) -> None:
    shared = tmp_path / "shared.img"
    shared.write_bytes(b"k" * 8192)
    os.chmod(shared, 0o644)
    private = tmp_path / "private.img"
    private.write_bytes(b"p" * 100)
    os.chmod(private, 0o600)
    groupw = tmp_path / "groupw.img"
    groupw.write_bytes(b"g")
    os.chown(groupw, 0, GID)
    os.chmod(groupw, 0o664)  # the VMM could write it: never link
    sparse = tmp_path / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(256 << 20)
        f.write(b"head")
    os.chmod(sparse, 0o600)
    rw = tmp_path / "rw.img"
    rw.write_bytes(b"rw")
    os.chown(rw, 1234, 5678)
    os.chmod(rw, 0o640)
    s = step(tmp_path, (StageFile(source=shared, in_jail="/vmlinux"), StageFile(source=private, in_jail="/instance.img"),
                        StageFile(source=groupw, in_jail="/g.img"), StageFile(source=sparse, in_jail="/rootfs.ext4"),
                        writable_stage_file(rw, "/disk0.img")))
    out = s.do()
    root = s.layout.root
    assert out["staged"] == {"/vmlinux": "link", "/instance.img": "copy", "/g.img": "copy", "/rootfs.ext4": "copy", "/disk0.img": "link"}
    assert os.stat(root / "vmlinux").st_ino == os.stat(shared).st_ino and os.stat(shared).st_uid == 0
    for name, mode in (("instance.img", 0o400), ("g.img", 0o400), ("rootfs.ext4", 0o400)):
        st = os.stat(root / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (UID, GID, mode), name
    assert (root / "instance.img").read_bytes() == b"p" * 100
    sp = os.stat(root / "rootfs.ext4")
    assert sp.st_size == 256 << 20 and sp.st_blocks * 512 < 1 << 20  # holes kept
    d = os.stat(root / "disk0.img")
    assert d.st_ino == os.stat(rw).st_ino and (d.st_uid, d.st_gid, stat.S_IMODE(d.st_mode)) == (UID, GID, 0o600)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700 and os.stat(root).st_uid == UID
    assert os.stat(root / "snapshot").st_uid == UID and os.stat(root / "firecracker.log").st_uid == UID
    assert os.stat(root / "config.json").st_uid == UID and stat.S_IMODE(os.stat(root / "config.json").st_mode) == 0o600
    assert s.layout.marker.read_text().strip() == "sandbox-A"
    # a second sandbox with the same id is refused, and its undo does not touch the first one's jail
    other = step(tmp_path, (), owner="sandbox-B")
    with pytest.raises(SandboxError, match="already exists"):
        other.do()
    other.undo({})
    assert root.is_dir()
    s.undo(out)
    assert not s.layout.jail_dir.exists()
    st = os.stat(rw)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640) and rw.read_bytes() == b"rw"
    assert shared.read_bytes() == b"k" * 8192
    s.undo({})  # idempotent


def test_missing_source_fails_and_undo_cleans_up(tmp_path: Path) -> None:
    s = step(tmp_path, (StageFile(source=tmp_path / "absent", in_jail="/vmlinux"),))
    with pytest.raises(SandboxError, match="cannot stage .*absent"):
        s.do()
    s.undo({})
    assert not s.layout.jail_dir.exists() and not list((tmp_path / "jails" / "firecracker").iterdir())


def test_a_crash_before_the_staging_marker_leaves_nothing_after_undo(tmp_path: Path) -> None:
    """Killed between creating the temporary jail dir and writing its marker: the dir is empty, holds nothing of
    anyone, and undo (run by rm/gc) removes it; another's marked staging dir and a non-empty unmarked one stay."""
    s = step(tmp_path, ())
    parent = s.layout.jail_dir.parent
    parent.mkdir(parents=True)
    crashed = parent / f".{s.layout.jail_id}.staging-4242"
    crashed.mkdir()
    other = parent / f".{s.layout.jail_id}.staging-4343"
    other.mkdir()
    (other / s.layout.marker.name).write_text("sandbox-B\n")
    s.undo({})
    assert not crashed.exists() and other.is_dir()


def test_rw_disk_on_another_filesystem_is_refused(tmp_path: Path) -> None:
    with mounted(tmp_path / "other", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as other:
        disk = other / "d.img"
        disk.write_bytes(b"x")
        s = step(tmp_path, (writable_stage_file(disk, "/disk0.img"),))
        with pytest.raises(SandboxError, match="another filesystem .* would lose the guest's writes"):
            s.do()
        s.undo({})
        assert os.stat(disk).st_uid == 0


@pytest.mark.parametrize("opts,needle", [(("-t", "tmpfs", "-o", "size=4m", "tmpfs"), "is on tmpfs"),
                                          (("-t", "ext4", "-o", "loop,nodev"), "nodev"),
                                          (("-t", "ext4", "-o", "loop,noexec"), "noexec")])
def test_bad_chroot_bases_are_refused_before_anything_is_created(tmp_path: Path, opts, needle: str) -> None:
    if "loop" in opts[-1]:
        img = tmp_path / "fs.img"
        subprocess.run(["truncate", "-s", "16M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
        opts = (*opts, str(img))
    with mounted(tmp_path / "mnt", *opts) as mnt:
        base = mnt / "jails"
        with pytest.raises(SandboxError, match=needle):
            check_chroot_base(base)
        s = step(tmp_path, (), base=base)
        with pytest.raises(SandboxError, match=needle):
            s.do()
        assert not base.exists()
    assert check_chroot_base(tmp_path / "jails").fstype == "ext4"
