"""`sealbox gc`: remove what dead sandboxes left behind.

1. Records: every sandbox whose VMM died while running (`exited`), whose holder died (`orphaned`: an SDK
   pool's members after a crash of the pool's owner), whose creating `sealbox run` died
   (`abandoned`: status creating, owner pid/start time gone), whose creation failed or whose `rm` did
   not finish has its recorded steps undone in reverse (undo works from the record alone) and its
   state dir deleted. Running, stopped and in-creation sandboxes are kept; a sandbox whose lock is
   held by another command is skipped (it is busy, hence not dead).
2. Host leftovers that no record owns (host/leftovers.py, vmm/firecracker/leftovers.py): network
   namespaces, veths, nft tables, registry leases and uids, ip_forward users, cgroups and
   Firecracker jails (with their processes and jailer cgroups) — only those whose ownership mark
   (host/owner.py) names this state dir. Objects of other state dirs, or without a mark, are
   reported as foreign and left alone. Each removal holds that name's lock and re-checks that no
   record exists, so a concurrent `run` (which locks before it reserves) is never raced. Mounts
   under a sandbox dir (its console tmpfs) go with that dir (StateDir.delete).
3. With `orphans` (`gc --orphans`): also the leftovers of state dirs that no longer exist. The host
   registry notes each state dir's path when it first leases (host/registry.py), so a mark's state id
   leads back to a path; if nothing is at that path, no `gc` will ever claim those objects. They are
   found exactly as that state dir's own gc would find them, re-checked for the path before each
   removal (the dir may come back), and the note is dropped once nothing of it is left.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from sealbox.errors import SandboxError
from sealbox.sandbox import status as st
from sealbox.sandbox import stepkinds
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive
from sealbox.sandbox.steps import undo_steps

log = logging.getLogger("sealbox.gc")
LOCK_WAIT = 0.5  # a sandbox whose lock is held this long is busy: skip it, never wait for a `run`
# removal order of leftovers: what runs first, then what it used, the registry lease last
ORDER = ("firecracker-jail", "cgroup", "port-forwarder", "dns-forwarder", "veth", "nft-table", "netns", "netns-placeholder",
         "ip-forward-user", "lease", "uid", "disk-claim")

Action = Literal["remove", "keep"]


def decide(record: SandboxRecord, alive: st.Alive = pid_alive) -> tuple[Action, str]:
    """Whether gc removes this sandbox, and why (pure given `alive`)."""
    status = st.derive(record, alive)
    if status == "abandoned":
        return "remove", f"the sealbox process creating it (pid {record.owner_pid}) died"
    if status == "exited":
        return "remove", f"its VMM (pid {record.vmm.get('pid')}) is gone"
    if status == "orphaned":
        return "remove", f"the process holding it (pid {record.holder_pid}) died"
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
    foreign: list[str] = []  # sealbox-named objects without this state dir's mark: never touched
    problems: list[str] = []


def collect(state: StateDir, *, dry_run: bool = False, orphans: bool = False) -> GcReport:
    report = GcReport()
    if orphans:
        _orphans(report, dry_run)  # first: what they leave is then no longer listed as foreign below
    gone: set[str] = set()  # records removed (or, in a dry run, that would be)
    for name in state.names():
        try:
            with state.lock(name, timeout=LOCK_WAIT):
                if _collect_one(state, name, report, dry_run):
                    gone.add(name)
        except SandboxError as e:
            if "busy" in e.message:
                report.skipped.append(f"{name}: busy (another sealbox command holds its lock)")
            else:
                report.problems.append(f"{name}: {e.message}")
    _leftovers(state, report, dry_run, set(state.names()) - gone)
    _initrd_copies(state, report, dry_run)
    _snapshot_staging(state, report, dry_run)
    return report


def _snapshot_staging(state: StateDir, report: GcReport, dry_run: bool) -> None:
    """Half-written snapshots (guest memory) a crashed `sealbox snapshot` left; finished snapshots are never touched."""
    import shutil

    from sealbox.sandbox import snapshot

    for d in snapshot.stale_staging(state):
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)
        report.removed.append(f"unfinished snapshot {d}")


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


def _collect_one(state: StateDir, name: str, report: GcReport, dry_run: bool) -> bool:
    """Undo and delete one dead sandbox; True if it is (or, dry run, would be) gone."""
    try:
        record = state.load(name)
    except SandboxError as e:
        report.skipped.append(f"{name}: {e.message} (use 'sealbox rm --force {name}')")
        return False
    action, why = decide(record)
    if action == "keep":
        report.kept.append(f"{name}: {why}")
        return False
    kinds = [e.kind for e in record.steps.pending_undo()]
    if dry_run:
        report.removed.append(f"sandbox {name} ({why}): would undo {', '.join(kinds) or 'nothing'}")
        return True
    record.status = "removing"
    record.error = record.error or why
    state.save(record)
    stepkinds.load_all()
    problems = undo_steps(record.steps, lambda: state.save(record))
    if problems:
        report.problems.append(f"{name}: {'; '.join(problems)}")
        return False
    unmounted = state.delete(name)
    report.removed.append(f"sandbox {name} ({why}): undid {', '.join(kinds) or 'nothing'}")
    report.removed += [f"leftover mount {m}" for m in unmounted]
    return True


Remover = tuple[str, str, str, Callable[[], None]]  # (kind, sandbox, description, remove)


def _find(state: StateDir, keep: set[str], report: GcReport, name: str | None = None) -> list[Remover]:
    """Our leftovers (of `name` only, if given), in removal order; foreign ones go to the report."""
    from sealbox.sandbox.host import leftovers
    from sealbox.sandbox.vmm.firecracker import leftovers as fc

    found: list[Remover] = []
    for item in leftovers.find(state, keep, problems=report.problems):
        if not item.ours:
            report.foreign.append(item.describe())
        elif item.sandbox is not None:
            found.append((item.kind, item.sandbox, item.describe(), partial(leftovers.remove, item)))
    try:
        for jail in fc.find(state, keep):
            if not jail.ours:
                report.foreign.append(jail.describe())
            else:
                found.append(("firecracker-jail", jail.jail_id, jail.describe(), partial(fc.remove, jail)))
    except Exception as e:  # noqa: BLE001 - e.g. an unreadable chroot base: report, keep going
        report.problems.append(f"listing Firecracker jails failed: {' '.join(str(e).split())}")
    found = [f for f in found if name is None or f[1] == name]
    return sorted(found, key=lambda f: ORDER.index(f[0]))


def _leftovers(state: StateDir, report: GcReport, dry_run: bool, keep: set[str]) -> None:
    for _kind, name, desc, remove in _find(state, keep, report):
        if dry_run:
            report.removed.append(f"would remove {desc}")
            continue
        try:
            with state.lock(name, timeout=LOCK_WAIT):
                if state.exists(name):
                    continue  # a run reserved the name meanwhile: it owns the object now
                remove()
            report.removed.append(f"leftover {desc}")
        except Exception as e:  # noqa: BLE001 - keep going; the next gc retries
            report.problems.append(f"{desc}: {' '.join(str(e).split())}")


def _orphans(report: GcReport, dry_run: bool) -> None:
    from sealbox.sandbox.host.registry import Registry

    reg = Registry()
    for sid, path in reg.gone_states().items():
        gone, scratch = StateDir(Path(path)), GcReport()  # never ensure()d: only its id and paths are used
        if gone.id != sid:  # a path through a symlink that has changed since: its marks cannot be matched
            report.problems.append(f"orphans of {path}: the path no longer gives state id {sid}; left alone")
            continue
        items = _find(gone, set(), scratch)
        report.problems += scratch.problems
        why = f"state dir {path} no longer exists"
        failed = bool(scratch.problems)
        for _kind, _name, desc, remove in items:
            if dry_run:
                report.removed.append(f"would remove orphan {desc} ({why})")
                continue
            if gone.root.exists():
                report.skipped.append(f"orphans of {path}: the state dir exists again; its own 'sealbox gc' removes them")
                failed = True
                break
            try:
                remove()
                report.removed.append(f"orphan {desc} ({why})")
            except Exception as e:  # noqa: BLE001 - keep going; the next gc --orphans retries
                report.problems.append(f"orphan {desc}: {' '.join(str(e).split())}")
                failed = True
        if not dry_run and not failed:
            reg.forget_state(sid)


def remove_by_name(state: StateDir, name: str) -> list[str]:
    """For `rm --force` of an unreadable record: remove the host objects carrying its mark.

    The caller holds the sandbox's lock."""
    report = GcReport()
    done = []
    for _kind, _name, desc, remove in _find(state, set(state.names()) - {name}, report, name):
        remove()
        done.append(desc)
    if report.problems:
        raise SandboxError(f"could not list every leftover of {name!r}: {'; '.join(report.problems)}", hint="retry, or run 'sealbox gc'")
    return done
