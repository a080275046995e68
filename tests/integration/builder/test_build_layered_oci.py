"""A container image (output.formats = ["oci"]) rebuilt from the build cache after an edit: the bootstrap is not
rerun, and <name>.oci.tar is the edited image's, byte for byte what a cold `--no-cache` build of the edited spec
writes, never the archive of the build before the edit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from smallbuild import digests

pytestmark = pytest.mark.integration

SPEC = """\
name = "ocilayer"
[packages]
include = ["passwd"]  # /etc/shadow, which the configure step's account locking reads
[oci]
cmd = ["/bin/cat", "/opt/app/hello"]
compression_level = 1
[output]
formats = ["oci"]
[[files]]
source = "files/hello"
dest = "/opt/app/hello"
"""
ARCHIVE = "ocilayer.oci.tar"


def _build(spec: Path, out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "sealbox", "build", str(spec), "--output", str(out), "--json", *args],
                          capture_output=True, text=True, timeout=2400, cwd=spec.parent)
    assert proc.returncode == 0, proc.stderr[-1500:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


def _state(result: dict[str, Any], step: str) -> str:
    return str(next(s["state"] for s in result["steps"] if s["step"] == step))


@pytest.mark.slow
def test_an_edited_container_image_is_rebuilt_from_the_cache_as_a_cold_build_makes_it(tmp_path: Path) -> None:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed (run scripts/setup.sh)")
    project, layers = tmp_path / "project", tmp_path / "layers"
    (project / "files").mkdir(parents=True)
    (project / "files/hello").write_text("hello\n")
    (project / "ocilayer.toml").write_text(SPEC)
    spec = project / "ocilayer.toml"
    first = _build(spec, project / "build/a", "--layer-cache", str(layers))
    assert {e["kind"] for e in first["cache"] if e["action"] == "stored"} >= {"bootstrap", "tree"}, first["cache"]
    before = digests(project / "build/a")

    (project / "files/hello").write_text("changed\n")
    layered = _build(spec, project / "build/b", "--layer-cache", str(layers))
    assert _state(layered, "bootstrap") == "skip", "a files[] edit reran the bootstrap of a container image"
    assert _state(layered, "oci") == "done"
    cold = _build(spec, tmp_path / "cold", "--no-cache")
    after = digests(project / "build/b")
    assert after == digests(tmp_path / "cold"), "the layered container image differs from a cold build"
    assert after[ARCHIVE] != before[ARCHIVE], "the rebuild kept the archive of the build before the edit"
    assert all(e["action"] not in ("hit", "stored") for e in cold["cache"]), cold["cache"]
