"""`sealbox logs` must not let a guest drive the operator's terminal: control characters and escape
sequences are shown escaped when stdout is a terminal (a real pty here), raw with --raw or when piped."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealbox.sandbox.state import SandboxRecord, StateDir
from sealbox.sandbox.termsafe import TerminalEscaper

# what a hostile guest prints: colours, a window title (OSC ... BEL), cursor moves, an 8-bit CSI, a lone CR that
# would overwrite the line, a bidi override, invalid UTF-8, a NUL; and ordinary CRLF serial line ends
HOSTILE = (b"boot ok\r\n\x1b[31mred\x1b[0m \x1b]0;pwned title\x07 \x1b[2J\x1b[H"
           b"\xc2\x9b6n fake\rREAL\r\n\xe2\x80\xaeevil \xff\xfe \x00 caf\xc3\xa9\ttab\n")


def console(tmp_path: Path) -> Path:
    state = StateDir(tmp_path / "state")
    state.reserve(SandboxRecord(name="esc", status="stopped", created_at=time.time()))
    log = state.sandbox_dir("esc") / "console" / "console.log"
    log.parent.mkdir()
    log.write_bytes(HOSTILE)
    return state.root


def run_on_pty(*args: str) -> tuple[int, bytes]:
    """`sealbox ARGS` with stdout on a pseudo-terminal, as an operator's shell would run it."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "sealbox.cli.main", *args], stdin=subprocess.DEVNULL, stdout=slave,
                         stderr=subprocess.PIPE)
    os.close(slave)
    out, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif p.poll() is not None:
            break
    os.close(master)
    return p.wait(timeout=30), out


def test_logs_on_a_terminal_are_escaped_and_raw_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(console(tmp_path))
    monkeypatch.setenv("NO_COLOR", "1")  # colours too are shown escaped (with colour allowed only SGR passes)
    rc, shown = run_on_pty("logs", "esc", "--state-dir", root)
    assert rc == 0
    text = shown.replace(b"\r\n", b"\n")  # the pty's own output processing turns \n into \r\n
    assert all(b >= 0x20 or b in (0x0A, 0x09) for b in text), text  # no control byte reaches the terminal
    assert "\u202e".encode() not in text and b"\xc2\x9b" not in text
    for visible in (rb"\x1b[31mred", rb"\x1b]0;pwned title\x07", rb"\x9b6n", rb"fake\rREAL", rb"\u202eevil",
                    rb"\xff\xfe", rb"\x00", "café\ttab".encode(), b"boot ok\n"):
        assert visible in text, (visible, text)
    rc, raw = run_on_pty("logs", "esc", "--raw", "--state-dir", root)
    assert rc == 0 and raw == HOSTILE.replace(b"\n", b"\r\n")  # as written (plus the pty's own \n -> \r\n)
    piped = subprocess.run([sys.executable, "-m", "sealbox.cli.main", "logs", "esc", "--state-dir", root],
                           capture_output=True, timeout=60)
    assert piped.returncode == 0 and piped.stdout == HOSTILE


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_escaping_is_the_same_however_the_stream_is_cut(data: bytes, cuts: list[int]) -> None:
    whole = TerminalEscaper()
    expect = whole.feed(data) + whole.flush()
    e, got, prev = TerminalEscaper(), b"", 0
    for c in sorted(min(c, len(data)) for c in cuts) + [len(data)]:
        got += e.feed(data[prev:c])
        prev = c
    got += e.flush()
    assert got == expect
    assert all(b >= 0x20 or b in (0x0A, 0x09) for b in got)
