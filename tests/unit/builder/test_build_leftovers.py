"""Work directories are flocked by their build; a sweep removes only those whose build is gone."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

from sealbox.builder.output import WorkDir, sweep_work_dirs


def _die_holding_a_work_dir(base: str, conn) -> None:  # type: ignore[no-untyped-def]
    wd = WorkDir(Path(base))
    (wd.path / "tree").mkdir()
    (wd.path / "tree/file").write_text("x")
    conn.send(str(wd.path))
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: what a SIGKILLed build leaves


def test_sweep_removes_dead_work_dirs_and_keeps_live_ones(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_die_holding_a_work_dir, args=(str(tmp_path), child))
    p.start()
    dead = Path(parent.recv())
    p.join(30)
    live = WorkDir(tmp_path)
    kept = WorkDir(tmp_path)
    kept.close(keep=True)
    other = tmp_path / "sealbox-build-not-ours"  # no lock file: not a build directory we made
    other.mkdir()
    assert dead.exists()
    assert sweep_work_dirs(tmp_path) == [dead]
    assert not dead.exists() and live.path.is_dir() and kept.path.is_dir() and other.is_dir()
    live.close()
    assert not live.path.exists()
