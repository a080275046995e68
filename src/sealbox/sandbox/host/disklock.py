"""Who holds which `--disk` on this machine: a writable disk belongs to one sandbox at a time.

Two guests writing one filesystem at once corrupt it, and sandboxes of several state dirs share a machine. So every
`--disk` is claimed in the host registry's machine-wide table before the network is set up, and released by `rm`/`gc`
(a recorded step, like every host object; host/owner.py):

    <run>/disks/<key>.json    the holders of one disk: [{owner mark, state dir, sandbox, mode ro|rw, path}]
    <run>/disks.lock          flock around every read-modify-write of the table

The key is the file's device and inode (a block device: its device number), so two paths to one disk are one disk.
A rw claim needs no other holder; a ro claim needs no rw holder (a reader would see the writer's half-written
blocks). A refusal is one line naming the holder. A sandbox holds its disks until it is removed (a stopped sandbox
still owns its data). QEMU's own image locking stays on as a second line; Firecracker has none.
/run is a tmpfs: after a reboot the table starts empty, like the VMs it describes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from sealbox.errors import SandboxError
from sealbox.sandbox.host.registry import LOCK_TIMEOUT, run_root
from sealbox.sandbox.steps import Step, StepRefused
from sealbox.util import atomic, flock


class Holder(BaseModel):
    owner: str  # ownership mark of the sandbox (host/owner.py)
    state_dir: str
    sandbox: str
    mode: Literal["ro", "rw"]
    path: str


class Holders(BaseModel):
    key: str
    holders: list[Holder] = []


def disk_key(path: str | os.PathLike[str]) -> str:
    """'b<rdev>' for a block device, 'f<dev>-<ino>' for a file (symlinks followed: the disk itself)."""
    st = os.stat(path)
    return f"b{st.st_rdev}" if stat.S_ISBLK(st.st_mode) else f"f{st.st_dev}-{st.st_ino}"


class DiskTable:
    def __init__(self, run_dir: str | os.PathLike[str] | None = None) -> None:
        self.root = run_root(run_dir)

    @property
    def dir(self) -> Path:
        return self.root / "disks"

    def path(self, key: str) -> Path:
        if key[:1] not in ("b", "f") or not key[1:].replace("-", "").isdigit():
            raise ValueError(f"not a disk key: {key!r}")
        return self.dir / f"{key}.json"

    def _locked(self) -> Any:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return flock.exclusive(self.root / "disks.lock", LOCK_TIMEOUT, f"the disk table {self.dir} is locked by another sealbox command")

    def read(self, key: str) -> Holders:
        try:
            return Holders.model_validate_json(self.path(key).read_bytes())
        except FileNotFoundError:
            return Holders(key=key)
        except (ValidationError, ValueError, OSError) as e:
            raise SandboxError(f"disk table file {self.path(key)} is unreadable: {str(e).splitlines()[0]}",
                               hint="if no sandbox uses that disk, delete the file") from None

    def _write(self, table: Holders) -> None:
        if table.holders:
            atomic.write_json(self.path(table.key), table.model_dump(), mode=0o600)
        else:
            self.path(table.key).unlink(missing_ok=True)

    def claim(self, key: str, me: Holder) -> None:
        """Add `me` (idempotent); StepRefused naming the holder if the disk is held in a conflicting way."""
        with self._locked():
            table = self.read(key)
            others = [h for h in table.holders if h.owner != me.owner]
            clash = next((h for h in others if "rw" in (h.mode, me.mode)), None)
            if clash is not None:
                raise StepRefused(f"--disk {me.path} is in use ({clash.mode}) by sandbox {clash.sandbox!r} of the state dir {clash.state_dir}",
                                   hint=f"remove that sandbox first ('sealbox rm {clash.sandbox}'); only read-only attachments share a disk")
            if me not in table.holders:
                table.holders = [*others, *[h for h in table.holders if h.owner == me.owner and h != me], me]
                self._write(table)

    def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s holds on the disk `key`; never another's. True if anything went."""
        if not self.path(key).exists():
            return False
        with self._locked():
            table = self.read(key)
            mine = [h for h in table.holders if h.owner == owner]
            table.holders = [h for h in table.holders if h.owner != owner]
            self._write(table)
        return bool(mine)

    def holds(self) -> list[tuple[str, Holder]]:
        """(key, holder) of every claim on this machine (gc judges them by their mark)."""
        if not self.dir.is_dir():
            return []
        out = []
        for p in sorted(self.dir.glob("*.json")):
            try:
                out += [(p.stem, h) for h in self.read(p.stem).holders]
            except (SandboxError, ValueError):
                continue  # unreadable: reported when a claim touches it
        return out


class DiskClaimStep(Step):
    """This sandbox's claim on one `--disk` (host/disklock.py); undo releases only its own claim."""

    kind = "disk.claim"
    run_dir: str
    key: str
    holder: Holder

    def describe(self) -> str:
        h = self.holder
        return f"claim --disk {h.path} ({h.mode}) in the machine's disk table {self.run_dir}/disks"

    def do(self) -> dict[str, Any] | None:
        DiskTable(self.run_dir).claim(self.key, self.holder)
        return None

    def undo(self, outputs: dict[str, Any]) -> None:
        DiskTable(self.run_dir).release(self.key, self.holder.owner)


def claim_steps(disks: Any, owner: str, state_dir: str, sandbox: str, run_dir: str | None = None) -> list[Step]:
    """One DiskClaimStep per --disk (model.DiskSpec), in order; the files exist (planning.check_disks)."""
    root = str(run_root(run_dir))
    return [DiskClaimStep(run_dir=root, key=disk_key(d.path), holder=Holder(owner=owner, state_dir=state_dir, sandbox=sandbox,
                                                                         mode="ro" if d.readonly else "rw", path=str(d.path)))
            for d in disks]
