"""The integration tests' teardown of helper clients (rt_integ.end_process): a client that ignores SIGTERM is killed,
not left to fail a test whose assertions passed (CI saw an `ssh -N -L` outlive SIGTERM by more than 20 s)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration" / "runtime"))

from rt_integ import end_process  # noqa: E402


def _started(script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"  # the trap is in place before we signal
    return proc


def test_a_client_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    proc = _started("trap '' TERM; echo up; exec sleep 60")  # SIG_IGN survives exec
    t0 = time.monotonic()
    end_process(proc, grace=0.5)
    assert proc.returncode == -9 and time.monotonic() - t0 < 10


def test_a_client_that_honours_sigterm_ends_with_it() -> None:
    proc = _started("echo up; exec sleep 60")
    end_process(proc, grace=5)
    assert proc.returncode == -15


def test_a_process_that_already_ended_is_left_alone() -> None:
    proc = subprocess.Popen(["true"])
    proc.wait(5)
    end_process(proc)
    assert proc.returncode == 0
