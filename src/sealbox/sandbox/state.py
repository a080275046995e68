"""The sandbox state directory: one atomically written record per sandbox, and per-sandbox locks.

Layout (default root /var/lib/sealbox, override with --state-dir or SEALBOX_STATE_DIR):
    sandboxes/<name>/record.json   the SandboxRecord (spec, status, host steps, pids)
    sandboxes/<name>/...           per-sandbox files (console log, keys, sockets, instance disk)
    locks/<name>.lock              flock target; kept outside the sandbox dir so `rm` can delete that dir

Host-wide resources (names, addresses, uids) are leased from the host registry, not from here
(host/registry.py); every host object a sandbox gets carries the mark `owner.mark(root, name)`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import NotFound, SandboxError
from sealbox.sandbox.host import owner
from sealbox.sandbox.steps import StepLog
from sealbox.util import atomic, flock
from sealbox.util.names import check_sandbox_name

DEFAULT_STATE_DIR = Path("/var/lib/sealbox")
UMOUNT = "/usr/bin/umount"
RECORD_VERSION = 1


def state_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("SEALBOX_STATE_DIR") or DEFAULT_STATE_DIR)


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks (field 22 of /proc/PID/stat): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    if not pid:
        return False
    now = process_start_time(pid)
    if now is None:
        return False
    if start_time is not None and now != start_time:
        return False  # the pid was reused by another process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class SandboxRecord(BaseModel):
    """Everything sealbox knows about one sandbox; the source of truth for ps/inspect/stop/rm/gc."""

    version: int = RECORD_VERSION
    name: str
    status: str = "creating"  # creating -> running -> stopped/exited; failed; removing
    created_at: float
    spec: dict[str, Any] = {}
    image: dict[str, Any] = {}
    network: dict[str, Any] = {}
    vmm: dict[str, Any] = {}
    guest: dict[str, Any] = {}
    steps: StepLog = StepLog()
    owner_pid: int | None = None  # the sealbox process creating it; dead + status creating => gc
    owner_start: int | None = None
    # a process whose death ends a running sandbox (SDK pool members): then it is `orphaned` and gc removes it
    holder_pid: int | None = None
    holder_start: int | None = None
    error: str | None = None


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()  # marks and Firecracker's jail owner files name it

    @property
    def id(self) -> str:
        """The state dir's part of every ownership mark (host/owner.py)."""
        return owner.state_id(self.root)

    def mark(self, name: str) -> str:
        """The ownership mark of sandbox `name` of this state dir on host objects."""
        return owner.mark(self.root, check_sandbox_name(name))

    # paths -------------------------------------------------------------------------------------
    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"

    def sandbox_dir(self, name: str) -> Path:
        return self.sandboxes / check_sandbox_name(name)

    def record_path(self, name: str) -> Path:
        return self.sandbox_dir(name) / "record.json"

    def ensure(self) -> None:
        for d in (self.root, self.sandboxes, self.root / "locks"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # the unprivileged VMM user must traverse to its own files only

    # locking -----------------------------------------------------------------------------------
    def lock(self, name: str, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
        """Exclusive per-sandbox lock (flock). Bounded wait, clear error if another command holds it."""
        self.ensure()
        return self._flock(self.root / "locks" / f"{check_sandbox_name(name)}.lock", f"sandbox {name!r}", timeout)

    @staticmethod
    def _flock(lock_file: Path, what: str, timeout: float) -> contextlib.AbstractContextManager[None]:
        return flock.exclusive(lock_file, timeout, f"{what} is busy: another sealbox command holds its lock")

    # records -----------------------------------------------------------------------------------
    def reserve(self, record: SandboxRecord) -> None:
        """Create the sandbox dir (atomic name reservation) and write the first record."""
        self.ensure()
        try:
            self.sandbox_dir(record.name).mkdir(mode=0o700)
        except FileExistsError:
            raise SandboxError(
                f"a sandbox named {record.name!r} already exists",
                hint=f"choose another --name, or remove it with 'sealbox rm {record.name}'",
            ) from None
        self.save(record)

    def save(self, record: SandboxRecord) -> None:
        atomic.write_text(self.record_path(record.name), record.model_dump_json(indent=2) + "\n", mode=0o600)

    def exists(self, name: str) -> bool:
        return self.sandbox_dir(name).is_dir()

    def load(self, name: str) -> SandboxRecord:
        path = self.record_path(name)
        try:
            return SandboxRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            if self.sandbox_dir(name).is_dir():
                # reserved but never written: treat as a failed create that gc can remove
                return SandboxRecord(name=name, status="failed", created_at=0.0, error="record missing")
            raise NotFound(f"no such sandbox: {name!r}", hint="see 'sealbox ps --all'") from None
        except (ValidationError, ValueError) as e:
            raise SandboxError(f"sandbox record {path} is corrupt: {str(e).splitlines()[0]}", hint="'sealbox rm --force' removes it") from None

    def names(self) -> list[str]:
        if not self.sandboxes.is_dir():
            return []
        return sorted(p.name for p in self.sandboxes.iterdir() if p.is_dir() and not p.name.startswith("."))

    def delete(self, name: str) -> list[str]:
        """Remove a sandbox's dir; mounts left under it (its console tmpfs, after a crash or an
        `rm --force` of an unreadable record) are detached first. Returns those mount points."""
        d = self.sandbox_dir(name)
        detached = []
        for m in sorted(mounts_under(d), key=lambda p: len(p.parts), reverse=True):
            proc = subprocess.run([UMOUNT, "--lazy", str(m)], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise SandboxError(f"cannot unmount {m}: {proc.stderr.strip()}", hint="retry 'sealbox gc'")
            detached.append(str(m))
        shutil.rmtree(d, ignore_errors=True)
        return detached


def mounts_under(d: Path) -> list[Path]:
    """Mount points at or below `d` (the mount table as this process sees it)."""
    from sealbox.util import mounts

    d = Path(d)
    return [m.mount_point for m in mounts.read() if m.mount_point == d or d in m.mount_point.parents]
