"""`run --vmm firecracker` end to end through the manager with the firecracker helper's STAND-IN jailer
(tests/integration/firecracker/standin_jailer.py; the real binaries and working KVM are absent here).
The stand-in never boots a guest, so the run must fail at readiness with the console tail — and leave
nothing: no jail, no jailer cgroups, no netns, no record."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from rt_integ import leftovers

from sealbox.errors import SandboxError
from sealbox.sandbox import manager, planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.vmm.firecracker import jailer as J

pytestmark = [pytest.mark.integration]
STANDIN = Path(__file__).resolve().parents[1] / "firecracker" / "standin_jailer.py"


@pytest.fixture
def fc_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if not STANDIN.is_file():
        pytest.skip("the firecracker stand-in jailer is not in this tree")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    jailer = bindir / "jailer"
    jailer.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
    jailer.chmod(0o755)
    fc = bindir / "firecracker"
    fc.write_bytes(b"\x7fELF stand-in firecracker (never executed)")
    monkeypatch.setenv("SEALBOX_FIRECRACKER", str(fc))
    monkeypatch.setenv("SEALBOX_JAILER", str(jailer))
    monkeypatch.setenv("SEALBOX_JAILER_CHROOT_BASE", str(tmp_path / "jails"))
    monkeypatch.setenv("SEALBOX_CACHE_DIR", str(tmp_path / "cache"))  # the decompressed-initrd copy goes here
    # the manager only lets Firecracker run with functional KVM: pretend (the stand-in needs none)
    monkeypatch.setattr(planning, "_kvm", lambda root, dry_run: KvmStatus(present=True, functional=True, detail="stand-in"))
    monkeypatch.setattr("pathlib.Path.exists", _kvm_exists(Path.exists))
    return tmp_path


def _kvm_exists(real):  # type: ignore[no-untyped-def]
    def exists(self: Path, *a, **kw) -> bool:  # type: ignore[no-untyped-def]
        return True if str(self) == "/dev/kvm" else real(self, *a, **kw)

    return exists


def _image(d: Path) -> Path:
    import hashlib
    import json

    d.mkdir()
    import zstandard

    files = {"vmlinux": b"\x7fELF" + b"k" * 4092, "initrd.cpio.zst": zstandard.ZstdCompressor().compress(b"i" * 8192)}
    for n, b in files.items():
        (d / n).write_bytes(b)
        (d / n).chmod(0o644)
    (d / "manifest.json").write_text(json.dumps({
        "schema": "sealbox.manifest/v1", "name": "standin", "kernel": {"version": "0-standin", "cmdline": ["console=ttyS0"]},
        "boot": {"vmlinux": "vmlinux", "initrd": "initrd.cpio.zst"},
        "artifacts": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()}}))
    return d


def test_firecracker_run_fails_cleanly_with_the_standin(fc_env: Path) -> None:
    state = StateDir(fc_env / "state")
    name = f"rtfc{int(time.time()) % 100000}"
    spec = manager.make_spec(name=name, image_dir=_image(fc_env / "image"), vmm="firecracker", memory_mib=128, timeout=6)
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
