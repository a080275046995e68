"""bob-logs, the delayed-log writer: nothing before the delay, everything after it, once, across crashes and restarts.
A fake clock, a fake fsync that can "crash", and a raw log written in conmon's k8s-file format by the test."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from bobguest import guest_root, load

bl = load("bob_logs")
bs = load("bob_shell")
DELAY = 120


def rec(text: str, tag: str = "F", stream: str = "stdout") -> bytes:
    return f"2026-12-01T03:00:00.000000000+00:00 {stream} {tag} {text}\n".encode()


class Crash(Exception):
    pass


class Guest:
    def __init__(self, base: Path) -> None:
        self.root = guest_root(base)
        (self.root / "persistent/.bob-work").mkdir()
        self.raw = self.root / bl.RAW
        self.out = self.root / bl.OUT
        self.now = 1000.0
        self.crash_on: int | None = None  # the fsync call (counted from 1) that "crashes" instead
        self.fsyncs = 0

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fsyncs == self.crash_on:
            raise Crash

    def writer(self, **kw: object) -> bl.Writer:
        w = bl.Writer(self.root, clock=lambda: self.now, sleep=lambda s: None, fsync=self.fsync, **kw)
        w.start()
        return w

    def emit(self, *records: bytes) -> None:
        with self.raw.open("ab") as f:
            f.write(b"".join(records))

    def delayed(self) -> bytes:
        return self.out.read_bytes() if self.out.exists() else b""


@pytest.fixture
def g(tmp_path: Path) -> Guest:
    return Guest(tmp_path)


def test_the_delay_comes_from_config_json(g: Guest) -> None:
    assert g.writer().delay == 120


def test_a_line_arrives_only_after_the_delay(g: Guest) -> None:
    w = g.writer()
    g.emit(rec("one"), rec("two"))
    assert w.step() == 0 and g.delayed() == b""
    g.now += 60
    g.emit(rec("three"))
    assert w.step() == 0
    g.now += DELAY - 60 - 0.001
    assert w.step() == 0 and g.delayed() == b""  # a millisecond short of the delay: nothing
    g.now += 0.001
    assert w.step() == 2 and g.delayed() == b"one\ntwo\n"
    g.now += 60
    assert w.step() == 1 and g.delayed() == b"one\ntwo\nthree\n"
    assert w.step() == 0 and g.delayed() == b"one\ntwo\nthree\n"


def test_pieces_are_joined_and_odd_records_kept_whole(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(rec("long ", "P"), rec("li", "P", "stderr"), rec("ne"), b"not conmon's format\n",
           b"2026-12-01T03:00:00Z stdout F\n", rec("half", "P"))
    w.step()
    assert g.delayed() == b"long line\nnot conmon's format\n\n"  # the unfinished line waits for its end
    g.emit(rec(" done"))
    w.step()
    assert g.delayed().endswith(b"\nhalf done\n")


def test_an_incomplete_record_waits_for_its_newline(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(rec("whole"), rec("torn")[:-4])
    w.step()
    assert g.delayed() == b"whole\n"
    g.emit(rec("torn")[-4:])
    w.step()
    assert g.delayed() == b"whole\ntorn\n"


def test_a_long_line_is_cut(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(*[rec("x" * 8192, "P") for _ in range(10)], rec("end"))
    w.step()
    assert g.delayed() == b"x" * bl.MAX_LINE + b"\n"


def test_a_restart_loses_nothing_and_repeats_nothing(g: Guest) -> None:
    w = g.writer()
    g.emit(rec("a"), rec("b"))
    w.step()
    g.now += DELAY
    w.step()
    g.emit(rec("c"))
    w.step()  # c is waiting, in memory only
    g.now += 10
    w = g.writer()  # restart (the clock goes on)
    w.step()
    g.now += DELAY - 1
    assert w.step() == 0  # c waits a whole delay again: late, never early
    g.now += 1
    assert w.step() == 1
    assert g.delayed() == b"a\nb\nc\n"


def test_a_crash_after_appending_before_recording_writes_nothing_twice(g: Guest) -> None:
    w = g.writer()
    g.emit(rec("a"), rec("b"))
    w.step()
    g.now += DELAY
    g.crash_on = g.fsyncs + 2  # the append's fsync passes, the record's fsync "crashes"
    with pytest.raises(Crash):
        w.step()
    assert g.delayed() == b"a\nb\n"
    g.crash_on = None
    g.emit(rec("c"))
    w = g.writer()
    w.step()
    g.now += DELAY
    w.step()
    assert g.delayed() == b"a\nb\nc\n"


def test_a_line_written_in_part_is_completed_and_garbage_cut(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(rec("first"))
    w.step()
    g.emit(rec("second"), rec("third"))
    with g.out.open("ab") as f:
        f.write(b"second\nthi")  # what a crash in the middle of the append leaves
    w = g.writer(delay=0)
    assert g.delayed() == b"first\nsecond\nthird\n"
    w.step()
    assert g.delayed() == b"first\nsecond\nthird\n"
    with g.out.open("ab") as f:
        f.write(b"not from the raw log\n")
    g.emit(rec("fourth"))
    w = g.writer(delay=0)
    w.step()
    assert g.delayed() == b"first\nsecond\nthird\nfourth\n"


def test_a_replaced_raw_log_is_read_from_its_start(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(rec("old"))
    w.step()
    g.raw.unlink()
    g.emit(rec("new"))
    w.step()
    assert g.delayed() == b"old\nnew\n"


def test_a_broken_record_of_progress_reconciles_instead_of_repeating(g: Guest) -> None:
    w = g.writer(delay=0)
    g.emit(rec("a"), rec("b"))
    w.step()
    (g.root / bl.STATE).write_text("{broken")
    w = g.writer(delay=0)
    w.step()
    assert g.delayed() == b"a\nb\n"


def test_the_searchers_logs_command_reads_the_delayed_copy(g: Guest) -> None:
    w = g.writer()
    g.emit(rec("early"), rec("secret order flow"))
    w.step()
    out = io.BytesIO()
    bs.Shell(g.root, out=out, err=io.StringIO()).run(["-c", "logs 5"])
    assert out.getvalue() == b""  # in the raw log, not yet delayed: invisible
    g.now += DELAY
    w.step()
    bs.Shell(g.root, out=out, err=io.StringIO()).run(["-c", "logs 1"])
    assert out.getvalue() == b"secret order flow\n"


def test_endless_output_is_bounded_and_nothing_is_skipped(g: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bl, "MAX_RECORD", 100)
    monkeypatch.setattr(bl, "MAX_SPAN", 400)
    w = g.writer(delay=0)
    g.emit(b"x" * 250)  # a record without end, longer than MAX_RECORD: cut where it is, and no byte skipped
    w.step()
    g.emit(b"y\n", *[rec("p" * 50, "P") for _ in range(20)], rec("after"))
    w.step()
    lines = g.delayed().split(b"\n")
    assert b"".join(lines[:2]).startswith(b"x" * 250) and lines[1].endswith(b"y")  # all 250 x, then the y
    pieces = [ln for ln in lines if ln.startswith(b"p")]
    assert len(pieces) >= 2 and all(len(ln) < 20 * 50 for ln in pieces)  # ended at the span, not held to the end
    assert lines[-2].endswith(b"after")
