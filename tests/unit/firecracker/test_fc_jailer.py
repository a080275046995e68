"""The jailer command line, exactly as docs/jailer.md documents it, and the cgroups it creates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fc_testlib import make_plan

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.model import CgroupPlan
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings

# The usage block of docs/jailer.md (v1.16.1): required flags, then the optional ones in this order.
DOCUMENTED_ORDER = ["--id", "--exec-file", "--uid", "--gid", "--cgroup-version", "--cgroup", "--parent-cgroup",
                    "--chroot-base-dir", "--netns", "--resource-limit", "--daemonize", "--new-pid-ns"]
KNOWN_FLAGS = set(DOCUMENTED_ORDER)


def _flags(argv: list[str]) -> list[str]:
    head = argv[1: argv.index("--")] if "--" in argv else argv[1:]
    return [a for a in head if a.startswith("--")]


def test_exact_argv_cgroup_v1(tmp_path: Path) -> None:
    s = FirecrackerSettings(firecracker=Path("/opt/fc/firecracker"), jailer=Path("/opt/fc/jailer"))
    plan = make_plan(tmp_path, name="web-1", cpus=2, memory_mib=256, cgroup_version=1)
    argv = J.jailer_argv(FirecrackerBackend(s).jailer_args(plan))
    assert argv == [
        "/opt/fc/jailer", "--id", "web-1", "--exec-file", "/opt/fc/firecracker", "--uid", "64123", "--gid", "64123",
        "--cgroup-version", "1",
        "--cgroup", f"memory.limit_in_bytes={384 << 20}", "--cgroup", "cpu.cfs_period_us=100000",
        "--cgroup", "cpu.cfs_quota_us=200000", "--cgroup", "pids.max=256", "--parent-cgroup", "sealbox",
        "--chroot-base-dir", "/srv/jailer", "--netns", "/var/run/netns/sealbox-web-1",
        "--resource-limit", "no-file=4096", "--new-pid-ns",
        "--", "--api-sock", "/run/firecracker.socket", "--config-file", "/config.json",
    ]


def test_exact_argv_cgroup_v2_and_restore(tmp_path: Path) -> None:
    s = FirecrackerSettings(firecracker=Path("/fc"), jailer=Path("/jl"), chroot_base=Path("/var/lib/jail"), log_level="Info")
    plan = make_plan(tmp_path, name="x", cpus=1, memory_mib=128, cgroup_version=2, from_snapshot=tmp_path / "snap")
    argv = J.jailer_argv(FirecrackerBackend(s).jailer_args(plan))
    assert argv == [
        "/jl", "--id", "x", "--exec-file", "/fc", "--uid", "64123", "--gid", "64123", "--cgroup-version", "2",
        "--cgroup", f"memory.max={256 << 20}", "--cgroup", "cpu.max=100000 100000", "--cgroup", "pids.max=256",
        "--parent-cgroup", "sealbox", "--chroot-base-dir", "/var/lib/jail", "--netns", "/var/run/netns/sealbox-x",
        "--resource-limit", "no-file=4096", "--new-pid-ns",
        "--", "--api-sock", "/run/firecracker.socket", "--log-path", "/firecracker.log", "--level", "Info",
        "--show-level", "--metrics-path", "/firecracker.metrics",
    ]


def test_flags_follow_the_documented_order_with_every_option() -> None:
    a = J.JailerArgs(jailer=Path("/j"), exec_file=Path("/f"), jail_id="a-1", uid=10, gid=11, chroot_base=Path("/c"),
                     netns=Path("/var/run/netns/n"), cgroup_version=1, cgroups=(("cpuset.cpus", "0"),), no_file=64,
                     fsize=1 << 30, daemonize=True, new_pid_ns=True, firecracker_args=("--api-sock", "/s"))
    flags = _flags(J.jailer_argv(a))
    assert set(flags) <= KNOWN_FLAGS
    positions = [DOCUMENTED_ORDER.index(f) for f in flags]
    assert positions == sorted(positions)
    assert J.jailer_argv(a)[-3:] == ["--", "--api-sock", "/s"]


def test_without_optional_parts_there_is_no_separator() -> None:
    a = J.JailerArgs(jailer=Path("/j"), exec_file=Path("/f"), jail_id="a", uid=1, gid=1, chroot_base=Path("/c"),
                     netns=None, cgroup_version=2, new_pid_ns=False)
    assert J.jailer_argv(a) == ["/j", "--id", "a", "--exec-file", "/f", "--uid", "1", "--gid", "1",
                                "--cgroup-version", "2", "--chroot-base-dir", "/c"]


@pytest.mark.parametrize("bad", ["", "a" * 65, "under_score", "dot.ted", "slash/x", "ä"])
def test_bad_ids(bad: str) -> None:
    with pytest.raises(UsageError, match="1-64 ASCII letters"):
        J.check_jail_id(bad)
    assert J.check_jail_id("A-" + "z" * 62) == "A-" + "z" * 62


def test_argv_errors() -> None:
    base = dict(jailer=Path("/j"), exec_file=Path("/f"), jail_id="a", uid=5, gid=5, chroot_base=Path("/c"), netns=None, cgroup_version=1)
    with pytest.raises(SandboxError, match="as root"):
        J.jailer_argv(J.JailerArgs(**{**base, "uid": 0}))
    with pytest.raises(SandboxError, match="invalid cgroup setting"):
        J.jailer_argv(J.JailerArgs(**base, cgroups=(("memory.max", "1=2"),)))
    with pytest.raises(SandboxError, match="invalid cgroup setting"):
        J.jailer_argv(J.JailerArgs(**base, cgroups=(("../x.y", "1"),)))
    with pytest.raises(SandboxError, match="set by the jailer itself"):
        J.jailer_argv(J.JailerArgs(**base, firecracker_args=("--id=other",)))


def test_cgroup_properties_edge_values() -> None:
    cg = CgroupPlan(version=2, name="x", memory_bytes=1 << 30, cpu_quota_us=0, pids_max=64)
    assert dict(J.cgroup_properties(cg))["cpu.max"] == "max 100000"
    assert dict(J.cgroup_properties(cg.model_copy(update={"version": 1})))["cpu.cfs_quota_us"] == "-1"
    with pytest.raises(SandboxError, match="memory_bytes=0"):
        J.cgroup_properties(cg.model_copy(update={"memory_bytes": 0}))
    with pytest.raises(SandboxError, match="below the kernel minimum"):
        J.cgroup_properties(cg.model_copy(update={"cpu_quota_us": 500}))
    with pytest.raises(SandboxError, match="cpu_period_us"):
        J.cgroup_properties(cg.model_copy(update={"cpu_period_us": 10}))
    assert J.controllers(J.cgroup_properties(cg.model_copy(update={"version": 1}))) == ["cpu", "memory", "pids"]


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"


def test_cgroup_dirs_the_jailer_creates() -> None:
    dirs = J.jailer_cgroup_dirs(1, ["cpu", "memory", "pids"], "firecracker", "vm1", HYBRID)
    assert dirs == [Path("/sys/fs/cgroup/cpu,cpuacct/firecracker/vm1"), Path("/sys/fs/cgroup/memory/firecracker/vm1"),
                    Path("/sys/fs/cgroup/pids/firecracker/vm1")]
    assert J.jailer_cgroup_dirs(2, ["cpu"], "firecracker", "vm1", HYBRID) == [Path("/sys/fs/cgroup/unified/firecracker/vm1")]
    assert J.jailer_cgroup_dirs(2, [], "fc-1.16", "vm1", PURE_V2) == [Path("/sys/fs/cgroup/fc-1.16/vm1")]
    assert J.jailer_cgroup_dirs(1, ["memory"], "firecracker", "vm1", PURE_V2) == []


def test_jail_is_named_after_the_canonical_exec_file(tmp_path: Path) -> None:
    real = tmp_path / "firecracker-v1.16.1-x86_64"
    real.write_bytes(b"\x7fELF")
    os.symlink(real, tmp_path / "firecracker")
    s = FirecrackerSettings(firecracker=tmp_path / "firecracker")
    assert s.exec_name() == "firecracker-v1.16.1-x86_64"
    lay = FirecrackerBackend(s).layout(make_plan(tmp_path, name="n1"))
    assert lay.root == Path("/srv/jailer/firecracker-v1.16.1-x86_64/n1/root")
    assert lay.pid_file == lay.root / "firecracker-v1.16.1-x86_64.pid"
    assert lay.api_sock == lay.root / "run" / "firecracker.socket"
    assert FirecrackerSettings(firecracker=tmp_path / "absent").exec_name() == "absent"
