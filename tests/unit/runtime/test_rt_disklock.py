"""The machine-wide disk table (host/disklock.py): a rw --disk belongs to one sandbox at a time, readers share, a
refusal is one line naming the holder, undo releases only its own claim, and gc finds a claim nobody records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sealbox.sandbox.host import leftovers
from sealbox.sandbox.host.disklock import DiskClaimStep, DiskTable, Holder, claim_steps, disk_key
from sealbox.sandbox.model import DiskSpec
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import StepLog, StepRefused, apply_steps, undo_steps


def holder(state: StateDir, name: str, mode: str, path: Path) -> Holder:
    return Holder(owner=state.mark(name), state_dir=str(state.root), sandbox=name, mode=mode, path=str(path))  # type: ignore[arg-type]


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    p = tmp_path / "data.img"
    p.write_bytes(b"\0" * 4096)
    return p


def test_one_writer_or_many_readers(tmp_path: Path, state: StateDir, disk: Path) -> None:
    table, key = DiskTable(tmp_path / "run"), disk_key(disk)
    table.claim(key, holder(state, "a", "rw", disk))
    table.claim(key, holder(state, "a", "rw", disk))  # idempotent (a replayed step)
    for name, mode in (("b", "rw"), ("b", "ro")):
        with pytest.raises(StepRefused) as e:
            table.claim(key, holder(state, name, mode, disk))
        assert str(e.value).splitlines() == [str(e.value)]
        assert f"--disk {disk} is in use (rw) by sandbox 'a' of the state dir {state.root}" in str(e.value)
    assert table.release(key, state.mark("b")) is False  # never held: nothing of a's goes
    assert table.release(key, state.mark("a")) is True and not table.path(key).exists()
    table.claim(key, holder(state, "r1", "ro", disk))
    table.claim(key, holder(state, "r2", "ro", disk))
    with pytest.raises(StepRefused, match=r"in use \(ro\) by sandbox 'r1'"):
        table.claim(key, holder(state, "w", "rw", disk))
    assert [h.sandbox for _k, h in table.holds()] == ["r1", "r2"]


def test_two_paths_to_one_disk_are_one_disk(tmp_path: Path, disk: Path) -> None:
    (tmp_path / "link").symlink_to(disk)
    os.link(disk, tmp_path / "hard")
    (tmp_path / "other.img").write_bytes(b"\0")
    assert disk_key(disk) == disk_key(tmp_path / "link") == disk_key(tmp_path / "hard") != disk_key(tmp_path / "other.img")
    assert disk_key("/dev/null").startswith("f")  # a character device is not a block device: its inode is the key


def test_a_refused_claim_is_never_undone(tmp_path: Path, state: StateDir, disk: Path) -> None:
    run = str(tmp_path / "run")
    mine = StepLog()
    apply_steps(claim_steps((DiskSpec(path=disk),), state.mark("a"), str(state.root), "a", run), mine, lambda: None)
    theirs = StepLog()
    with pytest.raises(StepRefused):
        apply_steps(claim_steps((DiskSpec(path=tmp_path / "data.img", readonly=True),), state.mark("b"), str(state.root), "b", run),
                    theirs, lambda: None)
    assert [e.state for e in theirs.entries] == ["refused"]
    assert [h.sandbox for _k, h in DiskTable(run).holds()] == ["a"]  # b's failure took nothing of a's
    assert undo_steps(mine, lambda: None) == [] and DiskTable(run).holds() == []
    assert isinstance(DiskClaimStep.model_validate(mine.entries[0].params), DiskClaimStep)  # gc can rebuild it


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the other leftover finders list namespaces and nft tables)")
def test_gc_finds_a_claim_no_record_owns(tmp_path: Path, state: StateDir, disk: Path) -> None:
    run = tmp_path / "run"
    DiskTable(run).claim(disk_key(disk), holder(state, "lost", "rw", disk))
    found = [x for x in leftovers.find(state, keep=[], run_dir=run, problems=[]) if x.kind == "disk-claim"]
    assert [(x.sandbox, x.ours) for x in found] == [("lost", True)]
    leftovers.remove(found[0], run_dir=run)
    assert DiskTable(run).holds() == []
