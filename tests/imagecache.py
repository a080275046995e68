"""The default image, built once per machine for the integration tests and reused while nothing changed.

`sealbox build` itself decides whether the cached output is still valid (same spec, lock, tools and
builder code), so a stale image is never used; the first run on a fresh machine builds it (~1-2 min).
SEALBOX_TEST_IMAGE=<build dir> uses an existing image instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "images"


def default_image() -> Path:
    env = os.environ.get("SEALBOX_TEST_IMAGE")
    if env:
        path = Path(env)
        if not (path / "manifest.json").is_file():
            pytest.fail(f"SEALBOX_TEST_IMAGE={env} is not a sealbox build directory (no manifest.json)")
        return path
    if os.geteuid() != 0:
        pytest.skip("building the default image needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (run scripts/setup.sh)")
    out = CACHE / "default"
    proc = subprocess.run(
        [sys.executable, "-m", "sealbox", "build", "--output", str(out), "--lock", str(CACHE / "default.sealbox.lock")],
        capture_output=True, text=True, timeout=1200,
    )
    if proc.returncode != 0:
        pytest.fail(f"sealbox build failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out
