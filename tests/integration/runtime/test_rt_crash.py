"""kill -9 at every recorded step, then `gc`: nothing of the sandbox is left on the host.

A `sealbox run` (in a forked child, with guest readiness stood in: standins.py) is SIGKILLed at one
point of one step:
    planned   the entry is on disk, do() has not started
    after-do  do() returned — the object exists — but the record on disk still says planned
              (for qemu-start: QEMU runs and its pid is nowhere on disk)
    during    (VMM starts only) the VMM process exists while do() still waits for it to answer
    done      the entry is on disk as done
A later process runs gc from the records alone. QEMU in nat mode covers every network step and the
QEMU steps; Firecracker (STAND-IN jailer) covers its own two steps. Also: a crash in the middle of
`rm` and in the middle of `gc`, each followed by gc."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rt_integ import leftovers
from standins import firecracker_env, guest_ready_standin, open_dir, standin_image

from sealbox.sandbox import control, gc, manager
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive
from sealbox.sandbox.vmm.firecracker import jailer as J

pytestmark = [pytest.mark.integration]

QEMU_KINDS = ["host.lease", "net.netns", "net.firewall", "net.tap", "net.host-nat", "net.veth", "console-fs",
              "instance-files", "cgroup", "qemu-rundir", "qemu-start"]
FC_KINDS = ["firecracker-stage", "firecracker-jailer"]
PHASES = ["planned", "after-do", "done"]
CASES = ([("qemu", k, p) for k in QEMU_KINDS for p in PHASES] + [("qemu", "qemu-start", "during")]
         + [("firecracker", k, p) for k in FC_KINDS for p in PHASES] + [("firecracker", "firecracker-jailer", "during")])


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _vmm_appeared(entry: Any) -> Callable[[], bool]:
    """For 'during': the VMM process exists (QEMU in its cgroup, Firecracker's pid file in its jail)."""
    if entry.kind == "qemu-start":
        dirs = [Path(p).parent for p in entry.params["cgroup_procs"]]
        return lambda: bool(cgroups.pids_in(dirs))
    lay = J.JailLayout.model_validate(entry.params["layout"])
    return lambda: lay.pid_file.exists()


class CrashingState(StateDir):
    """A state dir whose record writes SIGKILL this process at one chosen point."""

    def __init__(self, root: Path, kind: str, phase: str, after_undos: int | None = None) -> None:
        super().__init__(root)
        self.kind, self.phase, self.after_undos, self.undos = kind, phase, after_undos, 0

    def save(self, record: SandboxRecord) -> None:
        entries = record.steps.entries
        if self.after_undos is not None:  # crash during rm/gc: after that many undone steps
            if sum(e.state == "undone" for e in entries) > self.after_undos:
                _die()
            super().save(record)
            return
        last = entries[-1] if entries else None
        hit = last is not None and last.kind == self.kind
        if hit and self.phase == "after-do" and last.state == "done":
            _die()  # the object exists; on disk the entry still says planned
        super().save(record)
        if hit and last.state == self.phase:
            _die()
        if hit and self.phase == "during" and last.state == "planned":
            appeared = _vmm_appeared(last)

            def watch() -> None:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if appeared():
                        _die()
                    time.sleep(0.005)

            threading.Thread(target=watch, daemon=True).start()


def _in_child(fn: Callable[[], None]) -> int:
    """Run fn in a forked child; return the signal that ended it (0 if it exited)."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    with open_dir() as d:  # short paths (QMP socket) and a world-traversable jail base
        base = firecracker_env(tmp_path, monkeypatch, d / "jails")
        guest_ready_standin(monkeypatch)
        yield {"root": d / "state", "base": base, "fc_image": standin_image(tmp_path / "fcimage")}


def _spec(env: dict[str, Any], backend: str, name: str) -> Any:
    if backend == "qemu":
        from imagecache import default_image

        return manager.make_spec(name=name, image_dir=default_image(), vmm="qemu", accel="tcg", memory_mib=256, net="nat")
    return manager.make_spec(name=name, image_dir=env["fc_image"], vmm="firecracker", memory_mib=128, net="nat")


def _nothing_left(env: dict[str, Any], name: str, uid: int | None) -> None:
    state = StateDir(env["root"])
    assert leftovers(state.root, name) == []
    jail = env["base"] / "firecracker" / name
    assert not jail.exists()
    assert not list(jail.parent.glob(f".{name}.staging-*")) if jail.parent.exists() else True
    for version, ctrls in ((1, ["cpu", "memory", "pids"]), (2, [])):
        assert [d for d in J.jailer_cgroup_dirs(version, ctrls, "firecracker", name) if d.exists()] == []
    if uid is not None:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _procs_of(uid):
            time.sleep(0.05)
        assert _procs_of(uid) == [], f"processes of uid {uid} survived"
        assert uid not in Registry().uid_holds()


def _procs_of(uid: int) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid and pid_alive(int(d.name)):
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def _gc_clean(state: StateDir, name: str) -> None:
    report = gc.collect(state)
    assert not report.problems, report.problems
    assert not [k for k in report.kept if k.startswith(name)]


@pytest.mark.parametrize(("backend", "kind", "phase"), CASES, ids=[f"{b}-{k}-{p}" for b, k, p in CASES])
def test_kill_9_at_every_step_then_gc_leaves_nothing(env: dict[str, Any], backend: str, kind: str, phase: str) -> None:
    name = f"kx{os.getpid() % 1000}{abs(hash((backend, kind, phase))) % 10000}"
    spec = _spec(env, backend, name)
    sig = _in_child(lambda: manager.run(spec, CrashingState(env["root"], kind, phase)))
    assert sig == signal.SIGKILL, "the run was not killed where planned"
    state = StateDir(env["root"])
    rec = state.load(name)
    entry = next(e for e in rec.steps.entries if e.kind == kind)
    assert entry.state == ("done" if phase == "done" else "planned")
    lease = next((e for e in rec.steps.entries if e.kind == "host.lease"), None)
    uid = lease.params["lease"]["uid"] if lease else None
    _gc_clean(state, name)
    _nothing_left(env, name, uid)


def _running(env: dict[str, Any], backend: str, name: str) -> tuple[StateDir, int]:
    state = StateDir(env["root"])
    manager.run(_spec(env, backend, name), state)
    return state, Registry().leases()[name].uid


@pytest.mark.parametrize("after", [0, 2, 6])
def test_crash_during_rm_then_gc_leaves_nothing(env: dict[str, Any], after: int) -> None:
    name = f"kr{os.getpid() % 1000}{after}"
    state, uid = _running(env, "firecracker", name)
    sig = _in_child(lambda: control.remove(CrashingState(env["root"], "", "", after_undos=after), name, force=True))
    assert sig == signal.SIGKILL
    assert state.load(name).status == "removing"
    _gc_clean(state, name)
    _nothing_left(env, name, uid)


@pytest.mark.parametrize("after", [1, 5])
def test_crash_during_gc_then_gc_leaves_nothing(env: dict[str, Any], after: int) -> None:
    name = f"kg{os.getpid() % 1000}{after}"
    state, uid = _running(env, "qemu", name)
    rec = state.load(name)
    rec.status = "failed"  # a sandbox gc is to remove
    state.save(rec)
    sig = _in_child(lambda: gc.collect(CrashingState(env["root"], "", "", after_undos=after)))
    assert sig == signal.SIGKILL
    assert state.load(name).status == "removing"
    _gc_clean(state, name)
    _nothing_left(env, name, uid)
