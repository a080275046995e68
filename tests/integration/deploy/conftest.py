"""Deploy integration tests: root, real QEMU (TCG) and OVMF, the deploy test image (tests/deployimage.py)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from deployimage import deploy_image  # noqa: E402

TOOLS = ("qemu-system-x86_64", "ip", "ssh", "ssh-keygen", "dnsmasq", "tar", "qemu-img")


@pytest.fixture(scope="session")
def image() -> Path:
    if os.geteuid() != 0:
        pytest.skip("the deploy tests need root (namespaces, QEMU, image builds)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools (run scripts/setup.sh): {', '.join(missing)}")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file():
        pytest.fail("OVMF is not installed (run scripts/setup.sh)")
    return deploy_image()
