"""Full snapshots of a running Firecracker sandbox, and what a restore needs (docs/snapshotting/*).

A snapshot directory holds Firecracker's `vmstate` and `memory`, a copy of every drive as the guest
saw it (taken while paused: Firecracker leaves disk files to the user), and `manifest.json` with
sha256 digests (Firecracker only CRC-checks the state file) and the source sandbox's network and
guest facts. A restored guest keeps the source's in-memory identity (address, hostname, SSH host
keys), so a restore must reuse the manifest's network; and restoring one snapshot more than once
duplicates that identity (upstream calls this insecure) — the manifest says so in `warning`.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.api import FirecrackerClient
from sealbox.sandbox.vmm.firecracker.staging import StageFile
from sealbox.util import atomic
from sealbox.util.digest import sha256_file
from sealbox.util.run import run

FORMAT = "sealbox-firecracker-snapshot/1"
VMSTATE, MEMORY = "vmstate", "memory"
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
    network: dict[str, Any] = {}
    guest: dict[str, Any] = {}
    spec: dict[str, Any] = {}


def _describe(path: Path, rel: str) -> dict[str, Any]:
    return {"file": rel, "sha256": sha256_file(path), "size": path.stat().st_size}


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError:  # another filesystem
        run(["cp", "--sparse=always", "--no-preserve=all", str(src), str(dst)], what=f"copy of {src}")
        src.unlink()


def create_snapshot(client: FirecrackerClient, layout: J.JailLayout, dest: Path, *, source: str, resume: bool = True,
                    network: dict[str, Any] | None = None, guest: dict[str, Any] | None = None,
                    spec: dict[str, Any] | None = None) -> SnapshotManifest:
    """Pause, snapshot into the jail, move the files plus drive copies to `dest`, then resume."""
    dest = Path(dest)
    if dest.exists():
        raise SandboxError(f"snapshot destination {dest} already exists", hint="choose another --dest")
    info = client.describe_instance()
    if info.get("state") == "Not started":
        raise SandboxError(f"sandbox {source!r} has not started its guest yet; nothing to snapshot")
    was_paused = info.get("state") == "Paused"
    jail_snap = layout.host(J.SNAPSHOT_DIR)
    if not jail_snap.is_dir():
        raise SandboxError(f"the jail has no {J.SNAPSHOT_DIR} directory ({jail_snap})", hint="was the sandbox started by this sealbox version?")
    client.pause()
    try:
        client.create_snapshot(IN_JAIL_VMSTATE, IN_JAIL_MEMORY)
        vm_config = client.vm_config()
        with atomic.staged_dir(dest) as stage:
            os.chmod(stage, 0o700)  # guest memory holds the guest's secrets
            (stage / "disks").mkdir()
            _move(layout.host(IN_JAIL_VMSTATE), stage / VMSTATE)
            _move(layout.host(IN_JAIL_MEMORY), stage / MEMORY)
            drives = []
            for d in vm_config.get("drives", []):
                in_jail = d.get("path_on_host")
                if not in_jail:
                    raise SandboxError(f"drive {d.get('drive_id')!r} has no backing file; cannot snapshot it")
                rel = f"disks/{d['drive_id']}.img"
                run(["cp", "--sparse=always", "--no-preserve=all", str(layout.host(in_jail)), str(stage / rel)],
                    what=f"copy of drive {d['drive_id']}")
                drives.append(SnapshotDrive(drive_id=d["drive_id"], in_jail=in_jail, read_only=bool(d.get("is_read_only")),
                                            is_root_device=bool(d.get("is_root_device")), **_describe(stage / rel, rel)))
            for p in [stage / VMSTATE, stage / MEMORY, *(stage / "disks").iterdir()]:
                os.chmod(p, 0o644)  # readable by the VMM user through a hard link; the dir itself is 0700
            manifest = SnapshotManifest(
                source=source, created_at=time.time(), firecracker_version=str(info.get("vmm_version", "")),
                source_resumed=resume and not was_paused, vmstate=SnapshotFile(**_describe(stage / VMSTATE, VMSTATE)),
                memory=SnapshotFile(**_describe(stage / MEMORY, MEMORY)), drives=drives, vm_config=vm_config,
                network=network or {}, guest=guest or {}, spec=spec or {})
            atomic.write_text(stage / "manifest.json", manifest.model_dump_json(indent=2) + "\n", mode=0o600)
    finally:
        for leftover in (IN_JAIL_VMSTATE, IN_JAIL_MEMORY):
            with contextlib.suppress(FileNotFoundError):
                layout.host(leftover).unlink()
        if resume and not was_paused:
            client.resume()
    return manifest


def read_manifest(snapshot_dir: Path, verify: bool = True) -> SnapshotManifest:
    """Load a snapshot's manifest; with `verify`, check every file's size and sha256."""
    path = Path(snapshot_dir) / "manifest.json"
    try:
        m = SnapshotManifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise SandboxError(f"{snapshot_dir} is not a sealbox Firecracker snapshot (no manifest.json)", hint="create one with 'sealbox snapshot NAME'") from None
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
