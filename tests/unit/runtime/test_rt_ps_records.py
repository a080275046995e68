"""`sealbox ps` on records whose free-form fields (spec, vmm, network, step outputs: any JSON the schema allows) hold
values sealbox never writes: each such sandbox is still listed — the odd value shown as unknown — and the others with
it; one odd record never takes `ps` down."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sealbox.cli.main import main
from sealbox.sandbox.state import SandboxRecord, StateDir
from sealbox.sandbox.steps import StepEntry

ODD: dict[str, dict[str, Any]] = {
    "cpus-text": {"spec": {"cpus": "two"}},
    "cpus-bool": {"spec": {"cpus": True, "memory_mib": False}},
    "mem-list": {"spec": {"memory_mib": [512]}},
    "ports-number": {"steps": [StepEntry(kind="net.publish", params={}, state="done", outputs={"published": 5})]},
    "dirs-number": {"status": "running", "vmm": {"pid": 2**22 + 1},
                    "steps": [StepEntry(kind="cgroup", params={}, state="done", outputs={"dirs": 7})]},
    "pid-self": {"status": "running", "vmm": {"pid": "self"}},
    "pid-list": {"status": "running", "vmm": {"pid": [1], "start_time": {}}},
}


def _write(state: StateDir, name: str, odd: dict[str, Any]) -> None:
    steps = odd.pop("steps", [])
    r = SandboxRecord(name=name, status=odd.pop("status", "stopped"), created_at=time.time(), **odd)
    r.steps.entries += steps
    state.reserve(r)


@pytest.mark.parametrize("case", sorted(ODD))
def test_an_odd_value_in_a_free_form_field_is_shown_as_unknown(capsys: pytest.CaptureFixture[str], tmp_path: Path, case: str) -> None:
    state = StateDir(tmp_path / "s")
    _write(state, "aaa-fine", {"spec": {"cpus": 2, "memory_mib": 256}})
    _write(state, case, dict(ODD[case]))
    assert main(["ps", "--all", "--json", "--state-dir", str(state.root)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["aaa-fine"]["cpus"] == 2 and rows["aaa-fine"]["memory_mib"] == 256
    odd = rows[case]
    assert odd["cpus"] is None and odd["memory_mib"] is None and odd["ports"] == []
    assert odd["status"] in ("stopped", "exited")  # a pid that is not a number is no live process
    assert main(["ps", "--all", "--state-dir", str(state.root)]) == 0  # the table too
    assert case in capsys.readouterr().out


@pytest.mark.parametrize("stray", ["not_a_name", "-rf", "x\x1b[2Jy", "a" * 65])
def test_a_directory_that_is_no_sandbox_name_is_not_listed(capsys: pytest.CaptureFixture[str], tmp_path: Path, stray: str) -> None:
    """reserve() makes only checked names; anything else in sandboxes/ is not sealbox's (and a name with control
    characters must not reach the terminal)."""
    state = StateDir(tmp_path / "s")
    _write(state, "fine", {})
    (state.sandboxes / stray).mkdir()
    assert main(["ps", "--all", "--state-dir", str(state.root)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and [line.split()[0] for line in out.splitlines()[1:]] == ["fine"]
