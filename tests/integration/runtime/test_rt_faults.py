"""Faults: a killed VMM, a killed or terminated `sealbox run`, a guest that never gets ready, and
bad `run` arguments. Each case ends with proof that nothing of the sandbox remains on the host."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from rt_integ import Sealbox, leftovers, wait_for

from sealbox.sandbox.state import SandboxRecord, StateDir

pytestmark = [pytest.mark.integration]


def _entry_done(sb: Sealbox, name: str, kind: str) -> bool:
    rec = sb.record(name)
    return bool(rec) and any(e["kind"] == kind and e["state"] == "done" for e in rec["steps"]["entries"])  # type: ignore[index]


@pytest.mark.boot
def test_killed_vmm_shows_exited_and_gc_removes_everything(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-kv"
    p = sealbox(*sealbox.run_args(name, "--memory", "320"), timeout=420)
    assert p.returncode == 0, p.stderr
    ins = json.loads(sealbox("inspect", name, check=True).stdout)
    qpid = ins["vmm_view"]["qemu_pid"]
    os.kill(qpid, signal.SIGKILL)
    wait_for(lambda: sealbox.status(name) == "exited", 15, "ps to show the killed VMM as exited")
    assert sealbox.exec(name, "true").returncode != 0
    g = sealbox("gc", check=True)
    assert f"removed sandbox {name} (its VMM" in g.stdout
    assert leftovers(sealbox.state_dir, name) == []


# `boot` where the guest starts booting under QEMU before the test ends (an honest marker: the VMM runs)
@pytest.mark.parametrize("kill_after", ["net.firewall", "instance-files", pytest.param("qemu-start", marks=pytest.mark.boot)])
def test_killed_run_is_collected_by_gc(sealbox: Sealbox, kill_after: str) -> None:
    """SIGKILL the sealbox process once a given step is done (before the guest is ready)."""
    name = f"{sealbox.prefix}-k{kill_after[:3]}"
    proc = sealbox.spawn(*sealbox.run_args(name, "--memory", "320"))
    wait_for(lambda: _entry_done(sealbox, name, kill_after) or proc.poll() is not None, 60, f"step {kill_after} of {name}", 0.02)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert sealbox.status(name) == "abandoned"
    assert leftovers(sealbox.state_dir, name) != []  # something really was left behind ...
    g = sealbox("gc", check=True)
    assert f"removed sandbox {name} (the sealbox process creating it" in g.stdout, g.stdout
    assert leftovers(sealbox.state_dir, name) == []  # ... and gc removed all of it


@pytest.mark.boot
def test_sigterm_during_run_undoes_everything(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-term"
    proc = sealbox.spawn(*sealbox.run_args(name, "--memory", "320"))
    wait_for(lambda: _entry_done(sealbox, name, "qemu-start") or proc.poll() is not None, 60, "the VMM to start")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "interrupted by SIGTERM" in err and len(err.strip().splitlines()) == 1, err
    assert leftovers(sealbox.state_dir, name) == []


@pytest.mark.boot
def test_guest_not_ready_in_time_fails_with_console_tail_and_cleans_up(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-slow"
    t0 = time.monotonic()
    p = sealbox(*sealbox.run_args(name, "--memory", "320", timeout=5), timeout=120)
    took = time.monotonic() - t0
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    err = [ln for ln in lines if ln.startswith("sealbox: error:")]
    assert len(err) == 1 and "not ready within 5s" in err[0] and "console:" in err[0], p.stderr
    assert "Traceback" not in p.stderr
    assert took < 60, took  # bounded: timeout plus cleanup
    assert leftovers(sealbox.state_dir, name) == []


def test_bad_arguments_create_nothing(sealbox: Sealbox, tmp_path: Path) -> None:
    state = StateDir(sealbox.state_dir)
    taken = f"{sealbox.prefix}-taken"
    state.reserve(SandboxRecord(name=taken, status="stopped", created_at=time.time()))
    before = state.record_path(taken).read_bytes()
    cases = {
        "bad image": (["run", str(tmp_path / "no-image"), "--name", f"{sealbox.prefix}-e1"], "does not exist"),
        "bad name": (["run", str(sealbox.image), "--name", "no/slash"], "invalid sandbox name"),
        "missing disk": (["run", str(sealbox.image), "--name", f"{sealbox.prefix}-e2", "--disk", str(tmp_path / "nope.img")], "no such file"),
        "taken name": (["run", str(sealbox.image), "--name", taken], "already exists"),
    }
    for what, (args, msg) in cases.items():
        p = sealbox(*args, "--accel", "tcg", timeout=60)
        lines = p.stderr.strip().splitlines()
        assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("sealbox: error:") and msg in lines[0], (what, p.stderr)
    for name in (f"{sealbox.prefix}-e1", f"{sealbox.prefix}-e2"):
        assert leftovers(sealbox.state_dir, name) == []
    assert state.record_path(taken).read_bytes() == before
    assert [x for x in leftovers(sealbox.state_dir, taken) if not x.startswith("state dir")] == []
    sealbox("rm", taken, check=True)
