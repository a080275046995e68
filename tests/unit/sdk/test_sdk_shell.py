"""Command lines for the guest's shell, run here by the same shells a guest uses (dash, bash) as sshd would run
them (`SHELL -c LINE`): hostile argv, environment and cwd values arrive byte for byte, nothing is interpreted."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from sealbox.errors import UsageError
from sealbox.sdk.shell import ControlFilter, Script, check_user

SHELLS = ["/bin/dash", "/bin/bash"]
HOSTILE = ["", " ", "a b", "'", '"', "\\", "$(touch PWNED)", "`touch PWNED`", "$HOME", "${IFS}", "; touch PWNED", "&& touch PWNED",
           "| touch PWNED", "\n touch PWNED", "-n", "--", "-e", "*", "?", "~", "~root", "!!", "a\tb", "é ü 中", "\x1b[31m", "%s%n", "\r"]
REPORT = [sys.executable, "-c",
          "import json,os,sys; print(json.dumps([sys.argv[1:], os.getcwd(), {k: v for k, v in os.environ.items() if k.startswith('SBT_')}]))"]


def run(shell: str, line: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([shell, "-c", line], cwd=cwd, capture_output=True, timeout=20,
                          env={"PATH": os.environ["PATH"], "SHELL": shell, **(env or {})})


@pytest.mark.parametrize("shell", SHELLS)
def test_hostile_argv_env_and_cwd_arrive_unchanged(shell: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cwd = "-dir with 'quotes' $(touch PWNED) `x` ; & |\nnewline"
    (home / cwd).mkdir()
    env = {f"SBT_{i}": v for i, v in enumerate(HOSTILE)}
    s = Script().cd(cwd).env(env)
    p = run(shell, s.exec([*REPORT, *HOSTILE]), home)
    f = ControlFilter(s.nonce)
    err = f.feed(p.stderr) + f.flush()
    assert p.returncode == 0, err
    argv, where, seen = json.loads(p.stdout)
    assert argv == HOSTILE and where == str(home / cwd) and seen == env
    assert err == b"" and f.started and f.pid and not f.failed
    assert not list(tmp_path.rglob("PWNED"))


@pytest.mark.parametrize("shell", SHELLS)
def test_a_string_command_runs_in_the_login_shell(shell: str, tmp_path: Path) -> None:
    s = Script().env({"SBT_X": "a'b"})
    p = run(shell, s.exec('echo "$SBT_X" && echo two >&2; exit 3'), tmp_path)
    f = ControlFilter(s.nonce)
    assert (p.returncode, p.stdout, f.feed(p.stderr) + f.flush()) == (3, b"a'b\n", b"two\n")


@pytest.mark.parametrize("shell", SHELLS)
def test_missing_cwd_is_reported_as_such(shell: str, tmp_path: Path) -> None:
    s = Script().cd("nope")
    p = run(shell, s.exec(["true"]), tmp_path)
    f = ControlFilter(s.nonce)
    rest = f.feed(p.stderr) + f.flush()
    assert p.returncode == 1 and f.failed == "cwd" and not f.started and b"nope" in rest  # the shell's own message stays


@pytest.mark.parametrize("shell", SHELLS)
def test_the_pid_is_the_session_process_group(shell: str, tmp_path: Path) -> None:
    s = Script()
    p = subprocess.run([shell, "-c", s.exec(["sh", "-c", "ps -o pgid= -p $$"])], cwd=tmp_path, capture_output=True, timeout=20,
                       start_new_session=True)  # as sshd does (setsid) for a session without a tty
    f = ControlFilter(s.nonce)
    f.feed(p.stderr)
    assert f.pid is not None and int(p.stdout) == f.pid


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.text(hs.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=12), min_size=1, max_size=5))
def test_any_argv_round_trips_through_dash(words: list[str]) -> None:
    s = Script()
    p = subprocess.run(["/bin/dash", "-c", s.exec([*REPORT, *words])], capture_output=True, timeout=20, env={"PATH": os.environ["PATH"]})
    assert json.loads(p.stdout)[0] == words


@pytest.mark.parametrize(("call", "msg"), [
    (lambda: Script().env({"A-B": "x"}), "environment variable name"),
    (lambda: Script().env({"1A": "x"}), "environment variable name"),
    (lambda: Script().env({"A": "x\0y"}), "NUL"),
    (lambda: Script().exec(["a\0b"]), "NUL"),
    (lambda: Script().exec([]), "empty command"),
    (lambda: Script().cd(""), "empty cwd"),
    (lambda: Script().exec(["x" * 100_000]), "at most"),
    (lambda: check_user("-oProxyCommand=x"), "not a valid user"),
    (lambda: check_user("root;id"), "not a valid user"),
])
def test_refused_values(call, msg: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UsageError, match=msg):
        call()


def test_control_lines_are_stripped_only_before_run() -> None:
    s = Script()
    f = ControlFilter(s.nonce)
    out = f.feed(f"shell says hi\n{s.nonce} ru".encode()) + f.feed(f"n 42\n{s.nonce} fail cwd\n".encode()) + f.feed(b"tail") + f.flush()
    assert f.pid == 42 and f.failed is None and out == f"shell says hi\n{s.nonce} fail cwd\ntail".encode()
    g = ControlFilter("n0nce")
    assert g.feed(b"x" * 1000) == b"x" * 1000  # no newline for long: not a control line, not held
    assert g.feed(b"n0nce run 1 2\n") == b"n0nce run 1 2\n" and g.pid is None


def test_quoting_is_shlex() -> None:
    assert Script().exec(["a b"]).endswith("exec 'a b'")
    assert shlex.split(Script().cd("/x y").done())[:3] == ["cd", "--", "/x y"]
