"""docs/sdk.md's examples are tests: every ```python block, in order, runs as one script against the test image
(the only change: IMAGE names it), and must leave nothing behind. The README's five lines are the doc's first block."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sealbox.sdk import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ROOT = Path(__file__).resolve().parents[3]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
PLACEHOLDER = '"build/default"'


def blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_readme_shows_the_first_example() -> None:
    first = blocks(ROOT / "docs" / "sdk.md")[0]
    assert first in blocks(ROOT / "README.md")


def test_docs_examples_run(sdk_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code = "\n".join(blocks(ROOT / "docs" / "sdk.md"))
    assert code.count(PLACEHOLDER) == 1
    script = tmp_path / "sdk_examples.py"
    script.write_text(code.replace(PLACEHOLDER, repr(str(sdk_env.image))))
    before = {i.name for i in Sandbox.list(all=True, state_dir=sdk_env.state_dir)}
    p = subprocess.run([sys.executable, str(script)], env=sdk_env.env(), capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert {i.name for i in Sandbox.list(all=True, state_dir=sdk_env.state_dir)} == before
    report = sdk_env.host.gc(dry_run=True)
    assert not report.removed and not report.problems, report  # no host object of ours without a record
