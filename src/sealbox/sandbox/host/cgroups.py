"""Per-sandbox cgroups on cgroup v1, hybrid and pure v2 hosts.

The cgroup is what bounds a VMM (memory, CPU, pids) and what *kills* it: the VMM is detached from
`sealbox run` (it must outlive it), so undo/stop/gc kill every process in the cgroup instead of
trusting one pid. A CgroupStep records the resolved directories, so undo works from the record alone
even if the host's mounts are looked up differently later.

v1 (and hybrid, where controllers are bound to v1 hierarchies): one directory per controller
hierarchy (memory, cpu, pids). v2: one directory; controllers enabled in the parents'
cgroup.subtree_control as needed.

Ownership: the path is `sealbox/<state id>/<name>` (host/owner.py), so no other state dir can make
or claim it, and the leaf is created with mkdir that fails if it exists: an existing cgroup is
refused, never adopted (undo kills everything in the cgroup, so adopting one would kill processes
that are not ours). v2 on a host run by systemd: no directory of our own and no write to the root's
subtree_control — the VMM starts in a delegated transient scope (host/systemd_scope.py);
the step only names the scope's directory and cleans it up.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sealbox.errors import SandboxError
from sealbox.sandbox.host import systemd_scope
from sealbox.sandbox.model import CgroupPlan
from sealbox.sandbox.status import oom_kills as oom_kills  # re-exported: its home was here
from sealbox.sandbox.steps import Step, StepRefused
from sealbox.util import mounts

log = logging.getLogger("sealbox.cgroups")

CONTROLLERS = ("memory", "cpu", "pids")
MOUNTINFO = mounts.MOUNTINFO


@dataclass(frozen=True)
class CgroupLayout:
    """What cgroup setup this host has."""

    mode: Literal["v1", "hybrid", "v2", "none"]
    v1: dict[str, Path] = field(default_factory=dict)  # controller -> hierarchy mount point
    unified: Path | None = None  # cgroup2 mount point, if any
    v2_controllers: frozenset[str] = frozenset()  # available in the cgroup2 root

    @property
    def version(self) -> Literal[1, 2]:
        """Which interface carries the resource controllers we need."""
        if self.mode == "v2" or (self.unified and set(CONTROLLERS) <= self.v2_controllers):
            return 2
        return 1

    def missing(self) -> list[str]:
        have = self.v2_controllers if self.version == 2 else set(self.v1)
        return [c for c in CONTROLLERS if c not in have]

    def mounts(self) -> dict[str, str]:
        """The parameter recorded in CgroupStep: controller -> mount (v1) or {'unified': mount} (v2)."""
        if self.version == 2:
            assert self.unified is not None
            return {"unified": str(self.unified)}
        return {c: str(self.v1[c]) for c in CONTROLLERS if c in self.v1}


def detect(mountinfo: Path = MOUNTINFO) -> CgroupLayout:
    v1: dict[str, Path] = {}
    unified: Path | None = None
    for m in mounts.read(path=mountinfo):
        if m.fstype == "cgroup2":
            unified = unified or m.mount_point
        elif m.fstype == "cgroup":
            for opt in m.super_options:
                if opt in ("cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices", "freezer"):
                    v1.setdefault(opt, m.mount_point)
    v2c: frozenset[str] = frozenset()
    if unified is not None:
        with contextlib.suppress(OSError):
            v2c = frozenset((unified / "cgroup.controllers").read_text().split())
    if v1 and unified is not None:
        mode: Literal["v1", "hybrid", "v2", "none"] = "hybrid"
    elif v1:
        mode = "v1"
    elif unified is not None:
        mode = "v2"
    else:
        mode = "none"
    return CgroupLayout(mode=mode, v1=v1, unified=unified, v2_controllers=v2c)


PARENT = "sealbox"


def path_for(state_id: str, name: str) -> str:
    """The cgroup path (below each hierarchy) of sandbox `name` of state dir `state_id`."""
    return f"{PARENT}/{state_id}/{name}"


def plan_for(name: str, layout: CgroupLayout, *, state_id: str, memory_bytes: int, cpus: int, pids_max: int,
             period_us: int = 100_000, systemd: bool | None = None) -> CgroupPlan:
    """The cgroup for sandbox `name`: each vCPU may use one full core. `systemd` (default: whether the
    host booted with systemd) decides, with the cgroup version, who creates it."""
    booted = systemd_scope.systemd_booted() if systemd is None else systemd
    manager = systemd_scope.choose_manager(layout.version, systemd=booted)
    path = systemd_scope.cgroup_path(name, state_id) if manager == "systemd" else path_for(state_id, name)
    return CgroupPlan(
        version=layout.version, name=path, memory_bytes=memory_bytes,
        cpu_quota_us=cpus * period_us, cpu_period_us=period_us, pids_max=pids_max, manager=manager,
    )


def jailer_parent(plan: CgroupPlan) -> str:
    """Firecracker's `--parent-cgroup`: the state dir's `sealbox/<state id>` (the jailer adds `<id>` below it, where a
    QEMU sandbox's cgroup would be: marked by its path), or the delegated scope itself (the jailer moves into it)."""
    return plan.name if plan.manager == "systemd" else str(Path(plan.name).parent)


def _write(path: Path, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise SandboxError(f"cannot write {value!r} to {path}: {e.strerror}", hint="check 'sealbox doctor' (cgroups)") from None


class CgroupStep(Step):
    """Create `<mount>/<name>` with memory, cpu and pids limits; undo kills its processes and removes it."""

    kind = "cgroup"
    version: Literal[1, 2]
    name: str  # e.g. sealbox/<sandbox>
    mounts: dict[str, str]  # see CgroupLayout.mounts
    memory_bytes: int
    cpu_quota_us: int
    cpu_period_us: int
    pids_max: int
    manager: Literal["cgroupfs", "systemd"] = "cgroupfs"
    unit: str | None = None  # systemd: the transient scope the VMM starts in

    @classmethod
    def from_plan(cls, plan: CgroupPlan, layout: CgroupLayout) -> CgroupStep:
        if plan.version != layout.version:
            raise SandboxError(f"cgroup plan is for v{plan.version} but this host uses cgroup v{layout.version}")
        if layout.missing():
            raise SandboxError(
                f"cgroup controllers missing: {', '.join(layout.missing())} (host cgroups: {layout.mode})",
                hint="mount them (v1) or enable them in the cgroup2 root's subtree_control; see 'sealbox doctor'",
            )
        unit = Path(plan.name).name if plan.manager == "systemd" else None
        return cls(version=plan.version, name=plan.name, mounts=layout.mounts(), unit=unit,
                   **plan.model_dump(include={"memory_bytes", "cpu_quota_us", "cpu_period_us", "pids_max", "manager"}))

    def dirs(self) -> list[Path]:
        """The cgroup directories this step owns (one for v2, one per controller hierarchy for v1)."""
        return sorted({Path(m) / self.name for m in self.mounts.values()})

    def procs_files(self) -> list[Path]:
        """Write a pid to each of these to join the cgroup (the VMM launcher does, before exec)."""
        return [d / "cgroup.procs" for d in self.dirs()]

    def joins(self) -> bool:
        """Whether the VMM launcher writes itself into procs_files() (else systemd-run puts it in the scope)."""
        return self.manager == "cgroupfs"

    def launch_prefix(self) -> list[str]:
        """The argv prefix the VMM launcher is started with (systemd: `systemd-run --scope ... --`)."""
        if self.manager != "systemd":
            return []
        assert self.unit is not None
        return systemd_scope.scope_argv(self.unit, memory_bytes=self.memory_bytes, cpu_quota_us=self.cpu_quota_us,
                                        cpu_period_us=self.cpu_period_us, pids_max=self.pids_max,
                                        systemd_run_path=systemd_scope.systemd_run())

    def describe(self) -> str:
        cpu = f"{self.cpu_quota_us}/{self.cpu_period_us}us"
        limits = f"memory={self.memory_bytes} cpu={cpu} pids={self.pids_max}"
        if self.manager == "systemd":
            return f"cgroup v2 by systemd: delegated scope {self.unit} ({limits}) at {', '.join(map(str, self.dirs()))}"
        return f"cgroup v{self.version} {self.name}: {limits} in {', '.join(map(str, self.dirs()))}"

    def do(self) -> dict[str, Any]:
        if self.manager == "systemd":
            if any(d.exists() for d in self.dirs()):  # a scope of this name: another state dir's sandbox
                raise SandboxError(f"systemd scope {self.unit} already exists", hint="another sandbox of this name runs; choose another --name")
            return {"dirs": [str(d) for d in self.dirs()]}  # created by systemd-run when the VMM starts
        if self.version == 2:
            self._do_v2(Path(self.mounts["unified"]))
        else:
            self._do_v1()
        return {"dirs": [str(d) for d in self.dirs()]}

    def _mkdir_leaf(self, leaf: Path) -> None:
        try:
            leaf.mkdir()
        except FileExistsError:
            raise StepRefused(f"cgroup {leaf} already exists (left by a crash of this state dir?)",
                               hint="run 'sealbox gc'; an existing cgroup is never adopted") from None

    def _do_v2(self, mount: Path) -> None:
        parent = mount
        parts = Path(self.name).parts
        for i, part in enumerate(parts):  # enable controllers on every level above the leaf
            control = parent / "cgroup.subtree_control"
            enabled = set(control.read_text().split()) if control.exists() else set()
            todo = [c for c in CONTROLLERS if c not in enabled]
            if todo:
                _write(control, " ".join(f"+{c}" for c in todo))
            parent = parent / part
            if i < len(parts) - 1:
                parent.mkdir(exist_ok=True)
            else:
                self._mkdir_leaf(parent)
        leaf = mount / self.name
        _write(leaf / "memory.max", str(self.memory_bytes))
        if (leaf / "memory.swap.max").exists():
            _write(leaf / "memory.swap.max", "0")  # match v1's memsw: guest RAM never goes to swap
        quota = str(self.cpu_quota_us) if self.cpu_quota_us > 0 else "max"
        _write(leaf / "cpu.max", f"{quota} {self.cpu_period_us}")
        _write(leaf / "pids.max", str(self.pids_max))

    def _do_v1(self) -> None:
        for ctl, mount in sorted(self.mounts.items()):
            d = Path(mount) / self.name
            d.parent.mkdir(parents=True, exist_ok=True)
            self._mkdir_leaf(d)
            if ctl == "memory":
                _write(d / "memory.limit_in_bytes", str(self.memory_bytes))
                if (d / "memory.memsw.limit_in_bytes").exists():  # must come after the plain limit (memsw >= limit)
                    _write(d / "memory.memsw.limit_in_bytes", str(self.memory_bytes))
            elif ctl == "cpu":
                _write(d / "cpu.cfs_period_us", str(self.cpu_period_us))
                _write(d / "cpu.cfs_quota_us", str(self.cpu_quota_us if self.cpu_quota_us > 0 else -1))
            elif ctl == "pids":
                _write(d / "pids.max", str(self.pids_max))

    def undo(self, outputs: dict[str, Any]) -> None:
        if self.manager == "systemd" and not outputs.get("dirs"):
            return  # do() refused (the scope is someone else's) or never finished: nothing of ours to stop
        left = kill_all(self.dirs())
        if left:
            raise SandboxError(f"processes {left} in cgroup {self.name} survived SIGKILL", hint="retry with 'sealbox gc'")
        if self.manager == "systemd":
            assert self.unit is not None
            systemd_scope.stop_unit(self.unit)  # an empty scope goes by itself; its directory is systemd's
            return
        problems = []
        parts = Path(self.name).parts
        for mount in sorted(set(self.mounts.values())):
            # the leaf, then the shared parents (`sealbox/<state id>`, `sealbox`) if now empty
            for k in range(len(parts), 0, -1):
                target = Path(mount).joinpath(*parts[:k])
                try:
                    target.rmdir()
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if k == len(parts):
                        problems.append(f"{target}: {e.strerror}")
                    elif e.errno not in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST):
                        log.debug("cannot remove %s: %s", target, e)
        if problems:
            raise SandboxError(f"cannot remove cgroup: {'; '.join(problems)}", hint="retry with 'sealbox gc'")


def pids_in(dirs: list[Path]) -> list[int]:
    pids: set[int] = set()
    for d in dirs:
        try:
            pids.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        except FileNotFoundError:
            continue
    return sorted(pids)


def kill_all(dirs: list[Path], *, attempts: int = 50, delay: float = 0.05) -> list[int]:
    """SIGKILL every process in the cgroup(s); v2 `cgroup.kill` when available. Returns survivors."""
    for d in dirs:
        kill_file = d / "cgroup.kill"
        if kill_file.exists():
            try:
                kill_file.write_text("1")
            except OSError as e:
                log.debug("cgroup.kill on %s failed: %s", d, e)
    left: list[int] = []
    for _ in range(attempts):  # new processes can appear while killing (a fork in flight): repeat
        left = pids_in(dirs)
        if not left:
            return []
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(delay)
    return pids_in(dirs)


def join(procs_files: list[Path], pid: int | None = None) -> None:
    """Move `pid` (default: the calling process) into the cgroup; called in the VMM child before exec."""
    me = str(pid or os.getpid())
    for f in procs_files:
        with open(f, "w") as fh:
            fh.write(me)
