"""The jailer's command line, its jail layout and the cgroups it creates (facts: docs/jailer.md, v1.16.1).

- The jail is `<chroot-base>/<exec_file_name>/<id>/root`, where exec_file_name is the file name of the
  *canonicalised* `--exec-file`; the jailer copies the binary there and writes `<exec_file_name>.pid`
  (create_new: a stale pid file makes it fail).
- With any `--cgroup` the jailer creates `<hierarchy>/<parent>/<id>` (parent defaults to exec_file_name)
  in every v1 hierarchy holding a named controller, or once in the v2 unified hierarchy. Nobody removes
  them but us.
- Firecracker gets `--id`, `--start-time-us`, `--start-time-cpu-us`, `--parent-cpu-time-us` from the
  jailer; everything after `--` is passed through.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.model import CgroupPlan
from sealbox.util import mounts

JAIL_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
NETNS_DIR = Path("/var/run/netns")

# Fixed paths *inside* the jail (what Firecracker sees after pivot_root).
API_SOCK = "/run/firecracker.socket"  # the jailer creates /run; also Firecracker's default
CONFIG_FILE = "/config.json"
LOG_FILE = "/firecracker.log"
METRICS_FILE = "/firecracker.metrics"
KERNEL = "/vmlinux"
INITRD = "/initrd.img"
ROOTFS = "/rootfs.ext4"
INSTANCE_DISK = "/instance.img"
SNAPSHOT_DIR = "/snapshot"
OWNER_MARKER = "sealbox-owner"  # in <id>/, outside root/: which sandbox created this jail


def extra_disk(index: int) -> str:
    return f"/disk{index}.img"


def check_jail_id(jail_id: str) -> str:
    if not JAIL_ID_RE.fullmatch(jail_id or ""):
        raise UsageError(f"invalid Firecracker jail id {jail_id!r}", hint="the jailer accepts 1-64 ASCII letters, digits or '-'")
    return jail_id


class JailLayout(BaseModel):
    """Host paths of one jail."""

    model_config = ConfigDict(frozen=True)
    chroot_base: Path
    exec_name: str
    jail_id: str

    @property
    def jail_dir(self) -> Path:
        return self.chroot_base / self.exec_name / self.jail_id

    @property
    def root(self) -> Path:
        return self.jail_dir / "root"

    def host(self, in_jail: str) -> Path:
        return self.root / in_jail.lstrip("/")

    @property
    def pid_file(self) -> Path:
        return self.root / f"{self.exec_name}.pid"

    @property
    def api_sock(self) -> Path:
        return self.host(API_SOCK)

    @property
    def marker(self) -> Path:
        return self.jail_dir / OWNER_MARKER


def cgroup_properties(cg: CgroupPlan) -> list[tuple[str, str]]:
    """`--cgroup FILE=VALUE` pairs for the plan's limits, in the file names of its cgroup version."""
    for field in ("memory_bytes", "pids_max", "cpu_period_us"):
        if getattr(cg, field) <= 0:
            raise SandboxError(f"cgroup limit {field}={getattr(cg, field)} must be positive")
    if not 1000 <= cg.cpu_period_us <= 1_000_000:
        raise SandboxError(f"cgroup cpu_period_us={cg.cpu_period_us} is outside 1000..1000000 (kernel limits)")
    if 0 < cg.cpu_quota_us < 1000:
        raise SandboxError(f"cgroup cpu_quota_us={cg.cpu_quota_us} is below the kernel minimum of 1000 (use <= 0 for no limit)")
    unlimited = cg.cpu_quota_us <= 0
    if cg.version == 2:
        quota = "max" if unlimited else str(cg.cpu_quota_us)
        return [
            ("memory.max", str(cg.memory_bytes)),
            ("cpu.max", f"{quota} {cg.cpu_period_us}"),
            ("pids.max", str(cg.pids_max)),
        ]
    # v1: the period first, so the quota is written against the intended period
    return [
        ("memory.limit_in_bytes", str(cg.memory_bytes)),
        ("cpu.cfs_period_us", str(cg.cpu_period_us)),
        ("cpu.cfs_quota_us", "-1" if unlimited else str(cg.cpu_quota_us)),
        ("pids.max", str(cg.pids_max)),
    ]


def controllers(props: list[tuple[str, str]]) -> list[str]:
    """Controllers named by cgroup files, as the jailer derives them (text before the first '.')."""
    return sorted({f.split(".", 1)[0] for f, _ in props})


class JailerArgs(BaseModel):
    """Everything on the jailer's command line."""

    model_config = ConfigDict(frozen=True)
    jailer: Path
    exec_file: Path
    jail_id: str
    uid: int = Field(ge=0)
    gid: int = Field(ge=0)
    chroot_base: Path
    netns: Path | None
    cgroup_version: Literal[1, 2]
    cgroups: tuple[tuple[str, str], ...] = ()
    parent_cgroup: str | None = None  # relative to each hierarchy (default: exec_file_name)
    no_file: int | None = Field(default=None, gt=0)
    fsize: int | None = Field(default=None, gt=0)
    daemonize: bool = False
    new_pid_ns: bool = True
    firecracker_args: tuple[str, ...] = ()


def jailer_argv(a: JailerArgs) -> list[str]:
    """The argv in the order of the jailer's documented usage line (docs/jailer.md, "Jailer Usage")."""
    check_jail_id(a.jail_id)
    if a.uid == 0 or a.gid == 0:
        raise SandboxError("refusing to run Firecracker as root (uid/gid 0)",
                           hint="every sandbox VMM runs as an unprivileged uid of its own (SEALBOX_UID_RANGE)")
    argv = [str(a.jailer), "--id", a.jail_id, "--exec-file", str(a.exec_file),
            "--uid", str(a.uid), "--gid", str(a.gid), "--cgroup-version", str(a.cgroup_version)]
    for file, value in a.cgroups:
        if "=" in file or "=" in value or not value or "/" in file or "." not in file:
            raise SandboxError(f"invalid cgroup setting {file}={value!r} for the jailer", hint="expected <controller>.<property>=<value>")
        argv += ["--cgroup", f"{file}={value}"]
    if a.parent_cgroup is not None:
        if a.parent_cgroup.startswith("/") or ".." in a.parent_cgroup.split("/") or not a.parent_cgroup:
            raise SandboxError(f"invalid parent cgroup {a.parent_cgroup!r} for the jailer", hint="a relative path inside the hierarchy")
        argv += ["--parent-cgroup", a.parent_cgroup]
    argv += ["--chroot-base-dir", str(a.chroot_base)]
    if a.netns is not None:
        argv += ["--netns", str(a.netns)]
    if a.fsize is not None:
        argv += ["--resource-limit", f"fsize={a.fsize}"]
    if a.no_file is not None:
        argv += ["--resource-limit", f"no-file={a.no_file}"]
    if a.daemonize:
        argv.append("--daemonize")
    if a.new_pid_ns:
        argv.append("--new-pid-ns")
    reserved = {"--id", "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us"}
    clash = [x for x in a.firecracker_args if x.split("=", 1)[0] in reserved]
    if clash:
        raise SandboxError(f"Firecracker argument {clash[0]} is set by the jailer itself")
    if a.firecracker_args:
        argv += ["--", *a.firecracker_args]
    return argv


def netns_path(netns: str) -> Path:
    return NETNS_DIR / netns


# cgroup hierarchies (for undo: remove what the jailer created) ---------------------------------
def cgroup_mounts(mountinfo: str | None = None) -> tuple[dict[str, Path], Path | None]:
    """v1 controller -> mount point, and the v2 mount point, from /proc/self/mountinfo."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for m in mounts.read(mountinfo):
        if m.fstype == "cgroup2" and v2 is None:
            v2 = m.mount_point
        elif m.fstype == "cgroup":
            for opt in m.super_options:
                v1.setdefault(opt, m.mount_point)
    return v1, v2


def jailer_cgroup_dirs(version: int, ctrls: list[str], exec_name: str, jail_id: str, mountinfo: str | None = None,
                       parent: str | None = None) -> list[Path]:
    """The cgroup directories the jailer creates for this jail (existing or not); `parent` is its
    --parent-cgroup (default, as the jailer's: exec_name)."""
    check_jail_id(jail_id)
    v1, v2 = cgroup_mounts(mountinfo)
    base = parent or exec_name
    if version == 2:
        return [v2 / base / jail_id] if v2 else []
    return sorted({v1[c] / base / jail_id for c in ctrls if c in v1})
