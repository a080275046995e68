"""Staging a sandbox's files into its Firecracker jail, as a step with an idempotent undo.

Ownership rule (why not "chown everything"): a hard link shares the inode, so chowning a linked,
shared image file would hand every sandbox's VMM user ownership of the image (and the right to chmod
and rewrite it for every other sandbox). So a read-only input is hard-linked only when the VMM user
can already read it and cannot write it; otherwise it is copied (sparse) and the copy is owned by
the sandbox user. A writable disk must stay the same inode (a copy would silently drop the guest's
writes on `rm`), so it is hard-linked and chowned, and its original owner/mode are restored on undo.
Everything sealbox creates in the jail (root dir, config, log, metrics) belongs to the sandbox user.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from sealbox.errors import SandboxError
from sealbox.sandbox.steps import Step
from sealbox.sandbox.vmm.firecracker.jailer import JailLayout
from sealbox.util import atomic, mounts
from sealbox.util.run import run

log = logging.getLogger("sealbox.firecracker")

_REFUSED_FS = {"tmpfs": "tmpfs keeps copies in RAM and cannot hold hard links to images on disk",
               "ramfs": "ramfs keeps copies in RAM and cannot hold hard links to images on disk"}


class MountInfo(BaseModel):
    mount_point: Path
    fstype: str
    options: tuple[str, ...]  # per-mount options (nodev, noexec, ro ...)


def mount_of(path: Path, mountinfo: str | None = None) -> MountInfo:
    """The mount holding `path` (or its nearest existing ancestor), from /proc/self/mountinfo."""
    probe, tail = Path(path).absolute(), list[str]()
    while not probe.exists() and probe != probe.parent:  # resolve symlinks of the part that exists
        tail.insert(0, probe.name)
        probe = probe.parent
    probe = probe.resolve().joinpath(*tail)
    m = mounts.mount_of(probe, mounts.read(mountinfo))
    best = None if m is None else MountInfo(mount_point=m.mount_point, fstype=m.fstype, options=m.options)
    if best is None:
        raise SandboxError(f"cannot find the mount holding {path} in /proc/self/mountinfo")
    return best


def check_chroot_base(base: Path, mountinfo: str | None = None) -> MountInfo:
    """Refuse a chroot base the jail cannot work on, with the reason and the fix."""
    m = mount_of(base, mountinfo)
    fix = "set SEALBOX_JAILER_CHROOT_BASE to a directory on a disk filesystem mounted without nodev/noexec (default /srv/jailer)"
    if m.fstype in _REFUSED_FS:
        raise SandboxError(f"jailer chroot base {base} is on {m.fstype} ({m.mount_point}): {_REFUSED_FS[m.fstype]}", hint=fix)
    if "nodev" in m.options:
        raise SandboxError(f"jailer chroot base {base} is on a nodev mount ({m.mount_point}): "
                           "the jailer's /dev/kvm and /dev/net/tun nodes would not open", hint=fix)
    if "noexec" in m.options:
        raise SandboxError(f"jailer chroot base {base} is on a noexec mount ({m.mount_point}): "
                           "the jailer execs its copy of firecracker from there", hint=fix)
    if "ro" in m.options:
        raise SandboxError(f"jailer chroot base {base} is on a read-only mount ({m.mount_point})", hint=fix)
    return m


class StageFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: Path
    in_jail: str
    writable: bool = False
    force_copy: bool = False  # a private, writable copy for the VMM (restored rw disks)
    orig_uid: int | None = None  # writable files: owner/mode to restore on undo
    orig_gid: int | None = None
    orig_mode: int | None = None


def vmm_access(st: os.stat_result, uid: int, gid: int) -> tuple[bool, bool]:
    """(can read, can write) for uid/gid by the permission bits (no supplementary groups)."""
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IRUSR), bool(st.st_mode & stat.S_IWUSR)
    if st.st_gid == gid:
        return bool(st.st_mode & stat.S_IRGRP), bool(st.st_mode & stat.S_IWGRP)
    return bool(st.st_mode & stat.S_IROTH), bool(st.st_mode & stat.S_IWOTH)


def _mkdir_owned(path: Path, uid: int, gid: int, mode: int = 0o700) -> None:
    path.mkdir(mode=mode, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def stage_file(f: StageFile, root: Path, uid: int, gid: int) -> str:
    """Place one file into the jail; returns 'link' or 'copy'."""
    try:
        st = os.stat(f.source)
    except OSError as e:
        raise SandboxError(f"cannot stage {f.source} into the jail: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SandboxError(f"cannot stage {f.source} into the jail: not a regular file")
    dst = root / f.in_jail.lstrip("/")
    for parent in reversed([p for p in dst.parents if root in p.parents]):
        _mkdir_owned(parent, uid, gid)
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    same_fs = st.st_dev == os.stat(dst.parent).st_dev
    if f.force_copy:
        _copy(f.source, dst, uid, gid, 0o600)
        return "copy"
    if f.writable:
        if not same_fs:
            raise SandboxError(
                f"writable disk {f.source} is on another filesystem than the jail {root}: a copy would lose the guest's writes",
                hint="move the disk to the jail base's filesystem, or attach it read-only (FILE:ro)")
        os.link(f.source, dst)
        os.chown(dst, uid, gid)
        os.chmod(dst, 0o600)
        return "link"
    readable, writable = vmm_access(st, uid, gid)
    if same_fs and readable and not writable:
        os.link(f.source, dst)
        return "link"
    _copy(f.source, dst, uid, gid, 0o400)
    return "copy"


def _copy(src: Path, dst: Path, uid: int, gid: int, mode: int) -> None:
    run(["cp", "--sparse=always", "--reflink=auto", "--no-preserve=all", str(src), str(dst)], what=f"copy of {src}")
    os.chown(dst, uid, gid)
    os.chmod(dst, mode)


class StageDrive(BaseModel):
    """A drive of the guest, as sealbox configured it (what `snapshot` copies; never taken from the VMM)."""

    model_config = ConfigDict(frozen=True)
    drive_id: str
    in_jail: str
    read_only: bool
    is_root_device: bool = False


class FirecrackerStageStep(Step):
    """Create the jail dir and stage kernel/initrd/disks/config into `<base>/<exec>/<id>/root`."""

    kind = "firecracker-stage"
    layout: JailLayout
    owner: str  # the sandbox dir: marks the jail as ours, so undo never removes another's jail
    uid: int
    gid: int
    files: tuple[StageFile, ...]
    config: dict[str, Any] | None = None  # --config-file content (None when restoring a snapshot)
    config_in_jail: str = "/config.json"
    empty_files: tuple[str, ...] = ()  # log/metrics files, created empty and owned by the VMM user
    empty_dirs: tuple[str, ...] = ()
    drives: tuple[StageDrive, ...] = ()

    def describe(self) -> str:
        return f"stage {len(self.files)} files into the Firecracker jail {self.layout.root}"

    def do(self) -> dict[str, Any]:
        lay = self.layout
        check_chroot_base(lay.chroot_base)
        lay.chroot_base.mkdir(mode=0o755, parents=True, exist_ok=True)
        parent = lay.jail_dir.parent
        parent.mkdir(mode=0o755, exist_ok=True)
        if lay.jail_dir.exists():
            raise SandboxError(f"the Firecracker jail {lay.jail_dir} already exists (left by a crash, or another sandbox of that name)",
                               hint="run 'sealbox gc', or remove it if no firecracker runs there")
        # build under a temporary name carrying our marker, then rename: the final dir is always marked
        tmp = parent / f".{lay.jail_id}.staging-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(mode=0o755)
        atomic.write_text(tmp / lay.marker.name, self.owner + "\n", mode=0o600)
        try:
            os.rename(tmp, lay.jail_dir)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SandboxError(f"cannot create the Firecracker jail {lay.jail_dir}: {e.strerror}") from None
        root = lay.root
        _mkdir_owned(root, self.uid, self.gid)
        methods = {f.in_jail: stage_file(f, root, self.uid, self.gid) for f in self.files}
        for d in self.empty_dirs:
            _mkdir_owned(lay.host(d), self.uid, self.gid)
        if self.config is not None:
            path = lay.host(self.config_in_jail)
            atomic.write_text(path, json.dumps(self.config, indent=2, sort_keys=True) + "\n", mode=0o600)
            os.chown(path, self.uid, self.gid)
        for name in self.empty_files:
            path = lay.host(name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            os.fchown(fd, self.uid, self.gid)
            os.close(fd)
        return {"staged": methods}

    def owned(self) -> bool:
        try:
            return self.layout.marker.read_text().strip() == self.owner
        except OSError:
            return False

    def undo(self, outputs: dict[str, Any]) -> None:
        lay = self.layout
        for tmp in lay.jail_dir.parent.glob(f".{lay.jail_id}.staging-*") if lay.jail_dir.parent.is_dir() else []:
            with contextlib.suppress(OSError):
                if (tmp / lay.marker.name).read_text().strip() == self.owner:
                    shutil.rmtree(tmp)
                    continue
            with contextlib.suppress(OSError):  # a crash before the marker: empty, nobody's; rmdir refuses anything else
                tmp.rmdir()
        if not lay.jail_dir.exists():
            return
        if not self.owned():
            log.warning("not removing %s: it was not created by sandbox %s", lay.jail_dir, self.owner)
            return
        for f in self.files:
            if f.writable and f.orig_uid is not None and f.orig_gid is not None:
                with contextlib.suppress(FileNotFoundError):
                    st = os.stat(f.source)
                    if (st.st_uid, st.st_gid) == (self.uid, self.gid):
                        os.chown(f.source, f.orig_uid, f.orig_gid)
                        if f.orig_mode is not None:
                            os.chmod(f.source, f.orig_mode)
        shutil.rmtree(lay.jail_dir)


def writable_stage_file(source: Path, in_jail: str) -> StageFile:
    """A StageFile for an rw disk, remembering its current owner and mode for undo."""
    try:
        st = os.stat(source)
    except OSError as e:
        raise SandboxError(f"disk {source}: {e.strerror}", hint="check the --disk path") from None
    return StageFile(source=source, in_jail=in_jail, writable=True, orig_uid=st.st_uid, orig_gid=st.st_gid,
                     orig_mode=stat.S_IMODE(st.st_mode))
