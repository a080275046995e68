"""Start, rm and gc against a hostile VMM (issue 11: root never follows paths the VMM controls).

The STAND-IN jailer/firecracker (standin_jailer.py, NOT the real programs) runs the "VMM" as the
unprivileged sandbox uid in its jail, as the jailer does; its behaviour switches make it act as a VMM
taken over by its guest would. Where the hostile act must land in a precise window (between sealbox's
API probe and its chmod), the test performs it at that moment itself: the names involved live in the
jail's /run, which the VMM user owns, so the VMM could do exactly the same. Real: staging, the jailer
step, processes, cgroups, the record, rm and gc."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_fc_launch_standin import behaviour, env  # noqa: F401 - the stand-in environment

from sealbox.errors import SandboxError
from sealbox.sandbox import control, gc
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive, process_start_time
from sealbox.sandbox.steps import StepLog, apply_steps
from sealbox.sandbox.vmm.firecracker import launch
from sealbox.sandbox.vmm.firecracker.jailer import LOG_FILE

pytestmark = pytest.mark.integration
SECRET = b"canary: root's file outside every jail\n"


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir(mode=0o700)
    c = d / "canary"
    c.write_bytes(SECRET)
    os.chmod(c, 0o600)
    return c


def facts(p: Path) -> tuple[int, int, bytes]:
    st = os.lstat(p)
    return stat.S_IMODE(st.st_mode), st.st_uid, p.read_bytes()


@pytest.fixture
def victim(env):  # type: ignore[no-untyped-def] # noqa: F811
    """A process that is not the sandbox's VMM but looks like one of its jail (name and --id)."""
    _, plan, _, _ = env
    p = subprocess.Popen(["firecracker", "-c", "import time; time.sleep(120)", "--id", plan.spec.name], executable=sys.executable)
    yield p
    p.kill()
    p.wait(timeout=10)


@pytest.fixture
def log():  # type: ignore[no-untyped-def]
    """The steps' record; whatever a test leaves running is undone at the end."""
    from sealbox.sandbox.steps import undo_steps

    log = StepLog()
    yield log
    undo_steps(log, lambda: None)


def _start(steps, log: StepLog) -> Exception | None:  # type: ignore[no-untyped-def]
    try:
        apply_steps(steps, log, lambda: None)
    except Exception as e:  # noqa: BLE001 - judged by the caller
        return e
    return None


def test_api_socket_swapped_for_a_symlink_is_not_chmodded(env, canary: Path, monkeypatch: pytest.MonkeyPatch, log: StepLog) -> None:  # noqa: F811
    backend, plan, steps, tmp = env
    lay = backend.layout(plan)
    real_probe = launch.socket_answers

    def probe_then_swap(path: Path, timeout: float = 0.5, **kw) -> bool:  # type: ignore[no-untyped-def]
        ok = real_probe(path, timeout, **kw)
        if ok and path == lay.api_sock and not path.is_symlink():  # the VMM swaps the name right after answering
            os.rename(path, path.with_name("real.socket"))
            os.symlink(canary, path)
        return ok

    monkeypatch.setattr(launch, "socket_answers", probe_then_swap)
    before = facts(canary)
    err = _start(steps, log)
    assert facts(canary) == before, "root chmodded the host file the VMM's socket name pointed at"
    assert isinstance(err, SandboxError) and "refusing to chmod the API socket" in str(err), err
    assert [e.state for e in log.entries] == ["undone", "undone"] and not lay.jail_dir.exists()


def test_pid_file_naming_another_process_is_refused(env, victim, log: StepLog) -> None:  # noqa: F811
    backend, plan, steps, tmp = env
    behaviour(tmp, plant_pid=victim.pid)
    err = _start(steps, log)
    assert victim.poll() is None, "the process the VMM named was killed"
    assert isinstance(err, SandboxError) and "pid file" in str(err) and "refusing" in str(err), err


def test_log_symlinked_to_a_host_file_is_not_read(env, canary: Path, log: StepLog) -> None:  # noqa: F811
    backend, plan, steps, tmp = env
    behaviour(tmp, plant_log_and_die=str(canary))
    err = _start(steps, log)
    assert isinstance(err, SandboxError) and "exited during start-up" in str(err), err
    assert SECRET.strip().decode() not in str(err), "root read the host file through the VMM's log symlink"
    assert "firecracker.log" in str(err) and "refusing" in str(err), err


def _plant_after_start(lay, canary: Path, victim_pid: int) -> None:  # type: ignore[no-untyped-def]
    """What a VMM taken over after a clean start can do to the names in its own jail."""
    uid = os.stat(lay.root).st_uid
    lay.pid_file.unlink()
    lay.pid_file.write_text(str(victim_pid))
    os.chown(lay.pid_file, uid, uid)
    log = lay.host(LOG_FILE)
    log.unlink()
    log.symlink_to(canary)
    os.rename(lay.api_sock, lay.api_sock.with_name("moved.socket"))
    lay.api_sock.symlink_to(canary)
    snap = lay.host("/snapshot")
    snap.rmdir()
    snap.symlink_to(canary.parent)


def _record(state: StateDir, name: str, log: StepLog, status: str) -> None:
    state.reserve(SandboxRecord(name=name, status=status, created_at=time.time(), steps=log, vmm={"backend": "firecracker"},
                                error="test: creation failed" if status == "failed" else None))


def test_rm_and_gc_of_a_hostile_jail_touch_nothing_outside(env, canary: Path, victim, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    backend, plan, steps, tmp = env
    lay = backend.layout(plan)
    caplog.set_level(logging.WARNING)
    before = facts(canary)
    state = StateDir(tmp / "state")

    # rm --force of a running sandbox whose VMM planted everything it could
    log = StepLog()
    apply_steps(steps, log, lambda: None)
    vmm = log.entries[1].outputs["pid"]
    _plant_after_start(lay, canary, victim.pid)
    _record(state, plan.spec.name, log, "running")
    control.remove(state, plan.spec.name, force=True)
    assert facts(canary) == before and victim.poll() is None and not pid_alive(vmm, None)
    assert not lay.jail_dir.exists() and not state.exists(plan.spec.name)
    assert any("refusing" in r.getMessage() and "firecracker.socket" in r.getMessage() for r in caplog.records), caplog.text

    # gc of a run that crashed after the jailer started but before its pid was recorded
    caplog.clear()
    log = StepLog()
    apply_steps(steps, log, lambda: None)
    vmm, start = log.entries[1].outputs["pid"], log.entries[1].outputs["start_time"]
    log.entries[1].state, log.entries[1].outputs = "planned", {}
    _plant_after_start(lay, canary, victim.pid)
    _record(state, plan.spec.name, log, "failed")
    report = gc.collect(state)
    assert report.problems == [], report
    assert facts(canary) == before, "gc changed the host file the VMM pointed at"
    assert victim.poll() is None, "gc killed the process the VMM's pid file named"
    assert not pid_alive(vmm, start), "gc left the VMM running"
    assert not lay.jail_dir.exists() and not state.exists(plan.spec.name)
    assert any("refusing" in r.getMessage() for r in caplog.records), caplog.text
    assert process_start_time(victim.pid) is not None


def test_api_requests_never_reach_a_socket_the_vmm_points_at(env, log: StepLog, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The VMM swaps its /run for a symlink to another directory holding a socket of that name (another
    sandbox's API, say): stop and inspect must not send it a single request."""
    from fc_testlib import StandInFirecrackerApi, spec_path

    from sealbox.sandbox.vmm.firecracker.schema import load_spec

    backend, plan, steps, tmp = env
    lay = backend.layout(plan)
    apply_steps(steps, log, lambda: None)
    out = log.entries[1].outputs
    decoy_dir = tmp / "decoy"
    decoy_dir.mkdir()
    monkeypatch.chdir(decoy_dir)  # the full path is too long for sun_path
    with StandInFirecrackerApi(Path("firecracker.socket"), load_spec(str(spec_path()))) as decoy:
        run = lay.host("/run")
        os.rename(run, run.with_name("run.moved"))
        run.symlink_to(decoy_dir)
        record = SandboxRecord(name=plan.spec.name, status="running", created_at=time.time(), steps=log,
                               vmm={"backend": "firecracker"})
        with pytest.raises(SandboxError, match="refusing"):
            backend.inspect(record)
        assert launch.stop_vm(lay.api_sock, out["pid"], out["start_time"], timeout=1, jail_root=lay.root) == "killed"
        assert decoy.requests == [], decoy.requests
