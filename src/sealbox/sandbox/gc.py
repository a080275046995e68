"""`sealbox gc`: remove what dead sandboxes left behind.

1. Records: every sandbox whose VMM died while running (`exited`), whose creating `sealbox run` died
   (`abandoned`: status creating, owner pid/start time gone), whose creation failed or whose `rm` did
   not finish has its recorded steps undone in reverse (undo works from the record alone) and its
   state dir deleted. Running, stopped and in-creation sandboxes are kept; a sandbox whose lock is
   held by another command is skipped (it is busy, hence not dead).
2. Host leftovers that no record owns: sealbox-named netns, veths, nft tables, address files,
   ip_forward users (host/network.find_leftovers) and cgroups `<hierarchy>/sealbox/<name>`.
   Those names are host-global, but a state dir only removes names it has used itself (it has a
   lock file for every sandbox name it ever created), so gc with one state dir never tears down a
   live sandbox of another. Each removal holds that name's lock and re-checks that no record exists,
   so a concurrent `run` (which locks before it reserves) is never raced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from sealbox.errors import SandboxError
from sealbox.sandbox import status as st
from sealbox.sandbox import stepkinds
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive
from sealbox.sandbox.steps import undo_steps
from sealbox.util.names import NAME_RE

log = logging.getLogger("sealbox.gc")
LOCK_WAIT = 0.5  # a sandbox whose lock is held this long is busy: skip it, never wait for a `run`
CGROUP_PARENT = "sealbox"

Action = Literal["remove", "keep"]


def decide(record: SandboxRecord, alive: st.Alive = pid_alive) -> tuple[Action, str]:
    """Whether gc removes this sandbox, and why (pure given `alive`)."""
    status = st.derive(record, alive)
    if status == "abandoned":
        return "remove", f"the sealbox process creating it (pid {record.owner_pid}) died"
    if status == "exited":
        return "remove", f"its VMM (pid {record.vmm.get('pid')}) is gone"
    if status == "failed":
        return "remove", f"its creation failed ({record.error or 'no record'})"
    if status == "removing":
        return "remove", "an earlier 'sealbox rm' did not finish"
    if status == "stopped":
        return "keep", "stopped by the user ('sealbox rm' removes it)"
    return "keep", status


class GcReport(BaseModel):
    removed: list[str] = []  # one line per removed sandbox or leftover
    kept: list[str] = []
    skipped: list[str] = []  # busy or unreadable: not touched
    foreign: list[str] = []  # sealbox-named objects of names this state dir never used
    problems: list[str] = []


def known_names(state: StateDir) -> set[str]:
    """Every sandbox name this state dir has used: lock files persist after rm (see module doc)."""
    from sealbox.sandbox.host import ipam

    names = {p.stem for p in (state.root / "locks").glob("*.lock") if NAME_RE.fullmatch(p.stem)}
    return names | set(ipam.read_allocations(state.root)) | set(state.names())


def collect(state: StateDir, *, dry_run: bool = False) -> GcReport:
    report = GcReport()
    for name in state.names():
        try:
            with state.lock(name, timeout=LOCK_WAIT):
                _collect_one(state, name, report, dry_run)
        except SandboxError as e:
            if "busy" in e.message:
                report.skipped.append(f"{name}: busy (another sealbox command holds its lock)")
            else:
                report.problems.append(f"{name}: {e.message}")
    _leftovers(state, report, dry_run)
    _initrd_copies(state, report, dry_run)
    return report


def _initrd_copies(state: StateDir, report: GcReport, dry_run: bool) -> None:
    """Decompressed initramfs copies (sandbox/initrd_cache.py) that no sandbox here names."""
    from sealbox.sandbox import initrd_cache

    keep = set()
    for name in state.names():
        try:
            path = state.load(name).image.get("boot_initrd")
        except SandboxError:
            continue
        if isinstance(path, str) and path.endswith(initrd_cache.SUFFIX):
            keep.add(Path(path).name[: -len(initrd_cache.SUFFIX)])
    if dry_run:
        return
    report.removed += [f"cached initramfs {p.name}" for p in initrd_cache.prune(keep)]


def _collect_one(state: StateDir, name: str, report: GcReport, dry_run: bool) -> None:
    try:
        record = state.load(name)
    except SandboxError as e:
        report.skipped.append(f"{name}: {e.message} (use 'sealbox rm --force {name}')")
        return
    action, why = decide(record)
    if action == "keep":
        report.kept.append(f"{name}: {why}")
        return
    kinds = [e.kind for e in record.steps.pending_undo()]
    if dry_run:
        report.removed.append(f"sandbox {name} ({why}): would undo {', '.join(kinds) or 'nothing'}")
        return
    record.status = "removing"
    record.error = record.error or why
    state.save(record)
    stepkinds.load_all()
    problems = undo_steps(record.steps, lambda: state.save(record))
    if problems:
        report.problems.append(f"{name}: {'; '.join(problems)}")
        return
    state.delete(name)
    report.removed.append(f"sandbox {name} ({why}): undid {', '.join(kinds) or 'nothing'}")


def _cgroup_leftovers(keep: set[str]) -> list[tuple[str, Path]]:
    from sealbox.sandbox.host import cgroups

    found = []
    try:
        mounts = cgroups.detect().mounts()
    except OSError:
        return []
    for mount in sorted(set(mounts.values())):
        parent = Path(mount) / CGROUP_PARENT
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            if d.is_dir() and NAME_RE.fullmatch(d.name) and d.name not in keep:
                found.append((d.name, d))
    return found


def remove_cgroup_dir(path: Path) -> None:
    from sealbox.sandbox.host import cgroups

    left = cgroups.kill_all([path])
    if left:
        raise SandboxError(f"processes {left} in {path} survived SIGKILL")
    try:
        path.rmdir()
    except FileNotFoundError:
        pass


def _leftovers(state: StateDir, report: GcReport, dry_run: bool) -> None:
    from sealbox.sandbox.host.network import find_leftovers, remove_leftover

    keep = set(state.names())
    ours = known_names(state)
    items: list[tuple[str, str, object]] = []  # (sandbox, description, what)
    try:
        for item in find_leftovers(state, keep):
            items.append((item.sandbox or "", item.describe(), item))
    except Exception as e:  # noqa: BLE001 - e.g. pyroute2/nft missing: report, still do cgroups
        report.problems.append(f"listing network leftovers failed: {' '.join(str(e).split())}")
    for name, path in _cgroup_leftovers(keep):
        items.append((name, f"cgroup {path}", path))
    for name, desc, what in items:
        if name not in ours:
            report.foreign.append(desc)
            continue
        if dry_run:
            report.removed.append(f"would remove {desc}")
            continue
        try:
            with state.lock(name, timeout=LOCK_WAIT):
                if state.exists(name):
                    continue  # a run reserved the name meanwhile: it owns the object now
                if isinstance(what, Path):
                    remove_cgroup_dir(what)
                else:
                    remove_leftover(what, state)  # type: ignore[arg-type]
            report.removed.append(f"leftover {desc}")
        except Exception as e:  # noqa: BLE001 - keep going; the next gc retries
            report.problems.append(f"{desc}: {' '.join(str(e).split())}")


def remove_by_name(state: StateDir, name: str) -> list[str]:
    """For `rm --force` of an unreadable record: remove the host objects its name identifies.

    The caller holds the sandbox's lock."""
    from sealbox.sandbox.host.network import find_leftovers, remove_leftover

    done = []
    keep = set(state.names()) - {name}
    for item in find_leftovers(state, keep):
        if item.sandbox == name:
            remove_leftover(item, state)
            done.append(item.describe())
    for owner, path in _cgroup_leftovers(keep):
        if owner == name:
            remove_cgroup_dir(path)
            done.append(f"cgroup {path}")
    return done
