"""`run --vmm firecracker` end to end through the manager with the firecracker helper's STAND-IN jailer
(tests/integration/firecracker/standin_jailer.py; the real binaries and working KVM are absent here).
The stand-in never boots a guest, so the run must fail at readiness with the console tail — and leave
nothing: no jail, no jailer cgroups, no netns, no record."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rt_integ import leftovers
from standins import firecracker_env, standin_image

from sealbox.errors import SandboxError
from sealbox.sandbox import manager
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.firecracker import jailer as J

pytestmark = [pytest.mark.integration]


@pytest.fixture
def fc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    firecracker_env(tmp_path, monkeypatch)
    return tmp_path


def test_firecracker_run_fails_cleanly_with_the_standin(fc_env: Path) -> None:
    state = StateDir(fc_env / "state")
    name = f"rtfc{int(time.time()) % 100000}"
    spec = manager.make_spec(name=name, image_dir=standin_image(fc_env / "image"), vmm="firecracker", memory_mib=128, timeout=6)
    dry = manager.dry_run(spec, state)
    assert dry["vmm"] == "firecracker" and dry["config"]["machine-config"]["mem_size_mib"] == 128
    with pytest.raises(SandboxError) as e:
        manager.run(spec, state)
    msg = str(e.value)
    assert "not ready within 6s" in msg and "stand-in console: firecracker" in msg, msg
    assert leftovers(state.root, name) == []
    assert not (fc_env / "jails" / "firecracker" / name).exists()
    for version, ctrls in ((1, ["cpu", "memory", "pids"]), (2, [])):
        assert [d for d in J.jailer_cgroup_dirs(version, ctrls, "firecracker", name, parent="sealbox") if d.exists()] == []
