"""Why an exited sandbox exited: the OOM kill count of its cgroup, on cgroup v1 and v2, read from the
record alone. STAND-IN cgroup trees (plain files with the kernel's formats); the real OOM kill is
tests/integration/runtime/test_rt_faults.py::test_memory_limit_below_what_the_guest_touches_oom_kills_the_vmm."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sealbox.sandbox import control, status
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.state import SandboxRecord, StateDir
from sealbox.sandbox.steps import StepEntry

V2_EVENTS = "low 0\nhigh 0\nmax 17\noom 2\noom_kill {n}\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"


def _v2(tmp_path: Path, n: int) -> list[Path]:
    d = tmp_path / "unified" / "sealbox" / "box"
    d.mkdir(parents=True)
    (d / "memory.events").write_text(V2_EVENTS.format(n=n))
    return [d]


def _v1(tmp_path: Path, n: int) -> list[Path]:
    dirs = [tmp_path / c / "sealbox" / "box" for c in ("cpu", "memory", "pids")]
    for d in dirs:
        d.mkdir(parents=True)
    (dirs[1] / "memory.oom_control").write_text(V1_OOM_CONTROL.format(n=n))
    return dirs


@pytest.mark.parametrize("tree", [_v1, _v2])
def test_oom_kills_both_versions(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    assert cgroups.oom_kills(tree(tmp_path / "a", 1)) == 1
    assert cgroups.oom_kills(tree(tmp_path / "b", 0)) == 0
    assert cgroups.oom_kills([tmp_path / "gone"]) is None


def _record(dirs: list[Path], *, kind: str = "cgroup") -> SandboxRecord:
    r = SandboxRecord(name="box", status="running", created_at=time.time(), spec={"memory_mib": 256},
                      vmm={"backend": "qemu", "accel": "tcg", "pid": 1002, "start_time": 8})
    r.steps.entries.append(StepEntry(kind=kind, params={}, state="done", outputs={"dirs": [str(d) for d in dirs]}))
    return r


def dead(pid: int | None, start: int | None) -> bool:
    return False


@pytest.mark.parametrize("tree", [_v1, _v2])
def test_ps_shows_an_oom_killed_sandbox(tmp_path: Path, tree) -> None:  # type: ignore[no-untyped-def]
    row = status.row(_record(tree(tmp_path / "k", 1)), alive=dead)
    assert row.status == "exited" and row.reason is not None and row.reason.startswith("oom-killed")
    assert "exited (oom-killed)" in status.table([row])
    plain = status.row(_record(tree(tmp_path / "p", 0)), alive=dead)
    assert plain.status == "exited" and plain.reason is None and "(oom" not in status.table([plain])
    live = status.row(_record(tree(tmp_path / "l", 3)), alive=lambda p, s: True)
    assert live.status == "running" and live.reason is None  # a kill inside a running VM's cgroup is not an exit


def test_firecracker_jailer_cgroups_from_the_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox.vmm.firecracker import jailer as J

    (d,) = _v2(tmp_path, 1)
    seen: list[tuple[object, ...]] = []

    def dirs(version: int, ctrls: list[str], exec_name: str, jail_id: str, mountinfo: str | None = None,
             parent: str | None = None) -> list[Path]:
        seen.append((version, tuple(ctrls), exec_name, jail_id, parent))
        return [d]

    monkeypatch.setattr(J, "jailer_cgroup_dirs", dirs)
    r = _record([])
    r.steps.entries = [StepEntry(kind="firecracker-jailer", state="done", params={
        "cgroup_version": 2, "cgroup_controllers": ["memory"], "cgroup_parent": "sealbox",
        "layout": {"exec_name": "firecracker", "jail_id": "box", "chroot_base": "/srv/jailer"}})]
    assert status.row(r, alive=dead).reason is not None
    assert seen == [(2, ("memory",), "firecracker", "box", "sealbox")]
    r.steps.entries[0].params = {"garbage": True}  # a record written by someone else: no reason, no crash
    assert status.row(r, alive=dead).reason is None


def test_inspect_and_json_carry_the_reason(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    r = _record(_v2(tmp_path, 2))
    r.vmm["pid"] = 2**22 + 1  # no such process
    state.reserve(r)
    (row,) = control.ps(state, all_=True)
    assert row.model_dump()["reason"].startswith("oom-killed")
    assert control.inspect(state, "box")["exit_reason"].startswith("oom-killed")
