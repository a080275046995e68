"""Sandbox cgroups on a systemd host: the choice of manager, the scope's argv, and what each VMM launch
gets. This machine has no systemd as PID 1, so nothing here talks to systemd: the cgroup trees are
STAND-IN directories and systemd-run/systemctl are never executed (their argv is checked instead)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups, systemd_scope
from sealbox.sandbox.model import CgroupPlan

V2 = cgroups.CgroupLayout(mode="v2", unified=Path("/sys/fs/cgroup"), v2_controllers=frozenset({"cpu", "memory", "pids", "io"}))
HYBRID = cgroups.CgroupLayout(mode="hybrid", v1={c: Path(f"/sys/fs/cgroup/{c}") for c in ("cpu", "memory", "pids")},
                              unified=Path("/sys/fs/cgroup/unified"))
SCOPE_ARGV = [
    "/usr/bin/systemd-run", "--scope", "--quiet", "--collect", "--unit=sealbox-s0-box1.scope", "--slice=sealbox.slice",
    "--property=Delegate=yes", f"--property=MemoryMax={640 << 20}", "--property=MemorySwapMax=0",
    "--property=CPUQuota=200%", "--property=CPUQuotaPeriodSec=100000us", "--property=TasksMax=300", "--",
]


@pytest.fixture(autouse=True)
def systemd_run_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(systemd_scope.shutil, "which", lambda name: f"/usr/bin/{name}")


def _plan(layout: cgroups.CgroupLayout, systemd: bool) -> CgroupPlan:
    return cgroups.plan_for("box1", layout, state_id="s0", memory_bytes=640 << 20, cpus=2, pids_max=300, systemd=systemd)


def test_choice_of_manager() -> None:
    assert systemd_scope.choose_manager(2, systemd=True) == "systemd"
    assert systemd_scope.choose_manager(2, systemd=False) == "cgroupfs"  # nobody else manages that tree
    assert systemd_scope.choose_manager(1, systemd=True) == "cgroupfs"  # v1/hybrid: the path that runs here
    sd = _plan(V2, systemd=True)
    assert (sd.manager, sd.name, sd.version) == ("systemd", "sealbox.slice/sealbox-s0-box1.scope", 2)
    assert (_plan(HYBRID, systemd=True).manager, _plan(HYBRID, systemd=True).name) == ("cgroupfs", "sealbox/s0/box1")
    assert _plan(V2, systemd=False).name == "sealbox/s0/box1"
    assert cgroups.jailer_parent(sd) == "sealbox.slice/sealbox-s0-box1.scope"
    assert cgroups.jailer_parent(_plan(HYBRID, systemd=False)) == "sealbox/s0"


def test_systemd_booted_is_sd_booted(tmp_path: Path) -> None:
    assert not systemd_scope.systemd_booted(tmp_path / "system")
    (tmp_path / "system").mkdir()
    assert systemd_scope.systemd_booted(tmp_path / "system")
    assert systemd_scope.systemd_booted() is Path("/run/systemd/system").is_dir()  # here: False (no systemd as PID 1)


def test_scope_argv() -> None:
    step = cgroups.CgroupStep.from_plan(_plan(V2, systemd=True), V2)
    assert step.launch_prefix() == SCOPE_ARGV
    assert not step.joins() and step.unit == "sealbox-s0-box1.scope"
    unlimited = systemd_scope.scope_argv("u.scope", memory_bytes=1, cpu_quota_us=0, cpu_period_us=100_000, pids_max=16)
    assert not [a for a in unlimited if "CPUQuota" in a]
    odd = systemd_scope.scope_argv("u.scope", memory_bytes=1, cpu_quota_us=150_000, cpu_period_us=50_000, pids_max=16)
    assert "--property=CPUQuota=300%" in odd and "--property=CPUQuotaPeriodSec=50000us" in odd
    assert cgroups.CgroupStep.from_plan(_plan(HYBRID, systemd=False), HYBRID).launch_prefix() == []


def _tree(tmp_path: Path) -> cgroups.CgroupLayout:
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("")
    return cgroups.CgroupLayout(mode="v2", unified=root, v2_controllers=V2.v2_controllers)


def test_systemd_step_creates_nothing_and_never_writes_the_root(tmp_path: Path) -> None:
    layout = _tree(tmp_path)
    step = cgroups.CgroupStep.from_plan(_plan(layout, systemd=True), layout)
    out = step.do()
    scope = layout.unified / "sealbox.slice" / "sealbox-s0-box1.scope"  # type: ignore[operator]
    assert out == {"dirs": [str(scope)]} and step.dirs() == [scope]
    assert (layout.unified / "cgroup.subtree_control").read_text() == ""  # type: ignore[operator]
    assert sorted(p.name for p in layout.unified.iterdir()) == ["cgroup.subtree_control"]  # type: ignore[union-attr]
    # contrast: the cgroupfs path on the same v2 tree enables controllers in the root
    cgroups.CgroupStep.from_plan(_plan(layout, systemd=False), layout).do()
    assert "+memory" in (layout.unified / "cgroup.subtree_control").read_text()  # type: ignore[operator]


def test_systemd_step_refuses_an_existing_scope_and_then_leaves_it_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _tree(tmp_path)
    step = cgroups.CgroupStep.from_plan(_plan(layout, systemd=True), layout)
    scope = step.dirs()[0]
    scope.mkdir(parents=True)
    calls: list[list[str]] = []
    killed: list[list[Path]] = []
    monkeypatch.setattr(systemd_scope.subprocess, "run", lambda argv, **kw: calls.append(argv))
    monkeypatch.setattr(cgroups, "kill_all", lambda dirs: killed.append(dirs) or [])  # kill_all itself: test_qemu_cgroups
    with pytest.raises(SandboxError, match="already exists"):
        step.do()
    step.undo({})  # the refused step's undo: someone else's scope is not touched
    assert killed == [] and calls == []
    step.undo({"dirs": [str(scope)]})  # our own scope: everything in it is killed, then systemd stops the unit
    assert killed == [[scope]] and calls == [["systemctl", "stop", "--no-block", "sealbox-s0-box1.scope"]]
    assert scope.is_dir()  # the directory is systemd's to remove


def test_qemu_start_goes_through_the_scope(make_plan: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from sealbox.sandbox.vmm import qemu_launch
    from sealbox.sandbox.vmm.qemu import QemuCommand

    monkeypatch.setattr(cgroups, "detect", lambda: V2)
    plan = make_plan(name="box1")
    plan = plan.model_copy(update={"cgroup": _plan(V2, systemd=True)})
    cmd = QemuCommand(mode="microvm", qemu_argv=["qemu"], argv=["/usr/bin/setpriv", "--reuid", "995", "--regid", "994"], fds=[],
                      run_dir=str(tmp_path / "run"),
                      qmp_socket=str(tmp_path / "qmp"), vmm_log=str(tmp_path / "log"))
    cg, _rundir, start = qemu_launch.steps(plan, cmd)
    assert cg.kind == "cgroup" and start.launcher == SCOPE_ARGV and start.join_cgroup is False  # type: ignore[attr-defined]
    assert start.cgroup_dirs() == [Path("/sys/fs/cgroup/sealbox.slice/sealbox-s0-box1.scope")]  # type: ignore[attr-defined]
    assert "jailed as 995" in start.describe()
    hybrid = make_plan(name="box1")
    monkeypatch.setattr(cgroups, "detect", lambda: HYBRID)
    _cg, _rd, start1 = qemu_launch.steps(hybrid, cmd)
    assert start1.launcher == [] and start1.join_cgroup is True  # type: ignore[attr-defined]


def test_firecracker_jailer_in_the_scope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "firecracker"))
    from fc_testlib import make_plan as fc_plan

    from sealbox.sandbox.vmm.firecracker import jailer as J
    from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
    from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings

    monkeypatch.setattr(cgroups, "detect", lambda: V2)
    backend = FirecrackerBackend(FirecrackerSettings(firecracker=Path("/fc"), jailer=Path("/jl")))
    plan = fc_plan(tmp_path, name="box1", cgroup_version=2)
    plan = plan.model_copy(update={"cgroup": _plan(V2, systemd=True)})
    argv = J.jailer_argv(backend.jailer_args(plan))
    assert argv[argv.index("--cgroup-version"):argv.index("--chroot-base-dir")] == [
        "--cgroup-version", "2", "--parent-cgroup", "sealbox.slice/sealbox-s0-box1.scope"]  # no --cgroup: the scope has the limits
    steps = backend.describe(plan)["steps"]
    assert [s["kind"] for s in steps] == ["cgroup", "firecracker-stage", "firecracker-jailer"]
    assert steps[2]["params"]["launcher"] == SCOPE_ARGV
    assert backend.describe(plan)["jailer_argv"][:len(SCOPE_ARGV) + 1] == [*SCOPE_ARGV, "/jl"]
