"""gc against real leftovers, and cgroups that are not ours.

Sandboxes are set up for real (nat network, console tmpfs, QEMU in its cgroup / a Firecracker jail
with the STAND-IN jailer's VMM and jailer cgroups, registry lease and uid; guest readiness stood in)
and then their records are lost. gc finds every object by its ownership mark and removes it; another
state dir's objects are reported as foreign and left running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_integ import leftovers
from standins import firecracker_env, guest_ready_standin, open_dir, standin_image

from sealbox.errors import SandboxError
from sealbox.sandbox import control, gc, manager
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.state import StateDir, pid_alive
from sealbox.sandbox.steps import StepLog, StepRefused, apply_steps, undo_steps
from sealbox.sandbox.vmm.firecracker import jailer as J

pytestmark = [pytest.mark.integration]


@pytest.fixture
def jail_base() -> Iterator[Path]:
    with open_dir() as d:
        yield d / "jails"


def _fc_objects(base: Path, name: str) -> list[str]:
    found = [f"jail {base / 'firecracker' / name}"] if (base / "firecracker" / name).exists() else []
    found += [f"jailer cgroup {d}" for v, c in ((1, ["cpu", "memory", "pids"]), (2, []))
              for d in J.jailer_cgroup_dirs(v, c, "firecracker", name) if d.exists()]
    return found


def _uid_procs(uids: set[int], wait: float = 0.0) -> list[int]:
    """Live (not zombie) processes running as one of `uids`; with `wait`, until none are left or time is up."""
    deadline = time.monotonic() + wait
    while True:
        found = [p for p in (int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()) if _runs_as(p, uids)]
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _runs_as(pid: int, uids: set[int]) -> bool:
    try:
        return os.stat(f"/proc/{pid}").st_uid in uids and pid_alive(pid)
    except OSError:
        return False


def test_gc_removes_real_leftovers_by_mark_and_only_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jail_base: Path) -> None:
    from imagecache import default_image

    image = default_image()
    firecracker_env(tmp_path, monkeypatch, jail_base)
    guest_ready_standin(monkeypatch)
    # state dirs on a short path: QEMU's QMP socket path must fit in 108 bytes
    ours, theirs = StateDir(jail_base.parent / "ours"), StateDir(jail_base.parent / "theirs")
    tag = f"gl{os.getpid() % 1000}{int(time.time()) % 100}"
    q, f, t = f"{tag}-q", f"{tag}-f", f"{tag}-t"
    fc_image = standin_image(tmp_path / "fcimage")
    try:
        manager.run(manager.make_spec(name=q, image_dir=image, vmm="qemu", accel="tcg", memory_mib=256, net="nat"), ours)
        manager.run(manager.make_spec(name=f, image_dir=fc_image, vmm="firecracker", memory_mib=128, net="nat"), ours)
        manager.run(manager.make_spec(name=t, image_dir=fc_image, vmm="firecracker", memory_mib=128, net="nat"), theirs)
        uids = {n: Registry().leases()[n].uid for n in (q, f, t)}
        for st, n in ((ours, q), (ours, f), (theirs, t)):
            (st.sandbox_dir(n) / "record.json").unlink()  # the records are lost: only marks are left
        before_q, before_f, before_t = leftovers(ours.root, q), leftovers(ours.root, f), leftovers(theirs.root, t)
        kinds = " ".join(before_q + before_f)
        for what in ("netns", "veth", "nft table", "cgroup", "mount", "host registry lease", "uid", "process"):
            assert what in kinds, f"no real {what} to collect: {before_q + before_f}"
        assert _fc_objects(jail_base, f) and _fc_objects(jail_base, t) and _uid_procs({uids[f]}) and _uid_procs({uids[t]})

        dry = gc.collect(ours, dry_run=True)
        assert leftovers(ours.root, q) == before_q and _fc_objects(jail_base, f)  # a dry run changes nothing
        assert any("would remove firecracker-jail" in r for r in dry.removed) and any("would remove cgroup" in r for r in dry.removed)

        report = gc.collect(ours)
        assert not report.problems, report.problems
        assert leftovers(ours.root, q) == [] and leftovers(ours.root, f) == [] and _fc_objects(jail_base, f) == []
        assert not _uid_procs({uids[q], uids[f]}, wait=5) and not {uids[q], uids[f]} & set(Registry().uid_holds())
        assert any(m.startswith("leftover mount") for m in report.removed)
        # the other state dir's sandbox: reported, untouched, still running
        assert leftovers(theirs.root, t) == before_t and _fc_objects(jail_base, t) and _uid_procs({uids[t]})
        foreign = " ".join(report.foreign)
        for what in (f"netns sealbox-{t}", "veth", f"nft-table sealbox-{t}", f"lease {t}", f"firecracker-jail {jail_base}"):
            assert what in foreign, (what, report.foreign)

        report = gc.collect(theirs)
        assert not report.problems and leftovers(theirs.root, t) == [] and _fc_objects(jail_base, t) == []
    finally:
        for st in (ours, theirs):
            gc.collect(st)


@pytest.fixture
def foreign_cgroup() -> Iterator[tuple[cgroups.CgroupLayout, str, list[Path], subprocess.Popen[bytes]]]:
    layout = cgroups.detect()
    if layout.missing():
        pytest.skip(f"cgroup controllers missing here: {layout.missing()}")
    name = cgroups.path_for("0123456789abcdef", f"fc{os.getpid()}")
    dirs = sorted({Path(m) / name for m in layout.mounts().values()})
    for d in dirs:
        d.mkdir(parents=True)
    proc = subprocess.Popen(["sleep", "120"])
    try:
        cgroups.join([d / "cgroup.procs" for d in dirs], proc.pid)
        yield layout, name, dirs, proc
    finally:
        proc.kill()
        proc.wait()
        for d in dirs:
            for target in (d, d.parent, d.parent.parent):
                with contextlib.suppress(OSError):
                    target.rmdir()


def test_cgroup_step_refuses_an_existing_cgroup_and_spares_its_processes(foreign_cgroup) -> None:  # type: ignore[no-untyped-def]
    """Before: CgroupStep adopted the existing cgroup (mkdir exist_ok) and its undo SIGKILLed the process."""
    layout, name, dirs, proc = foreign_cgroup
    step = cgroups.CgroupStep(version=layout.version, name=name, mounts=layout.mounts(), memory_bytes=1 << 28,
                              cpu_quota_us=100_000, cpu_period_us=100_000, pids_max=64)
    log = StepLog()
    with pytest.raises(StepRefused, match="already exists"):
        apply_steps([step], log, lambda: None)  # refused, then the failed run's undo runs
    assert [e.state for e in log.entries] == ["refused"] and undo_steps(log, lambda: None) == []
    time.sleep(0.2)
    assert proc.poll() is None and pid_alive(proc.pid), "the cgroup's process was killed"
    assert all(d.is_dir() for d in dirs) and proc.pid in cgroups.pids_in(dirs)


def test_rm_force_of_an_unreadable_record_removes_its_marked_objects_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          jail_base: Path) -> None:
    """A corrupt record: `rm --force` removes what carries the sandbox's mark (jail, its VMM and jailer
    cgroups, network, lease and uid, console mount) and nothing of another state dir's sandbox."""
    firecracker_env(tmp_path, monkeypatch, jail_base)
    guest_ready_standin(monkeypatch)
    ours, theirs = StateDir(jail_base.parent / "ours"), StateDir(jail_base.parent / "theirs")
    tag = f"rf{os.getpid() % 1000}{int(time.time()) % 100}"
    a, b = f"{tag}-a", f"{tag}-b"
    image = standin_image(tmp_path / "fcimage")
    try:
        for st, n in ((ours, a), (theirs, b)):
            manager.run(manager.make_spec(name=n, image_dir=image, vmm="firecracker", memory_mib=128, net="nat"), st)
        uid = Registry().leases()[a].uid
        (ours.sandbox_dir(a) / "record.json").write_text("{garbage")
        before_b = leftovers(theirs.root, b) + _fc_objects(jail_base, b)
        with pytest.raises(SandboxError, match="corrupt"):
            control.remove(ours, a)
        removed = control.remove(ours, a, force=True)
        assert any(r.startswith("firecracker-jail") for r in removed) and any(r.startswith("mount") for r in removed), removed
        assert leftovers(ours.root, a) == [] and _fc_objects(jail_base, a) == [] and not _uid_procs({uid}, wait=5)
        assert leftovers(theirs.root, b) + _fc_objects(jail_base, b) == before_b
    finally:
        for st in (ours, theirs):
            for n in st.names():
                control.remove(st, n, force=True)


def test_two_state_dirs_run_the_same_name_in_nat_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jail_base: Path) -> None:
    """The second is refused in one line and leaves nothing; removing it never disturbs the first; once
    the first is gone the name is free for the second."""
    firecracker_env(tmp_path, monkeypatch, jail_base)
    guest_ready_standin(monkeypatch)
    a, b = StateDir(jail_base.parent / "a"), StateDir(jail_base.parent / "b")
    name = f"same{os.getpid() % 1000}{int(time.time()) % 100}"
    image = standin_image(tmp_path / "fcimage")
    spec = manager.make_spec(name=name, image_dir=image, vmm="firecracker", memory_mib=128, net="nat")
    try:
        manager.run(spec, a)
        before = leftovers(a.root, name) + _fc_objects(jail_base, name)
        with pytest.raises(SandboxError) as e:
            manager.run(spec, b)
        assert f"sandbox name '{name}' is in use on this host by the state dir {a.root}" in str(e.value)
        assert not b.exists(name) and Registry().leases()[name].owner == a.mark(name)
        assert not [h for h in Registry().uid_holds().values() if h.owner == b.mark(name)]
        assert gc.collect(b).removed == [] and leftovers(a.root, name) + _fc_objects(jail_base, name) == before
        control.remove(a, name, force=True)
        manager.run(spec, b)  # free now
        assert Registry().leases()[name].state_dir == str(b.root)
    finally:
        for st in (a, b):
            if st.exists(name):
                control.remove(st, name, force=True)
    assert leftovers(b.root, name) == [] and _fc_objects(jail_base, name) == []


def test_console_tmpfs_is_refused_over_a_mount_it_did_not_make(tmp_path: Path) -> None:
    from sealbox.sandbox.host.consolefs import ConsoleFsStep, is_mountpoint, mount_source

    d = tmp_path / "console"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "someone-else", str(d)], check=True, timeout=30)
    try:
        step = ConsoleFsStep(path=str(d), size_mib=1, mark="sealbox/0123456789abcdef/x")
        log = StepLog()
        with pytest.raises(StepRefused, match="already a mount point"):
            apply_steps([step], log, lambda: None)
        step.undo({})  # even a replayed undo leaves another's mount
        assert is_mountpoint(d) and mount_source(d) == "someone-else"
    finally:
        subprocess.run(["umount", str(d)], check=False, timeout=30)
    step.do()
    assert mount_source(d) == step.mark
    step.undo({})
    assert not is_mountpoint(d)
