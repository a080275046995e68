"""Start-up stays small: `import sealbox` loads nothing else of sealbox, and `sealbox ps` — built on the SDK —
does not load what only creating or using a sandbox needs (run/planning, the image spec, the SDK's command and
file machinery)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("sealbox.spec", "sealbox.builder", "sealbox.sandbox.planning", "sealbox.sandbox.lifecycle", "sealbox.sandbox.image",
         "sealbox.sdk.commands", "sealbox.sdk.files", "sealbox.sdk.options", "sealbox.sdk.pool", "ray")


def loaded(code: str, cwd: Path) -> set[str]:
    p = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                       capture_output=True, text=True, timeout=60, cwd=cwd)
    assert p.returncode == 0, p.stderr[-2000:]
    return set(json.loads(p.stdout.splitlines()[-1]))


def test_import_sealbox_is_light(tmp_path: Path) -> None:
    bare = loaded("pass", tmp_path)  # what the interpreter itself (site, .pth files) loads
    assert loaded("import sealbox", tmp_path) - bare == {"sealbox"}
    mods = loaded("import sealbox; sealbox.Sandbox", tmp_path)
    assert "sealbox.sdk.sandbox" in mods and not {m for m in mods if m.startswith(HEAVY)}


def test_ps_loads_no_create_code(tmp_path: Path) -> None:
    mods = loaded(f"from sealbox.cli.main import main\nassert main(['ps', '--state-dir', {str(tmp_path / 'state')!r}]) == 0", tmp_path)
    assert "sealbox.sdk.sandbox" in mods  # the CLI lists through the SDK
    heavy = {m for m in mods if m.startswith(HEAVY)}
    assert not heavy, sorted(heavy)
