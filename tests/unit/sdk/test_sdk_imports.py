"""Start-up stays small: `import sealbox` loads nothing else of sealbox, and `sealbox ps` — built on the SDK —
does not load what only creating or using a sandbox needs (run/planning, the image spec, the SDK's command and
file machinery)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


# What the cheap verbs must not load, and why:
#   pydantic, pydantic_core, annotated_types  ~150 ms of imports and schema building, more than the rest of `ps`
#                                             (records are read by sandbox/recordview.py; the model stays the writer)
#   importlib.metadata                        scans every installed distribution (pydantic's plugin lookup did)
#   HEAVY                                     creating or using a sandbox, building an image
LIGHT_DENY = ("pydantic", "pydantic_core", "annotated_types", "importlib.metadata", *HEAVY)


def _records(root: Path) -> None:
    """One sandbox of each status `ps --all` shows, written by the real writer (the pydantic model)."""
    import os
    import time

    from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
    from sealbox.sandbox.steps import StepEntry

    state = StateDir(root)
    me, start = os.getpid(), process_start_time(os.getpid())
    publish = StepEntry(kind="net.publish", params={}, state="done", outputs={"published": ["127.0.0.1:8080->80/tcp"]})
    cgroup = StepEntry(kind="cgroup", params={}, state="done", outputs={"dirs": [str(root / "no-cgroup")]})
    for name, status, vmm, owner in (("up", "running", {"backend": "qemu", "accel": "tcg", "pid": me, "start_time": start}, None),
                                     ("gone", "running", {"backend": "qemu", "pid": 2**22 + 1, "start_time": 1}, None),
                                     ("new", "creating", {}, me), ("off", "stopped", {"backend": "qemu"}, None)):
        r = SandboxRecord(name=name, status=status, created_at=time.time(), vmm=vmm, owner_pid=owner,
                          owner_start=start if owner else None, spec={"cpus": 2, "memory_mib": 256, "labels": {"team": "a"}},
                          network={"guest_ip": "10.47.0.2"}, image={"name": "default"})
        r.steps.entries += [publish, cgroup]
        state.reserve(r)
    (state.sandbox_dir("off") / "console").mkdir()
    (state.sandbox_dir("off") / "console" / "console.log").write_bytes(b"hello\n")


@pytest.mark.parametrize("argv", [["ps"], ["ps", "--all"], ["ps", "--all", "--json"], ["ps", "--label", "team=a"],
                                  ["inspect", "off"], ["inspect", "gone"], ["logs", "off"], ["--version"], ["--help"]], ids=" ".join)
def test_cheap_verbs_load_no_pydantic(tmp_path: Path, argv: list[str]) -> None:
    state = tmp_path / "state"
    _records(state)
    code = f"import sys\nfrom sealbox.cli.main import main\nrc = main({[*argv, '--state-dir', str(state)] if argv[0][0] != '-' else argv!r})"
    mods = loaded(f"{code}\nassert rc == 0, rc", tmp_path)
    denied = {m for m in mods if m.startswith(LIGHT_DENY)}
    assert not denied, sorted(denied)


def test_help_and_version_load_no_command_module(tmp_path: Path) -> None:
    for argv in (["--help"], ["--version"]):
        mods = loaded(f"from sealbox.cli.main import main\nassert main({argv!r}) == 0", tmp_path)
        assert {m for m in mods if m.startswith("sealbox.")} <= {"sealbox.cli", "sealbox.cli.main", "sealbox.errors"}, argv
