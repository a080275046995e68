from __future__ import annotations

from pathlib import Path

from sealbox.sandbox.model import DiskSpec


def disks(tmp_path: Path, *specs: str) -> tuple[DiskSpec, ...]:
    """--disk arguments ('FILE[:ro|:rw]') for files in tmp_path."""
    return tuple(DiskSpec.parse(str(tmp_path / s)) for s in specs)
