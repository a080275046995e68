"""What the SDK keeps in a sandbox record: labels (shown by ps/inspect, filtered by list) and a holder process
whose death makes a running sandbox `orphaned`, which gc removes (pool members of a crashed owner)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox import gc, planning, status
from sealbox.sandbox.model import check_labels, parse_labels
from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time

LIVE, DEAD = (1001, 7), (1002, 8)


def alive(pid: int | None, start: int | None) -> bool:
    return (pid, start) == LIVE


def rec(holder: tuple[int, int] | None, **kw: Any) -> SandboxRecord:
    r = SandboxRecord(name="box", status="running", created_at=time.time() - 5, **kw)
    r.vmm = {"backend": "qemu", "accel": "tcg", "pid": LIVE[0], "start_time": LIVE[1]}
    if holder:
        r.holder_pid, r.holder_start = holder
    return r


@pytest.mark.parametrize(("holder", "derived", "action"), [(None, "running", "keep"), (LIVE, "running", "keep"),
                                                           (DEAD, "orphaned", "remove")])
def test_holder_death_orphans_a_running_sandbox(holder: tuple[int, int] | None, derived: str, action: str) -> None:
    r = rec(holder)
    assert status.derive(r, alive) == derived
    act, why = gc.decide(r, alive)
    assert act == action
    if action == "remove":
        assert f"pid {DEAD[0]}" in why


def test_orphaned_is_listed_by_ps_without_all() -> None:
    assert "orphaned" in status.ACTIVE  # its VM still runs: `ps` must show it


def test_a_dead_vmm_is_exited_even_with_a_dead_holder() -> None:
    r = rec(DEAD)
    r.vmm["pid"] = DEAD[0]
    assert status.derive(r, alive) == "exited"


def test_gc_removes_orphans_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "_find", lambda state, keep, report, name=None: [])
    state = StateDir(tmp_path / "state")
    me = os.getpid()
    for name, holder in (("held", (me, process_start_time(me))), ("orphan", (999_999_91, 1))):
        r = SandboxRecord(name=name, status="running", created_at=time.time(),
                          vmm={"backend": "qemu", "pid": me, "start_time": process_start_time(me)})
        r.holder_pid, r.holder_start = holder
        state.reserve(r)
    report = gc.collect(state)
    assert state.names() == ["held"]
    assert any(line.startswith("sandbox orphan (the process holding it (pid 99999991) died)") for line in report.removed), report.removed


@pytest.mark.parametrize("labels", [{"": "x"}, {"-a": "x"}, {"a b": "x"}, {"k": "x\ny"}, {"k": "\x1b[31m"},
                                    {"k" * 64: "x"}, {"k": "v" * 257}, {f"k{i}": "v" for i in range(65)}])
def test_bad_labels_are_refused(labels: dict[str, str]) -> None:
    with pytest.raises(UsageError, match="label"):
        check_labels(labels)


def test_labels_parse_and_keep_order() -> None:
    assert parse_labels(["team=rl", "sealbox.pool=p1", "empty="]) == {"team": "rl", "sealbox.pool": "p1", "empty": ""}
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_labels(["novalue"])


def test_labels_live_in_the_spec_and_ps_shows_them(image_dir: Path) -> None:
    spec = planning.make_spec(name="lab", image_dir=image_dir, labels={"team": "rl", "run": "7"})
    assert spec.labels == {"team": "rl", "run": "7"}
    r = SandboxRecord(name="lab", status="stopped", created_at=time.time(), spec=spec.model_dump(mode="json"))
    row = status.row(r)
    assert row.labels == {"team": "rl", "run": "7"}
    head, line = status.table([row], now=r.created_at).splitlines()
    assert head.split()[-1] == "LABELS" and line.split()[-1] == "run=7,team=rl"
    assert "LABELS" not in status.table([status.row(SandboxRecord(name="n", status="stopped", created_at=0.0))])


def test_snapshot_hook_dispatches_to_the_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
    from sealbox.sdk import LocalHost, Sandbox

    state = StateDir(tmp_path / "state")
    state.reserve(SandboxRecord(name="q", status="running", created_at=time.time(), vmm={"backend": "qemu"}))
    state.reserve(SandboxRecord(name="f", status="running", created_at=time.time(), vmm={"backend": "firecracker"}))
    host = LocalHost(state.root)
    with pytest.raises(SandboxError, match="'q' is exited; only a running sandbox can be snapshotted"):  # its VMM is gone
        Sandbox("q", host).snapshot()
    seen: list[tuple[str, Path, bool]] = []
    part = SimpleNamespace(size=1)

    def take(self: Any, record: SandboxRecord, dest: Path, resume: bool = True) -> SimpleNamespace:
        seen.append((record.name, dest, resume))
        return SimpleNamespace(vmstate=part, memory=part, drives=[], warning="")

    monkeypatch.setattr(FirecrackerBackend, "snapshot", take)
    assert Sandbox("f", host).snapshot(tmp_path / "snap", resume=False) == tmp_path / "snap"
    assert seen == [("f", tmp_path / "snap", False)]
    default = Sandbox("f", host).snapshot()
    assert default.parent == state.root / "snapshots" and default.name.startswith("f-")
