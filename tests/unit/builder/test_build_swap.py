"""The output swap is atomic: at every moment the output path holds a complete old or a complete new tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sealbox.util import atomic

READER = """
import os, sys, time
final = sys.argv[1]
missing = partial = seen = 0
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        fd = os.open(final, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        missing += 1
        continue
    try:
        names = set(os.listdir(fd))
        # a tree swapped out while we listed it is being removed: only a partial tree still AT the path counts
        if names != {"a", "b", "manifest.json"} and os.stat(final).st_ino == os.fstat(fd).st_ino:
            partial += 1
        seen += 1
    except FileNotFoundError:
        missing += 1
    finally:
        os.close(fd)
print(missing, partial, seen)
"""


def _fill(d: Path, gen: int) -> None:
    for n in ("a", "b", "manifest.json"):
        (d / n).write_text(f"{gen}\n")


def test_output_path_never_disappears_during_swaps(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with atomic.staged_dir(final) as stage:
        _fill(stage, 0)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(final), "4"], stdout=subprocess.PIPE, text=True)
    gen = 0
    while reader.poll() is None:
        gen += 1
        with atomic.staged_dir(final) as stage:
            _fill(stage, gen)
    missing, partial, seen = map(int, reader.stdout.read().split())
    assert seen > 0 and gen > 10
    assert missing == 0 and partial == 0, f"{missing} reads found no output, {partial} a partial one ({gen} swaps)"
    assert (final / "a").read_text() == f"{gen}\n"
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or old directory left


def test_a_crash_in_the_middle_of_the_swap_leaves_a_complete_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out"
    with atomic.staged_dir(final) as stage:
        _fill(stage, 1)
    real = os.rename
    calls = []

    def crash_after_first(src, dst, *a, **kw):  # the process dies between two renames
        calls.append((src, dst))
        if len(calls) > 1:
            raise SystemExit("killed")
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", crash_after_first)
    monkeypatch.setattr(os, "replace", crash_after_first)
    try:
        with atomic.staged_dir(final) as stage:
            _fill(stage, 2)
    except SystemExit:
        pass
    monkeypatch.undo()
    assert sorted(os.listdir(final)) == ["a", "b", "manifest.json"]
    assert (final / "a").read_text() in ("1\n", "2\n")
