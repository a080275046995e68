"""Colour and bold escape codes only on a terminal, never with NO_COLOR (https://no-color.org): the CLI and
scripts/demo.sh. A real pseudo-terminal stands in for the user's terminal."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ESC = b"\x1b["


def _on_pty(argv: list[str], env: dict[str, str]) -> bytes:
    """Run argv with stdout on a pseudo-terminal; everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed its side
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return out


STEP = ["bash", "-c", 'source scripts/style.sh && step "build the default image"']


@pytest.mark.parametrize(("tty", "no_color", "coloured"), [(False, None, False), (True, None, True), (True, "1", False),
                                                          (False, "1", False), (True, "", True)])
def test_demo_step_headings(tty: bool, no_color: str | None, coloured: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color is not None:
        env["NO_COLOR"] = no_color  # an empty NO_COLOR does not count (no-color.org)
    out = _on_pty(STEP, env) if tty else subprocess.run(STEP, capture_output=True, env=env, cwd=ROOT, timeout=30, check=True).stdout
    assert b"==> build the default image" in out
    assert (ESC in out) == coloured, out


def test_demo_writes_no_escape_codes_of_its_own() -> None:
    text = (ROOT / "scripts/demo.sh").read_text()
    assert "\\033" not in text and "\\e[" not in text and "\\x1b" not in text
    assert "source scripts/style.sh" in text or ". scripts/style.sh" in text


COLOURED_CONSOLE = b"\x1b[0;1;31m[FAILED]\x1b[0m Failed to start foo.service.\r\n\x1b[0;32m  OK  \x1b[0m done\r\n"


def _sandbox_with_console(tmp_path: Path) -> Path:
    from sealbox.sandbox.planning import CONSOLE_LOG
    from sealbox.sandbox.state import SandboxRecord, StateDir

    state = StateDir(tmp_path / "state")
    state.reserve(SandboxRecord(name="box", status="stopped", created_at=time.time()))
    log = state.sandbox_dir("box") / CONSOLE_LOG
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(COLOURED_CONSOLE)
    return state.root


def test_logs_into_a_pipe_are_the_raw_bytes(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    """Issue 11: raw bytes into a pipe (what the guest wrote, for tools); escaping is for terminals."""
    from sealbox.cli.main import main

    root = _sandbox_with_console(tmp_path)
    assert main(["logs", "box", "--state-dir", str(root)]) == 0
    assert capfdbinary.readouterr().out == COLOURED_CONSOLE


def test_colour_mode_keeps_only_sgr_for_any_chunking() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from sealbox.sandbox.termsafe import TerminalEscaper

    data = COLOURED_CONSOLE + b"\x1b]0;title\x07\x1b[2J\x1b[31mred\x1b[0m\r\n"
    whole = TerminalEscaper(colour=True)
    expected = whole.feed(data) + whole.flush()
    assert b"\x1b[0;1;31m[FAILED]\x1b[0m" in expected and b"\x1b[31mred\x1b[0m\n" in expected
    assert b"\\x1b]0;title\\x07" in expected and b"\\x1b[2J" in expected  # not colour: shown, inert
    assert b"\x1b]" not in expected and b"\x1b[2J" not in expected

    @given(cuts=st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    def check(cuts: list[int]) -> None:
        f, out, last = TerminalEscaper(colour=True), b"", 0
        for cut in sorted(cuts) + [len(data)]:
            out += f.feed(data[last:cut])
            last = cut
        assert out + f.flush() == expected

    check()


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("1", False)])
def test_logs_on_a_terminal_keep_colour_unless_no_color(tmp_path: Path, no_color: str | None, coloured: bool) -> None:
    import sys

    root = _sandbox_with_console(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    if no_color is not None:
        env["NO_COLOR"] = no_color
    out = _on_pty([sys.executable, "-m", "sealbox", "logs", "box", "--state-dir", str(root)], env)
    assert b"Failed to start foo.service." in out
    assert (b"\x1b[0;1;31m" in out) == coloured, out


def test_colour_filter_is_the_same_for_any_chunking() -> None:
    from hypothesis import given
    from hypothesis import strategies as st

    from sealbox.cli.common import SgrFilter

    whole = SgrFilter()
    expected = whole.feed(COLOURED_CONSOLE * 3) + whole.flush()
    assert b"\x1b" not in expected

    @given(cuts=st.lists(st.integers(min_value=0, max_value=len(COLOURED_CONSOLE) * 3), max_size=12))
    def check(cuts: list[int]) -> None:
        data, f, out, last = COLOURED_CONSOLE * 3, SgrFilter(), b"", 0
        for cut in sorted(cuts) + [len(COLOURED_CONSOLE) * 3]:
            out += f.feed(data[last:cut])
            last = cut
        assert out + f.flush() == expected

    check()
