"""Sandbox cgroups on a host run by systemd: a delegated transient scope per sandbox.

On a cgroup v2 host whose PID 1 is systemd, the cgroup tree belongs to systemd: creating
`/sys/fs/cgroup/sealbox/...` and writing the root's cgroup.subtree_control (what the cgroupfs path in
host/cgroups.py does) fights it — systemd may move or kill what it does not know. Instead the VMM's
launcher is started through

    systemd-run --scope --unit=sealbox-NAME.scope --slice=sealbox.slice --property=Delegate=yes
                --property=MemoryMax=... --property=MemorySwapMax=0 --property=CPUQuota=...%
                --property=CPUQuotaPeriodSec=...us --property=TasksMax=... --quiet --collect -- LAUNCHER...

systemd-run asks systemd for the scope (with its own pid in it), waits for it and then execs the
launcher in place: the pid, the environment and every inherited file descriptor (TAP, disks, QMP)
stay, and everything the VMM forks stays in the scope. systemd applies the limits; Delegate=yes
hands the scope's subtree to sealbox, so the Firecracker jailer may be pointed at it with
`--parent-cgroup sealbox.slice/sealbox-NAME.scope` (no `--cgroup` values: the jailer then moves
itself into that existing cgroup, docs/jailer.md). The scope goes away when its last process exits
(--collect: even after a failure); undo kills what is left through the scope's cgroup directory and
asks systemd to stop the unit.

Where this is chosen (`choose_manager`): cgroup v2 carries the controllers and systemd is PID 1
(sd_booted(3): /run/systemd/system is a directory). cgroup v1 and hybrid hosts (controllers on v1
hierarchies, as on this project's CI machine) keep the cgroupfs path, and so does a v2 host without
systemd (nobody else manages that tree).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Literal

from sealbox.errors import SandboxError
from sealbox.util.names import check_sandbox_name

SLICE = "sealbox.slice"
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
Manager = Literal["cgroupfs", "systemd"]


def systemd_booted(run_dir: Path = SYSTEMD_RUN_DIR) -> bool:
    """sd_booted(): the host was booted with systemd as its init."""
    return run_dir.is_dir()


def choose_manager(version: int, *, systemd: bool) -> Manager:
    """Who creates a sandbox's cgroup: systemd (delegated scope) or sealbox itself (cgroupfs)."""
    return "systemd" if version == 2 and systemd else "cgroupfs"


def unit_name(sandbox: str, state_id: str) -> str:
    """The scope unit of one sandbox of one state dir: the state id is its ownership mark (host/owner.py)."""
    return f"sealbox-{state_id}-{check_sandbox_name(sandbox)}.scope"


def cgroup_path(sandbox: str, state_id: str) -> str:
    """The scope's cgroup, relative to the cgroup2 mount (systemd puts a unit of a slice below it)."""
    return f"{SLICE}/{unit_name(sandbox, state_id)}"


def systemd_run() -> str:
    found = shutil.which("systemd-run")
    if found is None:
        raise SandboxError("this host runs systemd but systemd-run was not found", hint="install the systemd package's tools")
    return found


def scope_argv(unit: str, *, memory_bytes: int, cpu_quota_us: int, cpu_period_us: int, pids_max: int,
               systemd_run_path: str = "systemd-run") -> list[str]:
    """The prefix that starts the following command in delegated scope `unit` with these limits."""
    argv = [systemd_run_path, "--scope", "--quiet", "--collect", f"--unit={unit}", f"--slice={SLICE}",
            "--property=Delegate=yes", f"--property=MemoryMax={memory_bytes}", "--property=MemorySwapMax=0"]
    if cpu_quota_us > 0:  # CPUQuota is a percentage of one CPU per period (200% = two full CPUs)
        percent = -(-cpu_quota_us * 100 // cpu_period_us)
        argv += [f"--property=CPUQuota={percent}%", f"--property=CPUQuotaPeriodSec={cpu_period_us}us"]
    argv += [f"--property=TasksMax={pids_max}", "--"]
    return argv


def stop_argv(unit: str) -> list[str]:
    return ["systemctl", "stop", "--no-block", unit]


def stop_unit(unit: str) -> None:
    """Ask systemd to stop the scope (it is normally gone already once its processes are); best effort."""
    if shutil.which("systemctl") is None:
        return
    subprocess.run(stop_argv(unit), stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=False)
