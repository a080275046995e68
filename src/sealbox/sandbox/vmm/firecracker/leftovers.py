"""Firecracker jails that no record owns any more (for `gc` and `rm --force`).

A jail `<chroot base>/<exec name>/<id>/` is sealbox's when its owner file (`sealbox-owner`, written
before the jail got its name, outside the VMM-writable `root/`) names a sandbox dir; it is this state
dir's when that sandbox dir is `<state>/sandboxes/<id>`. Only such jails are removed, with what
the jailer made for them: the jailed firecracker (its pid file is VMM-writable, so the pid is only
trusted when that process is firecracker with our jail id) and the cgroups `<hierarchy>/<exec>/<id>`
(ids are host-wide sandbox names, leased per host). Staging dirs `.<id>.staging-<pid>` of a crashed
stage step carry the same owner file.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from pydantic import BaseModel

from sealbox.sandbox.host import cgroups
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.launch import remove_cgroup
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings
from sealbox.util.names import NAME_RE

V1_CONTROLLERS = ["cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer"]


class JailLeftover(BaseModel):
    jail_dir: Path
    jail_id: str
    exec_name: str
    owner: str  # content of the owner file: the sandbox dir that made the jail
    ours: bool = False
    state_id: str = ""  # the finding state dir's id: the jailer's --parent-cgroup is sealbox/<state id>

    def describe(self) -> str:
        whose = "" if self.ours else f", owner {self.owner}"
        return f"firecracker-jail {self.jail_dir} (sandbox {self.jail_id}){whose}"


def read_owner(jail_dir: Path) -> str | None:
    """The jail's owner file, read without following links (root wrote it; the VMM cannot reach it)."""
    try:
        fd = os.open(jail_dir / J.OWNER_MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 4096).decode(errors="replace").strip() or None
    finally:
        os.close(fd)


def find(state: StateDir, keep: set[str], settings: FirecrackerSettings | None = None) -> list[JailLeftover]:
    base = (settings or FirecrackerSettings.from_env()).chroot_base
    found = []
    for exec_dir in sorted(base.iterdir()) if base.is_dir() else []:
        if exec_dir.is_symlink() or not exec_dir.is_dir():
            continue
        for jail_dir in sorted(exec_dir.iterdir()):
            jail_id = jail_dir.name.lstrip(".").split(".staging-")[0]
            if jail_dir.is_symlink() or not jail_dir.is_dir() or not NAME_RE.fullmatch(jail_id):
                continue
            owner = read_owner(jail_dir)
            if owner is None:
                continue  # not sealbox's: not even reported
            ours = owner == str(state.sandbox_dir(jail_id))
            if ours and jail_id in keep:
                continue  # a record owns it: its own steps undo it
            found.append(JailLeftover(jail_dir=jail_dir, jail_id=jail_id, exec_name=exec_dir.name, owner=owner, ours=ours,
                                      state_id=state.id))
    return found


def remove(item: JailLeftover) -> None:
    """Kill the jail's firecracker by its jailer cgroups (a pid file inside the jail is the VMM's to forge, so none is
    read), remove the cgroups, then the jail dir (rmtree never follows the links a VMM may have planted in it)."""
    if not item.ours or read_owner(item.jail_dir) != item.owner:
        raise ValueError(f"refusing to remove {item.describe()}: not ours")
    if not item.jail_dir.name.startswith("."):
        lay = J.JailLayout(chroot_base=item.jail_dir.parent.parent, exec_name=item.exec_name, jail_id=item.jail_id)
        dirs: list[Path] = []
        for parent in (None, f"{cgroups.PARENT}/{item.state_id}" if item.state_id else None):  # the jailer's default, ours
            dirs += J.jailer_cgroup_dirs(1, V1_CONTROLLERS, lay.exec_name, lay.jail_id, parent=parent)
            dirs += J.jailer_cgroup_dirs(2, [], lay.exec_name, lay.jail_id, parent=parent)
        for cg in sorted(set(dirs)):
            remove_cgroup(cg)
    shutil.rmtree(item.jail_dir)
