"""`gc --orphans`: what a deleted state dir left on the host (its records gone with it) is removed, and only that.

Before it, such objects were reported as foreign by every state dir's gc and stayed forever (three namespaces,
veths, nft tables and cgroups of an interrupted test outlived it on this machine)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
from test_net_ownership import ALL, _nat, _objects

from sealbox.sandbox import gc
from sealbox.sandbox.host.registry import RUN_ENV, Registry
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import undo_steps

pytestmark = pytest.mark.integration



def test_gc_orphans_removes_what_a_deleted_state_dir_left_and_nothing_else(
        prefix: str, run_dir: Path, tmp_path: Path, used: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(RUN_ENV, str(run_dir))  # gc reads the host registry from the environment, as the CLI does
    gone, alive, mine = StateDir(tmp_path / "gone"), StateDir(tmp_path / "alive"), StateDir(tmp_path / "mine")
    ng, na = f"{prefix}-og", f"{prefix}-oa"
    used += [ng, na]
    pool = f"10.34.{random.randrange(128, 256)}.0/24"
    for st in (gone, alive, mine):
        st.ensure()
    log_g, _ = _nat(gone, ng, pool, run_dir)
    log_a, _ = _nat(alive, na, pool, run_dir)
    try:
        shutil.rmtree(gone.root)  # deleted with its sandbox set up: records gone, host objects left
        assert _objects(gone, ng, run_dir) == ALL
        assert Registry(run_dir).gone_states() == {gone.id: str(gone.root)}

        plain = gc.collect(mine)
        assert _objects(gone, ng, run_dir) == ALL and any(f"sealbox-{ng}" in f for f in plain.foreign)

        dry = gc.collect(mine, orphans=True, dry_run=True)
        assert _objects(gone, ng, run_dir) == ALL and any(f"would remove orphan netns sealbox-{ng}" in r for r in dry.removed)

        report = gc.collect(mine, orphans=True)
        assert not report.problems, report.problems
        assert _objects(gone, ng, run_dir) == []
        assert _objects(alive, na, run_dir) == ALL  # a living state dir's sandbox is untouched
        assert not any(ng in f for f in report.foreign) and any(na in f for f in report.foreign)
        assert Registry(run_dir).gone_states() == {}  # its note goes once nothing of it is left

        from sealbox.cli.main import main

        assert main(["gc", "--orphans", "--dry-run", "--state-dir", str(mine.root)]) == 0
        out = capsys.readouterr().out
        assert "nothing to remove" in out
    finally:
        undo_steps(log_g, lambda: None)
        assert undo_steps(log_a, lambda: None) == []


def test_a_state_dir_that_is_back_is_not_orphaned(prefix: str, run_dir: Path, tmp_path: Path, used: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_ENV, str(run_dir))
    back, mine = StateDir(tmp_path / "back"), StateDir(tmp_path / "mine")
    name = f"{prefix}-ob"
    used.append(name)
    back.ensure()
    log, _ = _nat(back, name, f"10.34.{random.randrange(128, 256)}.0/24", run_dir)
    try:
        shutil.rmtree(back.root)
        back.ensure()  # the same path again (a remount, a restored backup): its own gc owns these
        assert Registry(run_dir).gone_states() == {}
        gc.collect(mine, orphans=True)
        assert _objects(back, name, run_dir) == ALL
    finally:
        assert undo_steps(log, lambda: None) == []
