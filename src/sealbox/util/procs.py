"""Is a process alive: pid + start time, so that a reused pid never counts (no pydantic here: `ps` imports it)."""

from __future__ import annotations

from pathlib import Path


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks (field 22 of /proc/PID/stat): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int | None, start_time: int | None = None) -> bool:
    if not pid:
        return False
    now = process_start_time(pid)
    if now is None:
        return False
    if start_time is not None and now != start_time:
        return False  # the pid was reused by another process
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
