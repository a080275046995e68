"""Debian's reprotest, an oracle nobody here wrote, builds the small spec twice under its variations and compares.

Variations left off, as the tool's own limits require here: `time` (faketime makes apt reject the archive's
Release files), `domain_host` and `user_group` (without sudo they run the build in a user namespace where
mmdebstrap cannot extract). Everything else reprotest varies is on: environment, build path, kernel
(setarch --uname-2.6), ASLR, CPU count, file ordering (disorderfs), home, locales (LANGUAGE=fr_CH:fr),
exec path, time zone, umask.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_reprotest_finds_the_small_build_reproducible(small, tmp_path: Path) -> None:
    if shutil.which("reprotest") is None or shutil.which("disorderfs") is None:
        pytest.fail("reprotest and disorderfs are not installed (run scripts/setup.sh)")
    src = tmp_path / "src"
    shutil.copytree(small.project, src, ignore=shutil.ignore_patterns("build"))  # with its lock: both builds pinned
    # --reuse none: both builds cold (the small fixture's build cached this very spec's layers)
    build = shlex.join([sys.executable, "-m", "sealbox", "build", "tiny.toml", "--output", "out/tiny", "--reuse", "none"])
    proc = subprocess.run(["reprotest", "--variations=+all,-time,-domain_host,-user_group", "--no-diffoscope",
                           "--store-dir", str(tmp_path / "store"), "-s", str(src), build, "out/tiny/*", "--", "null"],
                          capture_output=True, text=True, timeout=3600, cwd=tmp_path)
    tail = "\n".join(line for line in proc.stdout.splitlines()[-20:] if line.strip())
    assert proc.returncode == 0, f"reprotest: {tail}\n{proc.stderr[-2000:]}"
    assert "Reproduction successful" in proc.stdout
    sums = (tmp_path / "store/SHA256SUMS").read_text()
    for name, digest in small.artifacts.items():  # and the same bytes as the reference build
        assert f"{digest}  ./out/tiny/{name}" in sums, sums
