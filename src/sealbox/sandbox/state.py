"""The sandbox state directory: one atomically written record per sandbox, and per-sandbox locks.

The layout (paths, the access check) is layout.py's, usable without pydantic; a record is written only through
SandboxRecord, its one schema, and read back by this model or — for ps, inspect and logs — by recordview.py, which
reads only a record in exactly the shape this model writes and leaves any other to the model. Default root
/var/lib/sealbox (override: --state-dir, SEALBOX_STATE_DIR).

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
from sealbox.sandbox.layout import DEFAULT_STATE_DIR, StateLayout, state_root
from sealbox.sandbox.steps import StepLog
from sealbox.util import atomic, flock
from sealbox.util.names import check_sandbox_name
from sealbox.util.procs import pid_alive, process_start_time

__all__ = ["DEFAULT_STATE_DIR", "RECORD_VERSION", "UMOUNT", "SandboxRecord", "StateDir", "mounts_under",
           "pid_alive", "process_start_time", "state_root"]  # the first and last three: re-exported, their homes moved
UMOUNT = "/usr/bin/umount"
RECORD_VERSION = 1


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


class StateDir(StateLayout):
    """The layout, with per-sandbox locks and the record's writer and (validating) reader."""

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
