"""Full snapshots of a running Firecracker sandbox, and what a restore needs (docs/snapshotting/*).

A snapshot directory holds Firecracker's `vmstate` and `memory`, a copy of every drive as the guest
saw it (taken while paused: Firecracker leaves disk files to the user), and `manifest.json` with
sha256 digests (Firecracker only CRC-checks the state file) and the source sandbox's network and
guest facts. A restored guest keeps the source's in-memory identity (address, hostname, SSH host
keys), so a restore must reuse the manifest's network; and restoring one snapshot more than once
duplicates that identity (upstream calls this insecure) — the manifest says so in `warning`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker import jailfs
from sealbox.sandbox.vmm.firecracker.api import FirecrackerClient
from sealbox.sandbox.vmm.firecracker.staging import StageFile
from sealbox.util import atomic
from sealbox.util.digest import sha256_file

FORMAT = "sealbox-firecracker-snapshot/1"
VMSTATE, MEMORY, CLIENT_KEY = "vmstate", "memory", "client_key"
IN_JAIL_VMSTATE = f"{J.SNAPSHOT_DIR}/{VMSTATE}"
IN_JAIL_MEMORY = f"{J.SNAPSHOT_DIR}/{MEMORY}"
WARNING = "restoring this snapshot more than once, or resuming its source, duplicates the guest's keys and random state"


class SnapshotFile(BaseModel):
    file: str  # relative to the snapshot dir
    sha256: str
    size: int


class SnapshotDrive(SnapshotFile):
    drive_id: str
    in_jail: str
    read_only: bool
    is_root_device: bool


class SnapshotManifest(BaseModel):
    format: str = FORMAT
    source: str
    created_at: float
    firecracker_version: str
    source_resumed: bool
    warning: str = WARNING
    vmstate: SnapshotFile
    memory: SnapshotFile
    drives: list[SnapshotDrive]
    vm_config: dict[str, Any]
    client_key: str | None = None  # file in the snapshot dir holding the client's private key (0600)
    network: dict[str, Any] = {}
    guest: dict[str, Any] = {}
    spec: dict[str, Any] = {}


class JailDrive(BaseModel):
    """One drive as sealbox placed it in the jail (from the stage step's record, never from the VMM)."""

    drive_id: str
    in_jail: str
    read_only: bool
    is_root_device: bool = False
    staged: str  # "link": the same inode as `source`; "copy": a private file of the VMM user
    source: Path


def _describe(path: Path, rel: str) -> dict[str, Any]:
    return {"file": rel, "sha256": sha256_file(path), "size": path.stat().st_size}


def _copy_out(root_fd: int, rel: str, dst: Path, *, uid: int, same_as: os.stat_result | None = None) -> None:
    """Copy a file of the jail into the (root-only) snapshot being staged, refusing anything the VMM
    could have aimed at a host file: symlinks, other owners, extra hard links, non-regular files."""
    what = f"copy {rel} out of the jail"
    try:
        src = jailfs.open_file(root_fd, rel, what, uids=None if same_as else (uid,), nlink=None if same_as else 1,
                               same_as=same_as)
    except FileNotFoundError:
        raise SandboxError(f"the jail has no {rel} after the snapshot was taken", hint="see the sandbox's firecracker.log") from None
    try:
        out = jailfs.create_private(dst, 0o644)  # readable by a restoring VMM through a hard link; the dir is 0700
        try:
            jailfs.copy_fd(src, out)
        finally:
            os.close(out)
    finally:
        os.close(src)


def create_snapshot(client: FirecrackerClient, layout: J.JailLayout, dest: Path, *, source: str, uid: int,
                    drives: list[JailDrive], client_key: Path | None = None, resume: bool = True,
                    network: dict[str, Any] | None = None, guest: dict[str, Any] | None = None,
                    spec: dict[str, Any] | None = None) -> SnapshotManifest:
    """Pause, snapshot into the jail, copy the files plus the drives out to `dest`, then resume."""
    dest = Path(dest)
    if dest.exists():
        raise SandboxError(f"snapshot destination {dest} already exists", hint="choose another --dest")
    info = client.describe_instance()
    if info.get("state") == "Not started":
        raise SandboxError(f"sandbox {source!r} has not started its guest yet; nothing to snapshot")
    was_paused = info.get("state") == "Paused"
    with jailfs.open_root(layout.root) as root_fd:
        try:
            snap_fd = jailfs.open_dir(root_fd, J.SNAPSHOT_DIR, f"use the jail's {J.SNAPSHOT_DIR} directory")
        except FileNotFoundError:
            raise SandboxError(f"the jail has no {J.SNAPSHOT_DIR} directory ({layout.host(J.SNAPSHOT_DIR)})",
                               hint="was the sandbox started by this sealbox version?") from None
        try:
            for name in (VMSTATE, MEMORY):  # leftovers of an earlier snapshot or restore
                jailfs.unlink_any(snap_fd, name)
            client.pause()
            try:
                client.create_snapshot(IN_JAIL_VMSTATE, IN_JAIL_MEMORY)
                vm_config = client.vm_config()  # kept as the VMM's own account; no path in it is used
                manifest = _collect(root_fd, dest, uid=uid, drives=drives, client_key=client_key, info=info,
                                    source=source, source_resumed=resume and not was_paused, vm_config=vm_config,
                                    network=network, guest=guest, spec=spec)
            finally:
                for name in (VMSTATE, MEMORY):
                    jailfs.unlink_any(snap_fd, name)
                if resume and not was_paused:
                    client.resume()
        finally:
            os.close(snap_fd)
    return manifest


def _collect(root_fd: int, dest: Path, *, uid: int, drives: list[JailDrive], client_key: Path | None,
             info: dict[str, Any], source: str, source_resumed: bool, vm_config: Any, network: dict[str, Any] | None,
             guest: dict[str, Any] | None, spec: dict[str, Any] | None) -> SnapshotManifest:
    with atomic.staged_dir(dest) as stage:
        os.chmod(stage, 0o700)  # guest memory holds the guest's secrets
        (stage / "disks").mkdir()
        _copy_out(root_fd, IN_JAIL_VMSTATE, stage / VMSTATE, uid=uid)
        _copy_out(root_fd, IN_JAIL_MEMORY, stage / MEMORY, uid=uid)
        out = []
        for d in drives:
            rel = f"disks/{d.drive_id}.img"
            same = None
            if d.staged == "link":
                try:
                    same = os.stat(d.source)  # the user's file, outside the jail: the inode the jail must hold
                except OSError as e:
                    raise SandboxError(f"drive {d.drive_id}: its source {d.source} is gone: {e.strerror}") from None
            _copy_out(root_fd, d.in_jail, stage / rel, uid=uid, same_as=same)
            out.append(SnapshotDrive(drive_id=d.drive_id, in_jail=d.in_jail, read_only=d.read_only,
                                     is_root_device=d.is_root_device, **_describe(stage / rel, rel)))
        key = None
        if client_key is not None:  # the key the guest's memory trusts, in a 0600 file of its own
            atomic.write_bytes(stage / CLIENT_KEY, client_key.read_bytes(), mode=0o600)
            key = CLIENT_KEY
        manifest = SnapshotManifest(
            source=source, created_at=time.time(), firecracker_version=str(info.get("vmm_version", "")),
            source_resumed=source_resumed, vmstate=SnapshotFile(**_describe(stage / VMSTATE, VMSTATE)),
            memory=SnapshotFile(**_describe(stage / MEMORY, MEMORY)), drives=out,
            vm_config=vm_config if isinstance(vm_config, dict) else {}, client_key=key,
            network=network or {}, guest=public_guest(guest or {}), spec=spec or {})
        atomic.write_text(stage / "manifest.json", manifest.model_dump_json(indent=2) + "\n", mode=0o600)
    return manifest


SECRET_GUEST_KEYS = ("client_key_openssh",)  # written into records by older versions; never copied on


def public_guest(guest: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in guest.items() if k not in SECRET_GUEST_KEYS}


def read_manifest(snapshot_dir: Path, verify: bool = True) -> SnapshotManifest:
    """Load a snapshot's manifest; with `verify`, check every file's size and sha256."""
    path = Path(snapshot_dir) / "manifest.json"
    try:
        m = SnapshotManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise SandboxError(f"{snapshot_dir} is not a sealbox Firecracker snapshot (no manifest.json)",
                           hint="create one with 'sealbox snapshot NAME'") from None
    except (ValidationError, ValueError) as e:
        raise SandboxError(f"snapshot manifest {path} is invalid: {str(e).splitlines()[0]}") from None
    if m.format != FORMAT:
        raise SandboxError(f"snapshot {snapshot_dir} has format {m.format!r}; this sealbox reads {FORMAT!r}")
    for f in [m.vmstate, m.memory, *m.drives]:
        p = Path(snapshot_dir) / f.file
        if ".." in Path(f.file).parts or Path(f.file).is_absolute():
            raise SandboxError(f"snapshot manifest {path} names a file outside the snapshot: {f.file!r}")
        if not p.is_file():
            raise SandboxError(f"snapshot {snapshot_dir} is missing {f.file}")
        if verify and (p.stat().st_size != f.size or sha256_file(p) != f.sha256):
            raise SandboxError(f"snapshot file {p} does not match its recorded sha256", hint="the snapshot was modified or damaged")
    if m.client_key is not None and (m.client_key != CLIENT_KEY or not (Path(snapshot_dir) / CLIENT_KEY).is_file()):
        raise SandboxError(f"snapshot manifest {path}: client key file {m.client_key!r} is missing or misnamed")
    for d in m.drives:
        if not d.in_jail.startswith("/") or ".." in Path(d.in_jail).parts or d.in_jail.startswith(J.SNAPSHOT_DIR + "/"):
            raise SandboxError(f"snapshot manifest {path}: drive {d.drive_id!r} has an unusable jail path {d.in_jail!r}")
    return m


def restore_files(snapshot_dir: Path, manifest: SnapshotManifest) -> list[StageFile]:
    """What to stage for a restore: drives at their original jail paths, state and memory in /snapshot.

    Writable drives become private copies (force_copy) so the snapshot stays restorable."""
    d = Path(snapshot_dir)
    files = [StageFile(source=d / manifest.vmstate.file, in_jail=IN_JAIL_VMSTATE),
             StageFile(source=d / manifest.memory.file, in_jail=IN_JAIL_MEMORY)]
    for drive in manifest.drives:
        files.append(StageFile(source=d / drive.file, in_jail=drive.in_jail, force_copy=not drive.read_only))
    return files
