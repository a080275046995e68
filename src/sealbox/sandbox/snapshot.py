"""Snapshots of running sandboxes, and new sandboxes restored from them: the entry points the CLI and the SDK call.

    take(state, name, dest=None, resume=True)         -> Snapshot     (`sealbox snapshot NAME`)
    restore(state, snapshot, name, **run_flags)       -> run summary  (`sealbox run IMAGE --from-snapshot DIR`)
    load(path) / check(manifest, ...)                 -> the manifest, and why a restore would be refused
    owned(state, name) / remove(path)                 -> a sandbox's snapshots (`sealbox rm --snapshots`)

A QEMU snapshot is a directory (root, 0700) with two files (0600): `vmstate`, the guest's memory and device state as
QEMU's migration stream (a ready 512 MiB guest: ~160 MB) — the guest's secrets included: its keys, anything its
programs held — and `manifest.json`: the image it runs (sha256 of its manifest.json), the QEMU version, the machine's
shape (mode, accelerator, vCPUs, memory, root, devices, the guest's MAC, the instance disk's size), the source's host
keys and the state file's size and sha256. It is written into a staging directory and renamed into place, so it is
complete or absent. A restore is refused, in one line, for another image, QEMU version or shape; every restored guest
renews its secrets through the restore agent before it is handed out (sandbox/restore.py). Firecracker snapshots keep
their own format (vmm/firecracker/snapshot.py); `take` dispatches by backend.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.state import SandboxRecord, StateDir
from sealbox.util import atomic
from sealbox.util.digest import sha256_file
from sealbox.util.unixpath import short_path

FORMAT = "sealbox-qemu-snapshot/1"
STATE_FILE = "vmstate"
MANIFEST = "manifest.json"
SNAPSHOTS = "snapshots"  # <state>/snapshots/<name>-<UTC time>: where `take` writes by default
CONTAINS = ("the guest's whole memory and device state: every key, password and file content the guest held in RAM "
            "when it was taken (treat it like the guest's disk and keys)")


class Machine(BaseModel):
    """What the restoring QEMU must reproduce: the devices and their order are fixed by these."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    mode: Literal["microvm"] = "microvm"
    accel: Literal["kvm", "tcg"]
    cpus: int
    memory_mib: int
    rootfs: Literal["initrd", "disk"]
    disks: int = 0
    guest_mac: str
    instance_disk_size: int

    def describe(self) -> str:
        return (f"{self.mode}/{self.accel}, {self.cpus} vCPUs, {self.memory_mib} MiB, root on {self.rootfs}, "
                f"{self.disks} extra disks")


class StateFile(BaseModel):
    file: str = STATE_FILE
    size: int
    sha256: str


class ImageRef(BaseModel):
    name: str
    dir: str  # where it was when the snapshot was taken (the restore's default)
    digest: str  # sha256 of its manifest.json, which names every artifact's digest


class SnapshotManifest(BaseModel):
    format: str = FORMAT
    source: str  # the sandbox it was taken from
    owner: str  # that sandbox's ownership mark (state dir + name): `rm --snapshots` of its owner removes it
    created_at: float
    contains: str = CONTAINS
    image: ImageRef
    vmm: dict[str, str]  # backend, version
    machine: Machine
    state: StateFile
    source_hostkeys: list[str]  # a restored guest that reports one of these did not renew its keys
    save_s: float


class Snapshot(BaseModel):
    path: Path
    backend: str
    size: int
    save_s: float | None = None
    warning: str | None = None


def image_digest(image_dir: Path) -> str:
    return "sha256:" + sha256_file(Path(image_dir) / "manifest.json")


# ---- reading and checking -----------------------------------------------------------------------

def backend_of(path: Path) -> Literal["qemu", "firecracker"]:
    """Which VMM a snapshot directory is for (its manifest's format); one-line UsageError if it is none."""
    try:
        fmt = json.loads((Path(path) / MANIFEST).read_bytes()).get("format")
    except FileNotFoundError:
        raise UsageError(f"{path} is not a sealbox snapshot (no {MANIFEST})", hint="take one with 'sealbox snapshot NAME'") from None
    except (OSError, ValueError, AttributeError) as e:
        raise UsageError(f"snapshot manifest {Path(path) / MANIFEST} is unreadable: {e}") from None
    if fmt == FORMAT:
        return "qemu"
    from sealbox.sandbox.vmm.firecracker.snapshot import FORMAT as FC_FORMAT

    if fmt == FC_FORMAT:
        return "firecracker"
    raise UsageError(f"snapshot {path} has format {fmt!r}; this sealbox reads {FORMAT!r} and {FC_FORMAT!r}")


def _check_private(path: Path, what: str, kind: int) -> os.stat_result:
    """A snapshot holds guest memory: only root may have written (or be able to read) it."""
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != kind:
        raise UsageError(f"snapshot {what} {path} is not a {'directory' if kind == 0o040000 else 'regular file'}")
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise UsageError(f"snapshot {what} {path} is owned by uid {st.st_uid} with mode {st.st_mode & 0o777:o}",
                         hint=f"a snapshot must belong to uid {os.geteuid()} and be private (chmod go= {path})")
    return st


def load(path: Path) -> SnapshotManifest:
    path = Path(path)
    _check_private(path, "directory", 0o040000)
    mpath = path / MANIFEST
    _check_private(mpath, "manifest", 0o100000)
    try:
        m = SnapshotManifest.model_validate_json(mpath.read_bytes())
    except (ValidationError, ValueError) as e:
        raise UsageError(f"snapshot manifest {mpath} is invalid: {str(e).splitlines()[0]}") from None
    if m.format != FORMAT:
        raise UsageError(f"snapshot {path} has format {m.format!r}; this sealbox restores {FORMAT!r}")
    if m.state.file != STATE_FILE:
        raise UsageError(f"snapshot manifest {mpath} names an unexpected state file {m.state.file!r}")
    st = _check_private(path / STATE_FILE, "state file", 0o100000)
    if st.st_size != m.state.size:
        raise UsageError(f"snapshot state file {path / STATE_FILE} has {st.st_size} bytes, its manifest says {m.state.size}",
                         hint="the snapshot is damaged; take a new one")
    return m


def verify(path: Path) -> SnapshotManifest:
    """`load`, and the state file's sha256 against the manifest's. A restore checks only owner, modes and size: the
    snapshot is root's and private, and hashing ~160 MB would cost more than the restore itself; pools and operators
    call this when a snapshot was stored or copied somewhere else."""
    m = load(path)
    if sha256_file(Path(path) / STATE_FILE) != m.state.sha256:
        raise UsageError(f"snapshot state file {Path(path) / STATE_FILE} does not match the sha256 in its manifest",
                         hint="the snapshot was modified or damaged; take a new one")
    return m


def check(m: SnapshotManifest, path: Path, *, image_dir: Path, shape: Machine, vmm_version: str) -> None:
    """Refuse, in one line, a restore into another image, QEMU version or machine shape."""
    digest = image_digest(image_dir)
    if digest != m.image.digest:
        raise UsageError(f"snapshot {path} was taken from image {m.image.name!r} ({m.image.digest[:19]}...), "
                         f"not from {image_dir} ({digest[:19]}...)", hint=f"restore it with the image it was taken from ({m.image.dir})")
    if vmm_version != m.vmm.get("version"):
        raise UsageError(f"snapshot {path} was saved by QEMU {m.vmm.get('version')}; this host has QEMU {vmm_version}",
                         hint="take a new snapshot with this QEMU")
    ours = shape.model_copy(update={"guest_mac": m.machine.guest_mac, "instance_disk_size": m.machine.instance_disk_size})
    if ours != m.machine:
        raise UsageError(f"snapshot {path} is a {m.machine.describe()} machine; this restore asks for {ours.describe()}",
                         hint="drop --cpus/--memory/--rootfs/--disk/--accel, or pass the snapshot's values")


def shape_of(spec: Any, accel: Literal["kvm", "tcg"], *, guest_mac: str, instance_disk_size: int) -> Machine:
    return Machine(accel=accel, cpus=spec.cpus, memory_mib=spec.memory_mib, rootfs=spec.rootfs, disks=len(spec.disks),
                   guest_mac=guest_mac, instance_disk_size=instance_disk_size)


# ---- taking ------------------------------------------------------------------------------------

def default_dest(state: StateDir, name: str) -> Path:
    return state.root / SNAPSHOTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"


def take(state: StateDir, name: str, dest: Path | None = None, *, resume: bool = True, timeout: float = 300.0) -> Snapshot:
    """Snapshot the running sandbox `name` into `dest` (a new directory). The sandbox runs on unless `resume` is False."""
    target = Path(dest) if dest is not None else default_dest(state, name)
    if target.exists():
        raise UsageError(f"snapshot destination {target} already exists", hint="choose another --dest")
    with state.lock(name):
        record = state.load(name)
        if record.vmm.get("backend") != "qemu":  # Firecracker's verb says itself when a sandbox is not its own
            from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend

            fm = FirecrackerBackend().snapshot(record, target, resume=resume)
            size = sum(f.size for f in [fm.vmstate, fm.memory, *fm.drives])
            return Snapshot(path=target, backend="firecracker", size=size, warning=fm.warning)
        return _take_qemu(state, record, target, resume=resume, timeout=timeout)


def _qemu_source(state: StateDir, record: SandboxRecord) -> tuple[str, str, Machine, Any]:
    """The running QEMU sandbox's QMP and agent sockets and machine shape; refuses what cannot be restored."""
    from sealbox.sandbox import status as st
    from sealbox.sandbox.model import SandboxSpec

    if (status := st.derive(record)) != "running":
        raise SandboxError(f"sandbox {record.name!r} is {status}; only a running sandbox can be snapshotted")
    spec = SandboxSpec.model_validate(record.spec)
    if spec.tdx or spec.firmware != "direct" or spec.boot != "kernel":
        raise UsageError(f"sandbox {record.name!r} runs under firmware (q35/OVMF/TDX); QEMU snapshots are of microvm sandboxes",
                         hint="start it without --firmware/--tdx/--boot disk-image")
    if spec.disks:
        raise UsageError(f"sandbox {record.name!r} has --disk files; a snapshot would need their contents at the same instant",
                         hint="snapshot a sandbox without --disk")
    rundir = next((e.params for e in record.steps.entries if e.kind == "qemu-rundir"), {})
    start = next((e.params for e in record.steps.entries if e.kind == "qemu-start"), None)
    if not rundir.get("agent_socket") or start is None:
        raise UsageError(f"sandbox {record.name!r} was started without the restore agent's port",
                         hint="start it again with this sealbox version, then snapshot it")
    size = (state.sandbox_dir(record.name) / "instance.img").stat().st_size
    shape = shape_of(spec, record.vmm.get("accel", "tcg"), guest_mac=str(record.network.get("guest_mac")), instance_disk_size=size)
    return str(start["qmp_socket"]), str(rundir["agent_socket"]), shape, spec


def _agent_answers(path: str, timeout: float = 15.0) -> None:
    """A snapshot whose guest has no restore agent waiting could never be restored: ask for its hello line first
    (then hang up: the agent waits for the next host, which is what the snapshot will hold)."""
    from sealbox.guest.protocol import AGENT_HELLO

    deadline = time.monotonic() + timeout
    data = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        try:
            with short_path(path) as name:  # a deep state dir's run dir is beyond sun_path
                sock.connect(name)
            while AGENT_HELLO.encode() not in data and len(data) < 65536 and time.monotonic() < deadline:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
    if AGENT_HELLO.encode() not in data:
        raise SandboxError("the guest's restore agent does not answer on its port, so no restore of this snapshot could "
                           "renew its secrets", hint="wait until the sandbox is ready; see 'sealbox logs' (sealbox-agent.service)")


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A private staging directory renamed to `target` on success; locked while in use (gc removes unlocked ones)."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with atomic.staged_dir(target) as stage:
        os.chmod(stage, 0o700)
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield stage
        finally:
            os.close(fd)


def _take_qemu(state: StateDir, record: SandboxRecord, target: Path, *, resume: bool, timeout: float) -> Snapshot:
    from sealbox.sandbox.vmm.qemu import qemu_version
    from sealbox.sandbox.vmm.qemu_snapshot import save

    qmp, agent_socket, shape, spec = _qemu_source(state, record)
    _agent_answers(agent_socket)
    version = qemu_version(cache_dir=state.root / "cache")
    image_dir = Path(record.image.get("dir", spec.image_dir))
    digest = image_digest(image_dir)
    with _staging(target) as stage:
        t0 = time.monotonic()
        fd = os.open(stage / STATE_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            save(qmp, fd, resume=resume, timeout=timeout)
            os.fsync(fd)
        finally:
            os.close(fd)
        save_s = time.monotonic() - t0
        st = _check_private(stage / STATE_FILE, "state file", 0o100000)
        manifest = SnapshotManifest(
            source=record.name, owner=state.mark(record.name), created_at=time.time(),
            image=ImageRef(name=str(record.image.get("name", "")), dir=str(image_dir), digest=digest),
            vmm={"backend": "qemu", "version": version}, machine=shape,
            state=StateFile(size=st.st_size, sha256=sha256_file(stage / STATE_FILE)),
            source_hostkeys=list(record.guest.get("hostkeys", [])), save_s=round(save_s, 3))
        atomic.write_text(stage / MANIFEST, manifest.model_dump_json(indent=2) + "\n", mode=0o600)
    return Snapshot(path=target, backend="qemu", size=manifest.state.size, save_s=manifest.save_s)


# ---- restoring ---------------------------------------------------------------------------------

def restore(state: StateDir, snapshot: Path, name: str, *, image_dir: Path | None = None, **flags: Any) -> dict[str, Any]:
    """A new sandbox `name` from `snapshot`, returned once its guest has renewed its secrets and SSH answers.

    `flags` are `sealbox run`'s (net, allow_egress, dns, timeout, console_max_mib, ...); the machine's shape comes from
    the snapshot. The image defaults to where it was when the snapshot was taken."""
    from sealbox.sandbox import lifecycle, planning

    warn, progress = flags.pop("warn", None), flags.pop("progress", None)
    if image_dir is None:
        image_dir = Path(load(snapshot).image.dir) if backend_of(snapshot) == "qemu" else None
        if image_dir is None:
            raise UsageError("restoring a Firecracker snapshot needs its image directory")
    spec = planning.make_spec(name=name, image_dir=image_dir, from_snapshot=Path(snapshot), **flags)
    return lifecycle.run(spec, state, warn=warn, progress=progress)


# ---- listing and removing ----------------------------------------------------------------------

def owned(state: StateDir, name: str) -> list[Path]:
    """Snapshots in the state dir's snapshot directory taken from sandbox `name` of this state dir."""
    base = state.root / SNAPSHOTS
    mark = state.mark(name)
    out = []
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.name.startswith(".") or not d.is_dir() or d.is_symlink():
            continue
        try:
            data = json.loads((d / MANIFEST).read_bytes())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (data.get("owner") == mark or (data.get("source") == name and "owner" not in data)):
            out.append(d)
    return out


def remove(path: Path) -> None:
    """Delete one snapshot directory (its files are secrets: nothing is kept)."""
    path = Path(path)
    if path.is_symlink() or not (path / MANIFEST).is_file():
        raise UsageError(f"{path} is not a snapshot directory (no {MANIFEST})")
    shutil.rmtree(path)


def stale_staging(state: StateDir) -> list[Path]:
    """Staging directories a crashed `snapshot` left (no process holds their lock): gc removes them."""
    base = state.root / SNAPSHOTS
    out = []
    for d in sorted(base.glob(".*.staging.*")) if base.is_dir() else []:
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            out.append(d)
        except OSError:
            pass  # a snapshot is being written there
        finally:
            os.close(fd)
    return out

