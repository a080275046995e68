"""`sealbox --fleet ADDRESS VERB` (and $SEALBOX_FLEET): a bad address, a verb the fleet cannot do, or a flag that
has no meaning on a fleet is one line and a non-zero exit before anything is joined; an unreachable head is one
line within seconds (Ray itself would retry for minutes); without the option Ray is never imported. No Ray
cluster needed (the real CLI runs against the fleet in tests/integration/fleet/test_fleet_cli_verbs.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.fleet.rayenv import check_address
from sealbox.sandbox.status import PsRow, table


def sealbox(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SEALBOX_FLEET"}
    return subprocess.run([sys.executable, "-m", "sealbox", *args], capture_output=True, text=True, timeout=60,
                          env={**environ, **(env or {})})


def one_line(proc: subprocess.CompletedProcess[str], says: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("address", ["10.0.0.1", "head:6380", "10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:x", "::1:6380",
                                     "[10.0.0.1]:6380", "10.0.0.1:6380\n", ""])
def test_bad_address(address: str) -> None:
    if not address:  # --fleet '' is "no fleet": the local ps (which may fail for its own reasons, not the address)
        proc = sealbox("--fleet", "", "ps", "--state-dir", "/nonexistent/sb")
        assert "--fleet" not in proc.stderr
        return
    one_line(sealbox("--fleet", address, "ps"), f"--fleet {address!r} is not HEAD_IP:PORT")
    one_line(sealbox("ps", env={"SEALBOX_FLEET": address}), f"$SEALBOX_FLEET {address!r} is not HEAD_IP:PORT")


def test_check_address() -> None:
    assert check_address("10.0.0.1:6380") == ("10.0.0.1", 6380)
    assert check_address("[fd00::1]:6380") == ("fd00::1", 6380)
    with pytest.raises(UsageError):
        check_address("fd00::1:6380")  # ambiguous without brackets


@pytest.mark.parametrize(("verb", "says"), [
    (["ssh", "box"], "sealbox ssh does not work with --fleet"),
    (["ssh-config", "box"], "sealbox ssh-config does not work with --fleet"),
    (["gc"], "sealbox gc does not work with --fleet"),
    (["snapshot", "box"], "sealbox snapshot does not work with --fleet"),
    (["rdp", "box"], "sealbox rdp does not work with --fleet"),
    (["build", "--help"], "--fleet does not apply to sealbox build"),
    (["doctor"], "--fleet does not apply to sealbox doctor"),
])
def test_verbs_the_fleet_cannot_do(verb: list[str], says: str) -> None:
    one_line(sealbox("--fleet", "10.0.0.1:6380", *verb), says)


def test_environment_variable() -> None:
    # a sandbox verb the fleet cannot do is refused whichever way the fleet was given...
    one_line(sealbox("ssh", "box", env={"SEALBOX_FLEET": "10.0.0.1:6380"}), "sealbox ssh does not work with $SEALBOX_FLEET")
    # ...while a verb that has nothing to do with sandboxes does not use the variable (the flag itself is refused above)
    proc = sealbox("build", "--help", env={"SEALBOX_FLEET": "10.0.0.1:6380"})
    assert proc.returncode == 0 and "Usage: sealbox build" in proc.stdout, proc.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["exec", "-t", "box", "--", "true"], "-t/--tty does not work with --fleet"),
    (["rm", "--snapshots", "box"], "--snapshots does not work with --fleet"),
    (["ps", "--state-dir", "/tmp/x"], "--state-dir does not work with --fleet"),
    (["run", "/img", "--name", "a", "--from-snapshot", "/snap"], "--from-snapshot does not work with --fleet"),
    (["run", "/img", "--name", "a", "--host-label", "zone"], "host label 'zone' is not KEY=VALUE"),
])
def test_flags_without_meaning_on_a_fleet(args: list[str], says: str) -> None:
    # refused before the fleet is joined: the address is one where nothing listens
    one_line(sealbox("--fleet", f"127.0.0.1:{closed_port()}", *args), says)


def test_host_label_needs_a_fleet() -> None:
    one_line(sealbox("run", "/img", "--name", "a", "--host-label", "zone=b"), "--host-label places a sandbox on a fleet")


@pytest.mark.parametrize("verb", [["ps"], ["exec", "box", "--", "true"], ["rm", "box"], ["run", "/img", "--name", "a"]])
def test_unreachable_head_is_one_line_at_once(verb: list[str]) -> None:
    port = closed_port()
    t0 = time.monotonic()
    proc = sealbox("--fleet", f"127.0.0.1:{port}", *verb)
    assert time.monotonic() - t0 < 30
    one_line(proc, f"cannot reach the fleet head at 127.0.0.1:{port}: connection refused")


def test_local_ps_never_imports_ray(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sealbox", "ps", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "SEALBOX_FLEET"})
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert len(modules) > 50, proc.stderr[-2000:]  # the import log is there
    assert [m for m in modules if m == "ray" or m.startswith(("ray.", "sealbox.fleet"))] == []


def test_ps_table_has_the_host_column_on_a_fleet() -> None:
    rows = [PsRow(name="a", status="running"), PsRow(name="b", status="lost", reason="its host host1 left the fleet")]
    lines = table(rows, now=0, hosts={"a": "host0", "b": "host1"}).splitlines()
    assert lines[0].split()[:3] == ["NAME", "HOST", "STATUS"]
    assert lines[1].split()[:3] == ["a", "host0", "running"]
    assert lines[2].split()[:3] == ["b", "host1", "lost"]
    assert "HOST" not in table(rows, now=0)  # this host's ps: unchanged
