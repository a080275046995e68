from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# Make smallbuild importable without turning tests into packages.
sys.path.insert(0, str(Path(__file__).parent))

from smallbuild import digests, write_spec  # noqa: E402


@dataclass
class Small:
    project: Path  # the spec, its files and (after the reference build) its lock
    reference: Path  # the output of one uninterrupted build
    artifacts: dict[str, str]  # name -> sha256 of the reference build
    lock: str  # the lock file the reference build wrote
    seconds: float


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """The small spec built once, uninterrupted: the reference every interrupted or concurrent build must equal."""
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed (run scripts/setup.sh)")
    project = tmp_path_factory.mktemp("small")
    spec = write_spec(project)
    out = project / "build" / "tiny"
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sealbox", "build", str(spec), "--output", str(out), "--json"],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"the small reference build failed: {proc.stderr.strip().splitlines()[-1:]}")
    assert json.loads(proc.stdout)["lock_written"] is True
    return Small(project, out, digests(out), (project / "tiny.lock").read_text(), time.monotonic() - t0)
