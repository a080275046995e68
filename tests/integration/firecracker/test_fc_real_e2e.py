"""End to end with the REAL firecracker and jailer, exactly when the README says: SEALBOX_FIRECRACKER and
SEALBOX_JAILER point at the binaries and KVM is functional (sealbox's own vCPU probe). Otherwise it skips with an
allow-listed reason (tests/strict.py). It builds its own guest: the default image (tests/imagecache.py), which
carries the vmlinux and initrd Firecracker boots.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from fc_testlib import make_plan

from imagecache import default_image
from sealbox.guest.instance import InstanceData, render
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.host.kvm import probe_kvm
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings
from sealbox.sandbox.vmm.firecracker.snapshot import read_manifest
from strict import skip_allowed

pytestmark = [pytest.mark.integration]


def requirements() -> tuple[Path, Path, Path]:
    """(firecracker, jailer, image dir), or an allow-listed skip naming what is missing. Checked in the order that
    costs least: the variables, then the KVM probe (~2 s), and only then the image build."""
    fc, jl = os.environ.get("SEALBOX_FIRECRACKER"), os.environ.get("SEALBOX_JAILER")
    if not (fc and jl):
        skip_allowed("firecracker", "set SEALBOX_FIRECRACKER and SEALBOX_JAILER to the binaries to run this test")
    missing = [f"{var}={path}" for var, path in (("SEALBOX_FIRECRACKER", fc), ("SEALBOX_JAILER", jl)) if not Path(path).is_file()]
    if missing:
        pytest.fail(f"{', '.join(missing)}: no such file")  # set but wrong: a mistake, not an absent binary
    kvm = probe_kvm()
    if not kvm.functional:
        skip_allowed("kvm", kvm.summary)
    image = default_image()
    for name in ("vmlinux", "initrd.cpio.zst"):
        assert (image / name).is_file(), f"the default image {image} has no {name}"
    return Path(fc), Path(jl), image


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def sandbox(tmp_path: Path):
    fc, jl, image = requirements()
    name = f"sbe2e-{secrets.token_hex(3)}"
    ns = f"sealbox-{name}"
    ip("netns", "add", ns)
    ip("-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
    ip("-n", ns, "addr", "add", "10.213.0.5/30", "dev", "tap0")
    ip("-n", ns, "link", "set", "tap0", "up")
    try:
        plan = make_plan(tmp_path, name=name, uid=64125, gid=64125)
        plan = plan.model_copy(update={"kernel": image / "vmlinux", "initrd": image / "initrd.cpio.zst"})
        (tmp_path / "sandbox").mkdir()
        inst = plan.instance_disk
        inst.write_bytes(render(InstanceData(hostname=name, address=ipaddress.IPv4Interface("10.213.0.6/30"),
                                             gateway=ipaddress.IPv4Address("10.213.0.5"))))
        os.chmod(inst, 0o644)
        settings = FirecrackerSettings(firecracker=fc, jailer=jl, chroot_base=tmp_path / "jails", start_timeout=20)
        yield FirecrackerBackend(settings), plan
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def wait_for(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.firecracker
@pytest.mark.boot
def test_boot_inspect_pause_snapshot_stop_and_cleanup(sandbox, tmp_path: Path) -> None:
    from sealbox.sandbox.state import SandboxRecord

    backend, plan = sandbox
    backend.check_host(plan)
    log = StepLog()
    apply_steps(backend.steps(plan), log, lambda: None)
    record = SandboxRecord(name=plan.spec.name, status="running", created_at=time.time(), steps=log)
    lay = backend.layout(plan)
    try:
        assert oct(os.stat(lay.api_sock).st_mode & 0o777) == oct(0o200)
        assert wait_for(lambda: "Linux version" in plan.console_log.read_text(errors="replace"), 60), "no kernel output on the console"
        info = backend.inspect(record)
        assert info["instance"]["state"] == "Running" and info["instance"]["vmm_version"].startswith("1.16")
        assert info["machine_config"]["vcpu_count"] == plan.spec.cpus
        assert [d["drive_id"] for d in info["vm_config"]["drives"]] == ["instance"]
        backend.pause(record)
        assert backend.inspect(record)["instance"]["state"] == "Paused"
        backend.resume(record)
        m = backend.snapshot(record, tmp_path / "snap", resume=True)
        assert read_manifest(tmp_path / "snap").memory.size >= plan.spec.memory_mib << 20
        assert m.drives[0].in_jail == J.INSTANCE_DISK
        backend.stop(record, timeout=30)
    finally:
        problems = undo_steps(log, lambda: None)
    assert problems == []
    assert not lay.jail_dir.exists()
    assert not any(d.exists() for d in J.jailer_cgroup_dirs(plan.cgroup.version, ["cpu", "memory", "pids"], lay.exec_name, lay.jail_id,
                                                    parent=cgroups.jailer_parent(plan.cgroup)))


def test_the_gate_runs_the_e2e_exactly_when_binaries_are_given_and_kvm_is_functional(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import sys

    from sealbox.sandbox.host.kvm import KvmStatus
    from strict import ALLOWED

    this = sys.modules[__name__]
    built: list[bool] = []
    image = tmp_path / "image"
    monkeypatch.setattr(this, "default_image", lambda: built.append(True) or image)  # stand-in for the build
    for var in ("SEALBOX_FIRECRACKER", "SEALBOX_JAILER"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        requirements()
    assert str(skipped.value).startswith(ALLOWED["firecracker"]) and "SEALBOX_JAILER" in str(skipped.value)
    fc, jl = tmp_path / "firecracker", tmp_path / "jailer"
    monkeypatch.setenv("SEALBOX_FIRECRACKER", str(fc))
    monkeypatch.setenv("SEALBOX_JAILER", str(jl))
    with pytest.raises(pytest.fail.Exception, match="no such file"):
        requirements()  # variables pointing nowhere are a mistake, not an allowed skip
    fc.write_bytes(b"")
    jl.write_bytes(b"")
    monkeypatch.setattr(this, "probe_kvm", lambda: KvmStatus(present=True, functional=False, detail="no vCPU progress"))
    with pytest.raises(pytest.skip.Exception) as skipped:
        requirements()
    assert str(skipped.value).startswith(ALLOWED["kvm"]) and "no vCPU progress" in str(skipped.value) and not built
    (image).mkdir()
    (image / "vmlinux").write_bytes(b"\x7fELF")
    (image / "initrd.cpio.zst").write_bytes(b"")
    monkeypatch.setattr(this, "probe_kvm", lambda: KvmStatus(present=True, functional=True, api_version=12, detail="ran"))
    assert requirements() == (fc, jl, image) and built == [True]


def test_the_gate_uses_sealbox_kvm_probe_on_this_host() -> None:
    """The real probe answers here (whatever it says): the gate can no longer be stuck on a missing function."""
    status = probe_kvm()
    assert isinstance(status.functional, bool) and status.summary
