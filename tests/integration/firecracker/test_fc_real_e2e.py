"""End to end with the REAL firecracker and jailer: runs only when SEALBOX_FIRECRACKER and SEALBOX_JAILER
point at them, KVM is functional, and a guest kernel is given; otherwise skips with the reason.

Inputs: SEALBOX_FIRECRACKER, SEALBOX_JAILER, SEALBOX_FC_TEST_IMAGE (dir with vmlinux and initrd.cpio.zst),
and a KVM probe: sealbox.sandbox.host.kvm.kvm_functional() when that module exists, else SEALBOX_KVM_FUNCTIONAL=1.
"""

from __future__ import annotations

import importlib
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest
from fc_testlib import make_plan

from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings
from sealbox.sandbox.vmm.firecracker.snapshot import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.firecracker, pytest.mark.boot]


def kvm_functional() -> tuple[bool, str]:
    try:
        probe = importlib.import_module("sealbox.sandbox.host.kvm")
        ok = bool(probe.kvm_functional())
        return ok, "the KVM probe says vCPUs do not run here"
    except (ImportError, AttributeError):
        return os.environ.get("SEALBOX_KVM_FUNCTIONAL") == "1", "no KVM probe module and SEALBOX_KVM_FUNCTIONAL!=1"


def requirements() -> tuple[Path, Path, Path]:
    fc, jl, image = (os.environ.get(v) for v in ("SEALBOX_FIRECRACKER", "SEALBOX_JAILER", "SEALBOX_FC_TEST_IMAGE"))
    if not (fc and jl and Path(fc).is_file() and Path(jl).is_file()):
        pytest.skip("real Firecracker binaries absent: set SEALBOX_FIRECRACKER and SEALBOX_JAILER")
    ok, why = kvm_functional()
    if not ok:
        pytest.skip(f"KVM not functional: {why}")
    if not image or not (Path(image) / "vmlinux").is_file():
        pytest.skip("no guest image: set SEALBOX_FC_TEST_IMAGE to a build dir with vmlinux and initrd.cpio.zst")
    return Path(fc), Path(jl), Path(image)


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
        inst.write_bytes(f"SEALBOX-INSTANCE-V2\nhostname={name}\nEND\n".encode().ljust(4096, b"\0"))
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
                                                    parent="sealbox"))
