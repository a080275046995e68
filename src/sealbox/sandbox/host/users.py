"""One unprivileged identity per sandbox: its VMM's uid and gid, taken from a reserved range.

A VMM may be compromised by its guest. With one shared VMM user, that VMM could open every other
sandbox's TAP, jail, disks and sockets; with a uid/gid of its own (Firecracker's production
guidance) it reaches only its own. The uid is leased in the host registry (host/registry.py) with
the sandbox and released when the sandbox is removed; it has no passwd entry (nothing logs in as
it), and the gid has the same number.

The range (SEALBOX_UID_RANGE=FIRST-LAST, default 1879048192-1879113727 = 0x70000000 + 64Ki) lies
above systemd's container range (524288-1879048191) and useradd's default subordinate ids
(100000-600100000), below 2^31 (some tools treat uid_t as signed) and below systemd's foreign
range (2147352576-). A range may never touch 0-999, systemd's DynamicUser range (61184-65519) or
65534/65535; within it, a uid is skipped while /etc/subuid or /etc/subgid delegate it (a user
could map it into a user namespace and own the VMM's files), while a passwd or group entry names
it, or while any process runs as it.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Iterable
from pathlib import Path

from sealbox.errors import ResourceExhausted, UsageError

KVM_GROUP = "kvm"
RANGE_ENV = "SEALBOX_UID_RANGE"
DEFAULT_RANGE = (0x70000000, 0x7000FFFF)
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
FORBIDDEN = (
    (0, 999, "system accounts"),
    (61184, 65519, "systemd's DynamicUser range"),
    (65534, 65535, "nobody and (uint16)-1"),
    (2**31, 2**32 - 1, "ids that tools read as negative"),
)


def kvm_gid() -> int | None:
    try:
        return grp.getgrnam(KVM_GROUP).gr_gid
    except KeyError:
        return None


def uid_range(text: str | None = None) -> tuple[int, int]:
    """The configured range (explicit text, else $SEALBOX_UID_RANGE, else the default)."""
    value = text if text is not None else os.environ.get(RANGE_ENV)
    if not value:
        return DEFAULT_RANGE
    first, sep, last = value.strip().partition("-")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        lo = hi = -1
    if not sep or lo < 0 or hi < lo:
        raise UsageError(f"{RANGE_ENV}={value!r} is not FIRST-LAST", hint="e.g. 1879048192-1879113727")
    for a, b, what in FORBIDDEN:
        if lo <= b and a <= hi:
            raise UsageError(f"{RANGE_ENV}={value!r} overlaps {what} ({a}-{b})", hint=f"use a range inside {DEFAULT_RANGE[0]}-{2**31 - 1}")
    return lo, hi


def subid_ranges(files: Iterable[Path] = SUBID_FILES) -> list[tuple[int, int]]:
    """Every delegated range of /etc/subuid and /etc/subgid (`owner:first:count` lines)."""
    found = []
    for path in files:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = line.strip().split(":")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit() or int(parts[2]) == 0:
                continue
            found.append((int(parts[1]), int(parts[1]) + int(parts[2]) - 1))
    return found


def process_uids(proc: Path = Path("/proc")) -> set[int]:
    """Owners of every process (the owner of /proc/PID is the process's effective uid)."""
    uids = set()
    for d in proc.iterdir():
        if d.name.isdigit():
            try:
                uids.add(d.stat().st_uid)
            except OSError:
                continue
    return uids


def _named(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def free_uid(taken: Iterable[int] = (), rng: tuple[int, int] | None = None,
             subids: list[tuple[int, int]] | None = None) -> int:
    """The lowest usable uid of the range that is not in `taken` (leases of the registry)."""
    lo, hi = rng or uid_range()
    busy = set(taken) | process_uids()
    delegated = subid_ranges() if subids is None else subids
    uid = lo
    while uid <= hi:
        clash = next((b for a, b in delegated if a <= uid <= b), None)
        if clash is not None:
            uid = clash + 1  # skip the whole delegated block at once
            continue
        if uid not in busy and not _named(uid):
            return uid
        uid += 1
    raise ResourceExhausted(f"no free sandbox uid left in {lo}-{hi}",
                       hint=f"remove sandboxes ('sealbox gc'), or set {RANGE_ENV} to a larger range")
