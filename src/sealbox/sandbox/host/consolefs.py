"""A size-capped tmpfs for the guest's console log.

The serial console is the one channel an untrusted guest can write to the host's disk without any
limit: a loop printing to /dev/console would fill the state directory. The log therefore lives on a
tmpfs of its own, mounted per sandbox with `size=`; once full, the VMM's writes fail with ENOSPC and
the rest of the output is dropped (QEMU and Firecracker both carry on). The first MiBs, which hold
the boot, the host key fingerprints and the ready marker, are always kept.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.steps import Step, StepRefused

log = logging.getLogger("sealbox.consolefs")
MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"


def mount_source(path: Path) -> str | None:
    """The source field of the topmost mount at `path`."""
    from sealbox.util import mounts

    found = [m for m in mounts.read() if m.mount_point == Path(path)]
    return found[-1].source if found else None


def is_mountpoint(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False


class ConsoleFsStep(Step):
    """The tmpfs carries the sandbox's ownership mark as its mount source: undo unmounts only that."""

    kind = "console-fs"
    path: str
    size_mib: int
    mark: str = "sealbox-console"

    def describe(self) -> str:
        return f"console log tmpfs {self.path} (capped at {self.size_mib} MiB)"

    def do(self) -> dict[str, Any]:
        p = Path(self.path)
        p.mkdir(mode=0o700, parents=True, exist_ok=True)
        if is_mountpoint(p):
            raise StepRefused(f"{p} is already a mount point", hint="run 'sealbox gc'")
        opts = f"size={self.size_mib}m,nr_inodes=64,mode=0700,nodev,nosuid,noexec"
        proc = subprocess.run([MOUNT, "-t", "tmpfs", "-o", opts, self.mark, str(p)], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise SandboxError(f"mounting the console tmpfs at {p} failed: {proc.stderr.strip() or proc.returncode}")
        return {}

    def undo(self, outputs: dict[str, Any]) -> None:
        p = Path(self.path)
        if is_mountpoint(p):
            if mount_source(p) != self.mark:
                log.warning("not unmounting %s: mounted by someone else (%s)", p, mount_source(p))
                return
            proc = subprocess.run([UMOUNT, str(p)], capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:  # still open somewhere (a dying VMM): detach now, freed on last close
                proc = subprocess.run([UMOUNT, "--lazy", str(p)], capture_output=True, text=True, timeout=30)
                if proc.returncode != 0:
                    raise SandboxError(f"unmounting {p} failed: {proc.stderr.strip()}")
        try:
            p.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            if is_mountpoint(p):
                raise
