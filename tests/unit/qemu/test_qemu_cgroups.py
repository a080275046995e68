"""cgroup detection from mountinfo and the files CgroupStep writes, against STAND-IN cgroup trees.

The stand-in trees are plain directories: they record which files get which values, but (unlike
cgroupfs) they neither create control files on mkdir nor drop dead pids; the real-cgroupfs behaviour
is covered by tests/integration/qemu/test_qemu_host.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.model import CgroupPlan

HYBRID = """\
25 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
35 30 0:31 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
"""
V1_JOINED = """\
32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
V2 = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def _mi(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "mountinfo"
    p.write_text(text)
    return p


def test_detect_hybrid_v1_v2(tmp_path: Path) -> None:
    h = cgroups.detect(_mi(tmp_path, HYBRID))
    assert h.mode == "hybrid" and h.version == 1 and h.unified == Path("/sys/fs/cgroup/unified")
    assert h.mounts() == {"cpu": "/sys/fs/cgroup/cpu", "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}
    assert h.missing() == []
    v1 = cgroups.detect(_mi(tmp_path, V1_JOINED))
    assert v1.mode == "v1" and v1.v1["cpu"] == v1.v1["cpuacct"] == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert v1.missing() == ["pids"]
    none = cgroups.detect(_mi(tmp_path, "25 1 0:22 / /sys rw - sysfs sysfs rw\n"))
    assert none.mode == "none"


def test_detect_pure_v2_reads_root_controllers(tmp_path: Path) -> None:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2 = cgroups.detect(_mi(tmp_path, V2.replace("/sys/fs/cgroup", str(root))))
    assert v2.mode == "v2" and v2.version == 2 and v2.missing() == []
    assert v2.mounts() == {"unified": str(root)}


SID = "0123456789abcdef"  # a state dir id (host/owner.py)
LEAF = f"sealbox/{SID}/box1"


def _plan(version: int, quota: int = 150_000) -> CgroupPlan:
    return CgroupPlan(version=version, name=LEAF, memory_bytes=640 << 20, cpu_quota_us=quota, cpu_period_us=100_000, pids_max=300)


def test_v1_writes_every_hierarchy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    leaf_mem = mounts["memory"] / LEAF
    real_mkdir = cgroups.CgroupStep._mkdir_leaf

    def mkdir_like_cgroupfs(self: cgroups.CgroupStep, leaf: Path) -> None:
        real_mkdir(self, leaf)
        if leaf == leaf_mem:  # the kernel makes the control files; swap accounting present here
            (leaf / "memory.memsw.limit_in_bytes").write_text("9223372036854771712")

    monkeypatch.setattr(cgroups.CgroupStep, "_mkdir_leaf", mkdir_like_cgroupfs)
    layout = cgroups.CgroupLayout(mode="hybrid", v1=mounts, unified=tmp_path / "unified")
    plan = _plan(1)
    step = cgroups.CgroupStep.from_plan(plan, layout)
    out = step.do()
    assert sorted(out["dirs"]) == sorted(str(m / plan.name) for m in mounts.values())
    assert (leaf_mem / "memory.limit_in_bytes").read_text() == str(plan.memory_bytes)
    assert (leaf_mem / "memory.memsw.limit_in_bytes").read_text() == str(plan.memory_bytes)
    cpu = mounts["cpu"] / plan.name
    assert (cpu / "cpu.cfs_quota_us").read_text() == str(plan.cpu_quota_us)
    assert (cpu / "cpu.cfs_period_us").read_text() == str(plan.cpu_period_us)
    assert (mounts["pids"] / plan.name / "pids.max").read_text() == str(plan.pids_max)
    assert step.procs_files() == sorted(m / plan.name / "cgroup.procs" for m in mounts.values())


def test_v1_without_memsw_and_unlimited_cpu(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    layout = cgroups.CgroupLayout(mode="v1", v1=mounts)
    step = cgroups.CgroupStep.from_plan(_plan(1, quota=0), layout)
    step.do()
    assert not (mounts["memory"] / LEAF / "memory.memsw.limit_in_bytes").exists()
    assert (mounts["cpu"] / LEAF / "cpu.cfs_quota_us").read_text() == "-1"


def test_an_existing_cgroup_is_refused_not_adopted(tmp_path: Path) -> None:
    mounts = {c: tmp_path / c for c in ("memory", "cpu", "pids")}
    (mounts["cpu"] / LEAF).mkdir(parents=True)
    (mounts["cpu"] / LEAF / "cpu.cfs_quota_us").write_text("12345")
    step = cgroups.CgroupStep.from_plan(_plan(1), cgroups.CgroupLayout(mode="v1", v1=mounts))
    with pytest.raises(SandboxError, match="already exists"):
        step.do()
    assert (mounts["cpu"] / LEAF / "cpu.cfs_quota_us").read_text() == "12345"


def test_v2_enables_controllers_in_parents(tmp_path: Path) -> None:
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory pids io\n")
    (root / "cgroup.subtree_control").write_text("memory\n")  # already enabled: must not be re-requested
    layout = cgroups.CgroupLayout(mode="v2", unified=root, v2_controllers=frozenset({"cpu", "memory", "pids", "io"}))
    plan = _plan(2)
    step = cgroups.CgroupStep.from_plan(plan, layout)
    step.do()
    assert (root / "cgroup.subtree_control").read_text() == "+cpu +pids"
    assert (root / "sealbox" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (root / "sealbox" / SID / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    leaf = root / plan.name
    assert (leaf / "memory.max").read_text() == str(plan.memory_bytes)
    assert (leaf / "cpu.max").read_text() == f"{plan.cpu_quota_us} {plan.cpu_period_us}"
    assert (leaf / "pids.max").read_text() == str(plan.pids_max)
    assert not (leaf / "memory.swap.max").exists()  # only written when the kernel offers it
    assert step.dirs() == [leaf]


def test_plan_must_match_host(tmp_path: Path) -> None:
    layout = cgroups.CgroupLayout(mode="hybrid", v1={c: tmp_path / c for c in ("memory", "cpu")})
    with pytest.raises(SandboxError, match="missing: pids"):
        cgroups.CgroupStep.from_plan(_plan(1), layout)
    with pytest.raises(SandboxError, match="v2 but this host uses cgroup v1"):
        cgroups.CgroupStep.from_plan(_plan(2), layout)


def test_kill_all_sigkills_listed_pids_and_uses_cgroup_kill(tmp_path: Path) -> None:
    d = tmp_path / "leaf"
    d.mkdir()
    (d / "cgroup.kill").write_text("")
    child = subprocess.Popen(["sleep", "60"])
    try:
        (d / "cgroup.procs").write_text(f"{child.pid}\n")
        survivors = cgroups.kill_all([d], attempts=2, delay=0.01)
        # a stand-in file keeps listing the pid (cgroupfs would drop it), so it is reported as a survivor
        assert survivors == [child.pid]
        assert child.wait(timeout=5) == -signal.SIGKILL
        assert (d / "cgroup.kill").read_text() == "1"
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()


def test_plan_for_gives_one_core_per_vcpu() -> None:
    layout = cgroups.CgroupLayout(mode="v1", v1={c: Path("/x") for c in ("memory", "cpu", "pids")})
    p = cgroups.plan_for("n1", layout, state_id=SID, memory_bytes=1 << 30, cpus=3, pids_max=128)
    assert (p.name, p.version, p.cpu_quota_us, p.cpu_period_us) == (f"sealbox/{SID}/n1", 1, 300_000, 100_000)
