"""Status derivation (ps), gc decisions, and gc over real record files with a stand-in step kind.

gc's sweep of host leftovers is not mocked anywhere: it runs against real namespaces, veths, nft
tables, cgroups, mounts and jails in tests/integration/runtime/test_rt_gc_leftovers.py. Here it is
switched off, so these tests cover the record side alone."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from sealbox.sandbox import gc, status
from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
from sealbox.sandbox.steps import Step, StepEntry


class StandInStep(Step):
    """STAND-IN host resource for tests: a marker file; undo removes it (idempotent)."""

    kind = "test.standin-file"
    path: str

    def do(self) -> dict[str, Any]:
        Path(self.path).write_text("x")
        return {}

    def undo(self, outputs: dict[str, Any]) -> None:
        Path(self.path).unlink(missing_ok=True)


LIVE = (1001, 7)
DEAD = (1002, 8)


def alive(pid: int | None, start: int | None) -> bool:
    return (pid, start) == LIVE


def rec(status_: str, *, owner: tuple[int, int] | None = None, vmm: tuple[int, int] | None = None, **kw: Any) -> SandboxRecord:
    r = SandboxRecord(name=kw.pop("name", "box"), status=status_, created_at=time.time() - 90, **kw)
    if owner:
        r.owner_pid, r.owner_start = owner
    if vmm:
        r.vmm = {"backend": "qemu", "accel": "tcg", "pid": vmm[0], "start_time": vmm[1]}
    return r


@pytest.mark.parametrize(
    ("record", "derived", "action"),
    [
        (rec("creating", owner=LIVE), "creating", "keep"),
        (rec("creating", owner=DEAD), "abandoned", "remove"),
        (rec("creating"), "abandoned", "remove"),  # no owner recorded at all
        (rec("running", vmm=LIVE), "running", "keep"),
        (rec("running", vmm=DEAD), "exited", "remove"),
        (rec("running"), "exited", "remove"),  # VMM pid never recorded
        (rec("stopped", vmm=DEAD), "stopped", "keep"),
        (rec("failed"), "failed", "remove"),
        (rec("removing", vmm=LIVE), "removing", "remove"),
        (rec("weird-new-status"), "failed", "remove"),
    ],
)
def test_status_and_gc_decision(record: SandboxRecord, derived: str, action: str) -> None:
    assert status.derive(record, alive) == derived
    assert gc.decide(record, alive)[0] == action


def test_real_liveness_uses_start_time() -> None:
    me = os.getpid()
    r = rec("running", vmm=(me, process_start_time(me) or 0))
    assert status.derive(r) == "running"
    r.vmm["start_time"] = (process_start_time(me) or 0) + 1  # same pid, other process: a reused pid
    assert status.derive(r) == "exited"


def test_ps_rows_and_table() -> None:
    r = rec("running", vmm=LIVE, spec={"cpus": 2, "memory_mib": 384}, network={"guest_ip": "10.213.0.6"},
            image={"name": "default"})
    row = status.row(r, alive)
    assert (row.status, row.vmm, row.accel, row.address, row.cpus, row.memory_mib) == ("running", "qemu", "tcg", "10.213.0.6", 2, 384)
    text = status.table([row], now=r.created_at + 90)
    head, line = text.splitlines()
    assert head.split() == ["NAME", "STATUS", "VMM", "ACCEL", "ADDRESS", "CPUS", "MEM", "IMAGE", "CREATED", "PORTS"]
    assert line.split() == ["box", "running", "qemu", "tcg", "10.213.0.6", "2", "384M", "default", "1m", "ago"]


def _with_steps(state: StateDir, record: SandboxRecord, tmp: Path) -> Path:
    marker = tmp / f"{record.name}.res"
    step = StandInStep(path=str(marker))
    step.do()
    record.steps.entries.append(StepEntry(kind=step.kind, params=step.model_dump(), state="done"))
    state.reserve(record)
    (state.root / "locks" / f"{record.name}.lock").touch()
    return marker


@pytest.fixture
def no_host_leftovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "_find", lambda state, keep, report, name=None: [])


def test_gc_replays_dead_records_and_keeps_live_ones(tmp_path: Path, no_host_leftovers: None) -> None:
    state = StateDir(tmp_path / "state")
    me = os.getpid()
    live = (me, process_start_time(me))
    m_dead = _with_steps(state, rec("running", name="crashed", vmm=(999_999_99, 1)), tmp_path)
    m_abandoned = _with_steps(state, rec("creating", name="halfmade", owner=(999_999_98, 1)), tmp_path)
    m_live = _with_steps(state, rec("running", name="live", vmm=live), tmp_path)  # type: ignore[arg-type]
    m_stopped = _with_steps(state, rec("stopped", name="stopped"), tmp_path)
    report = gc.collect(state)
    assert sorted(state.names()) == ["live", "stopped"]
    assert not m_dead.exists() and not m_abandoned.exists()
    assert m_live.exists() and m_stopped.exists()
    assert any("crashed" in r and "VMM" in r for r in report.removed)
    assert any("halfmade" in r and "died" in r for r in report.removed)
    assert not report.problems


def test_gc_dry_run_changes_nothing(tmp_path: Path, no_host_leftovers: None) -> None:
    state = StateDir(tmp_path / "state")
    marker = _with_steps(state, rec("failed", name="broken"), tmp_path)
    report = gc.collect(state, dry_run=True)
    assert marker.exists() and state.names() == ["broken"]
    assert report.removed[0].startswith("sandbox broken") and "would undo test.standin-file" in report.removed[0]


def test_gc_skips_a_sandbox_whose_lock_is_held(tmp_path: Path, no_host_leftovers: None) -> None:
    state = StateDir(tmp_path / "state")
    marker = _with_steps(state, rec("creating", name="busy", owner=(999_999_97, 1)), tmp_path)
    with state.lock("busy"):
        report = gc.collect(state)
    assert marker.exists() and state.names() == ["busy"]
    assert report.skipped and "busy" in report.skipped[0]


def test_gc_leaves_records_it_cannot_read(tmp_path: Path, no_host_leftovers: None) -> None:
    state = StateDir(tmp_path / "state")
    state.ensure()
    (state.sandboxes / "garbled").mkdir()
    (state.sandboxes / "garbled" / "record.json").write_text("{not json")
    report = gc.collect(state)
    assert state.names() == ["garbled"]
    assert "rm --force garbled" in report.skipped[0]
