"""Readiness wait, failure cleanup, step-kind registry, logs and the fixed-link allocation — no root, no boot.

The guest side is a console log written by a thread (as a VMM would) and a stand-in SSH probe."""

from __future__ import annotations

import ast
import ipaddress
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from rt_testlib import BOOT_ID, ED, blob

from sealbox.errors import SandboxError
from sealbox.sandbox import control, lifecycle, ssh, stepkinds
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
from sealbox.sandbox.steps import Step, StepEntry, StepLog

SUBNET = ipaddress.IPv4Network("10.213.0.8/30")
NET = GuestNet(subnet=SUBNET, host_ip=SUBNET[1], guest_ip=SUBNET[2], guest_mac="02:00:00:00:00:02", tap="tap0", netns="sealbox-t")
ME = (os.getpid(), process_start_time(os.getpid()))


@pytest.fixture
def banner(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """STAND-IN for the SSH probe through the netns: answers once `up` is set."""
    box: dict[str, Any] = {"up": False, "calls": 0}

    def probe(netns: str, host: str, port: int = 22, timeout: float = 2.0) -> str | None:
        box["calls"] += 1
        assert (netns, host) == ("sealbox-t", "10.213.0.10")
        return "SSH-2.0-OpenSSH_9.2p1" if box["up"] else None

    monkeypatch.setattr(ssh, "probe_ssh", probe)
    return box


def writer(path: Path, chunks: list[bytes], delay: float = 0.05) -> threading.Thread:
    def run() -> None:
        for c in chunks:
            with open(path, "ab") as f:
                f.write(c)
            time.sleep(delay)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def wait(tmp_path: Path, timeout: float = 5.0, pid: tuple[int | None, int | None] = ME, **kw: Any) -> dict[str, Any]:
    return lifecycle.wait_ready(NET, tmp_path / "console.log", pid[0], pid[1], known_hosts=tmp_path / "known_hosts",
                                alias="sealbox-t", deadline=time.monotonic() + timeout, timeout=timeout, **kw)


def test_ready_pins_keys_then_waits_for_ssh(tmp_path: Path, banner: dict[str, Any]) -> None:
    banner["up"] = True
    spoof = blob("ssh-ed25519", b"evil" * 10)
    writer(tmp_path / "console.log", [b"booting\r\n", f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\r\n".encode(),
                                      f"SEALBOX-READY {BOOT_ID}\r\n".encode(), f"SEALBOX-HOSTKEY ssh-ed25519 {spoof}\n".encode()])
    r = wait(tmp_path)
    assert r["boot_id"] == BOOT_ID and r["hostkeys"] == [f"ssh-ed25519 {ED}"]
    assert (tmp_path / "known_hosts").read_text() == f"sealbox-t ssh-ed25519 {ED}\n"


def test_ssh_must_answer_after_ready(tmp_path: Path, banner: dict[str, Any]) -> None:
    (tmp_path / "console.log").write_bytes(f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\nSEALBOX-READY {BOOT_ID}\n".encode())
    threading.Timer(0.5, lambda: banner.update(up=True)).start()
    t0 = time.monotonic()
    wait(tmp_path)
    assert time.monotonic() - t0 >= 0.45 and banner["calls"] >= 2


def test_timeout_names_what_is_missing_and_shows_the_console(tmp_path: Path, banner: dict[str, Any]) -> None:
    (tmp_path / "console.log").write_bytes(b"[    1.0] Run /init as init process\n[  OK  ] Reached target basic\n")
    with pytest.raises(SandboxError) as e:
        wait(tmp_path, timeout=0.5)
    msg = str(e.value)
    assert "not ready within 0.5s (no SEALBOX-READY on the console)" in msg and "Reached target basic" in msg
    (tmp_path / "console.log").write_bytes(f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\nSEALBOX-READY {BOOT_ID}\n".encode())
    with pytest.raises(SandboxError, match="SSH did not answer after SEALBOX-READY"):
        wait(tmp_path, timeout=0.5)


def test_dead_vmm_fails_fast(tmp_path: Path, banner: dict[str, Any]) -> None:
    (tmp_path / "console.log").write_bytes(b"[    0.5] Run /init as init process\n")
    t0 = time.monotonic()
    with pytest.raises(SandboxError, match="VMM exited before the guest was ready; console: .*Run /init"):
        wait(tmp_path, timeout=10, pid=(99999999, 1))
    assert time.monotonic() - t0 < 2


def test_ready_without_hostkeys_is_refused(tmp_path: Path, banner: dict[str, Any]) -> None:
    banner["up"] = True
    (tmp_path / "console.log").write_bytes(f"SEALBOX-READY {BOOT_ID}\nSEALBOX-HOSTKEY ssh-ed25519 {ED}\n".encode())
    with pytest.raises(SandboxError, match="without any SEALBOX-HOSTKEY"):
        wait(tmp_path)
    assert not (tmp_path / "known_hosts").exists()


def test_restored_guest_uses_the_pinned_keys(tmp_path: Path, banner: dict[str, Any]) -> None:
    from sealbox.guest.console import HostKey

    banner["up"] = True
    r = wait(tmp_path, pinned=[HostKey(type="ssh-ed25519", blob=ED)])  # no console output at all
    assert r["hostkeys"] == [f"ssh-ed25519 {ED}"] and r["boot_id"] is None


class RecordingStep(Step):
    """STAND-IN step for tests: undo appends to a file; `fail` makes undo raise."""

    kind = "test.recording"
    log: str
    label: str
    fail: bool = False

    def do(self) -> dict[str, Any]:
        return {}

    def undo(self, outputs: dict[str, Any]) -> None:
        if self.fail:
            raise SandboxError(f"{self.label} is stuck")
        with open(self.log, "a") as f:
            f.write(self.label + "\n")


def _record(state: StateDir, tmp_path: Path, fail: bool) -> SandboxRecord:
    r = SandboxRecord(name="f1", created_at=time.time(), steps=StepLog())
    for label in ("a", "b", "c"):
        s = RecordingStep(log=str(tmp_path / "undo.log"), label=label, fail=fail and label == "b")
        r.steps.entries.append(StepEntry(kind=s.kind, params=s.model_dump(), state="done"))
    state.reserve(r)
    return r


def test_failed_run_undoes_in_reverse_and_deletes(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    r = _record(state, tmp_path, fail=False)
    err = SandboxError("guest not ready")
    lifecycle._undo_failed(r, state, lambda: state.save(r), err)
    assert (tmp_path / "undo.log").read_text() == "c\nb\na\n"
    assert not state.exists("f1") and err.message == "guest not ready"


def test_failed_cleanup_keeps_the_record_for_gc(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    r = _record(state, tmp_path, fail=True)
    err = SandboxError("guest not ready")
    lifecycle._undo_failed(r, state, lambda: state.save(r), err)
    assert (tmp_path / "undo.log").read_text() == "c\na\n"  # one stuck step does not strand the others
    kept = state.load("f1")
    assert kept.status == "failed" and kept.error == "guest not ready"
    assert "cleanup left: test.recording: b is stuck; run 'sealbox gc'" in err.message


def test_every_step_kind_is_found_for_replay() -> None:
    """rm/gc rebuild steps from records: the package walk must reach every module that defines a Step."""
    src = Path(stepkinds.__file__).resolve().parents[1]
    kinds = set()
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(getattr(b, "id", None) == "Step" for b in node.bases):
                for stmt in node.body:
                    if isinstance(stmt, ast.Assign) and getattr(stmt.targets[0], "id", None) == "kind":
                        kinds.add(stmt.value.value)  # type: ignore[attr-defined]
    assert len(kinds) >= 10
    stepkinds.load_all()
    from sealbox.sandbox.steps import _REGISTRY

    assert kinds <= set(_REGISTRY)


def test_follow_logs_stops_when_the_vmm_is_gone(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    r = SandboxRecord(name="lg", status="running", created_at=time.time(), vmm={"pid": ME[0], "start_time": ME[1]})
    state.reserve(r)
    log = control.console_path(state, "lg")
    log.parent.mkdir()  # the console tmpfs mount point (a plain dir here)
    log.write_bytes(b"one\n")
    got = b"".join(control.follow_logs(state, "lg", follow=False))
    assert got == b"one\n"
    t0 = time.monotonic()
    assert b"".join(control.follow_logs(state, "lg", follow=True, poll=0.05, max_seconds=0.3)) == b"one\n"
    assert 0.25 < time.monotonic() - t0 < 2  # bounded even while the VMM lives

    def finish() -> None:
        with open(log, "ab") as f:
            f.write(b"two\n")
        r.status = "stopped"
        state.save(r)

    threading.Timer(0.3, finish).start()
    assert b"".join(control.follow_logs(state, "lg", follow=True, poll=0.05, max_seconds=10)) == b"one\ntwo\n"


def test_deferred_signal_reaches_the_previous_handler() -> None:
    import signal as sig

    seen: list[int] = []
    prev = sig.signal(sig.SIGHUP, lambda s, f: seen.append(s))
    try:
        with lifecycle.deferred_signals():
            os.kill(os.getpid(), sig.SIGHUP)
            time.sleep(0.05)
            assert seen == []  # held while cleaning up
        time.sleep(0.05)
        assert seen == [sig.SIGHUP]
    finally:
        sig.signal(sig.SIGHUP, prev)


def test_a_refused_step_is_recorded_and_never_undone(tmp_path: Path) -> None:
    """do() that finds its object present (another owner's) creates nothing, so undo must not remove it."""
    from sealbox.sandbox.steps import StepRefused, apply_steps, undo_steps

    class Refusing(Step):
        kind = "test.refusing"
        log: str

        def do(self) -> dict[str, Any]:
            raise StepRefused("it exists")

        def undo(self, outputs: dict[str, Any]) -> None:
            with open(self.log, "a") as f:
                f.write("undone refusing\n")

    first = RecordingStep(log=str(tmp_path / "undo.log"), label="first")
    log = StepLog()
    with pytest.raises(StepRefused):
        apply_steps([first, Refusing(log=str(tmp_path / "undo.log"))], log, lambda: None)
    assert [e.state for e in log.entries] == ["undone", "refused"] and log.entries[1].error == "it exists"
    assert undo_steps(log, lambda: None) == []  # a later rm/gc replay: still nothing undone
    assert (tmp_path / "undo.log").read_text() == "first\n"
