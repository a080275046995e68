"""How much of a VMM's resident memory is guest RAM and how much is the VMM's own (from /proc/PID/smaps)."""

from __future__ import annotations

from pathlib import Path


def rss_split_kib(pid: int, guest_mib: int) -> tuple[int, int]:
    """(RSS of the guest-RAM mapping, RSS of everything else) in KiB. The guest RAM is the first mapping
    whose size is exactly the guest's memory; a VMM maps it once."""
    guest = other = size = 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if line.startswith("Size:"):
            size = int(line.split()[1])
        elif line.startswith("Rss:"):
            rss = int(line.split()[1])
            if size == guest_mib * 1024 and guest == 0:
                guest = rss
            else:
                other += rss
    return guest, other
