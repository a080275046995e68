"""/proc/self/mountinfo, parsed once for everyone (cgroup discovery, chroot-base checks, doctor)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")
_OCTAL = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: Path
    options: tuple[str, ...]  # per-mount options (ro, nodev, noexec ...)
    fstype: str
    source: str
    super_options: tuple[str, ...]  # per-superblock options (for cgroup v1: the controllers)


def unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as three-digit octal escapes."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    """Every well-formed line, in order (later lines are mounted over earlier ones); others are skipped."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, rfields = left.split(" "), right.split(" ")
        if not sep or len(fields) < 6 or not rfields[0]:
            continue
        rfields += ["", ""]
        out.append(Mount(Path(unescape(fields[4])), tuple(fields[5].split(",")), rfields[0], unescape(rfields[1]),
                         tuple(o for o in rfields[2].split(",") if o)))
    return out


def read(text: str | None = None, path: Path = MOUNTINFO) -> list[Mount]:
    return parse(text if text is not None else path.read_text())


def mount_of(path: Path, mounts: list[Mount]) -> Mount | None:
    """The mount holding `path` (already resolved by the caller): the deepest, latest mount point above it."""
    best: Mount | None = None
    for m in mounts:
        above = path == m.mount_point or m.mount_point in path.parents
        if above and (best is None or len(m.mount_point.parts) >= len(best.mount_point.parts)):
            best = m
    return best
