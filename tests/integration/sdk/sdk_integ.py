"""Helpers for the SDK integration tests."""

from __future__ import annotations

from pathlib import Path


def ssh_masters(state_dir: Path, name: str | None = None) -> list[int]:
    """This machine's ssh master processes (ssh -M) for sandboxes of `state_dir` (of sandbox `name` only, if given)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            mine = any(str(state_dir / "sandboxes" / (name or "")).encode() in a for a in argv)
            if argv and argv[0].endswith(b"ssh") and b"ControlMaster=yes" in argv and mine:
                found.append(int(d.name))
    return found
