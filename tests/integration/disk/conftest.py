"""Disk-format integration tests: the default image (tests/imagecache.py) carries disk.raw, disk.qcow2,
disk.vhd and disk.gcp.tar.gz; every check here reads or boots those real files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from imagecache import default_image


@pytest.fixture(scope="session")
def disk_image() -> Path:
    """The build directory of an image with every disk format."""
    img = default_image()
    boot = json.loads((img / "manifest.json").read_text())["boot"]
    missing = [k for k in ("disk", "qcow2", "vhd", "gcp") if not boot.get(k)]
    if missing:
        pytest.skip(f"the test image has no {', '.join(missing)} output")
    return img


@pytest.fixture(scope="session")
def qemu_ovmf() -> None:
    if shutil.which("qemu-system-x86_64") is None or not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file():
        pytest.skip("needs qemu-system-x86 and ovmf")
