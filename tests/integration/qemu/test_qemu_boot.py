"""Boot the tiny test guest with QemuBackend under the full jail (TCG), then stop and undo it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from qemu_guest_fixture import GUEST_WROTE, HTTP_BODY, HTTP_PORT, MARKER, build_guest
from qemu_plan_helpers import make_plan

from sealbox.sandbox.host import cgroups
from sealbox.sandbox.state import SandboxRecord, pid_alive
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps
from sealbox.sandbox.vmm.qemu import QemuBackend
from sealbox.util.procmem import rss_split_kib

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def _wait_for(path: Path, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in console after {timeout}s; tail: {content[-800:]}")


def _http_from_netns(net, ip: str, timeout: float) -> str:  # type: ignore[no-untyped-def]
    code = (
        "import urllib.request,sys\n"
        f"print(urllib.request.urlopen('http://{ip}:{HTTP_PORT}/index.html', timeout=3).read().decode())"
    )
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            return net.ns("python3", "-c", code).stdout
        except Exception as e:  # noqa: BLE001 - the guest's server may not be up yet
            last = str(getattr(e, "stderr", e))[-300:]
            time.sleep(0.5)
    raise AssertionError(f"guest HTTP server unreachable from the netns: {last}")


def _status_field(pid: int, field: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{field} missing for pid {pid}")


def test_boot_jailed_microvm_tcg(tmp_path: Path, stand_in_network) -> None:  # type: ignore[no-untyped-def]
    guest = build_guest()
    name = f"qt{os.getpid()}"
    plan, rw_disk = make_plan(tmp_path, stand_in_network, name, guest.kernel.parent, guest.kernel, guest.initrd)
    spec, net, sandbox_dir, cg = plan.spec, plan.net, plan.sandbox_dir, plan.cgroup
    layout = cgroups.detect()
    backend = QemuBackend()
    backend.check_host(plan)
    log = StepLog()
    t0 = time.monotonic()
    apply_steps(backend.steps(plan), log, lambda: None)
    cg_dirs = [Path(d) for d in log.entries[0].outputs["dirs"]]
    try:
        console = _wait_for(plan.console_log, MARKER, 90)
        boot_s = time.monotonic() - t0
        assert "DISK /dev/vda SEALBOX-INSTANCE-V1" in console  # the drive passed as an fdset is readable
        _wait_for(plan.console_log, "WROTE /dev/vdb", 20)
        assert HTTP_BODY in _http_from_netns(stand_in_network, str(net.guest_ip), 30)

        qpid = log.entries[-1].outputs["qemu_pid"]
        assert qpid and pid_alive(qpid)
        uids = _status_field(qpid, "Uid").split()
        assert uids[0] != "0" and set(uids) == {str(plan.uid)}
        assert _status_field(qpid, "CapEff") == "0000000000000000"
        assert _status_field(qpid, "NoNewPrivs") == "1"
        assert qpid in cgroups.pids_in(cg_dirs)
        mem_file = "memory.max" if layout.version == 2 else "memory.limit_in_bytes"
        mem_dir = next(d for d in cg_dirs if (d / mem_file).exists())
        assert int((mem_dir / mem_file).read_text()) == cg.memory_bytes

        record = SandboxRecord(name=name, created_at=time.time(), steps=log)
        info = backend.inspect(record)
        assert info["status"]["status"] == "running"
        assert info["kvm"]["enabled"] is False
        assert info["memory"]["base-memory"] == spec.memory_mib * 1024 * 1024
        assert {b["device"]: b["inserted"]["ro"] for b in info["block"]} == {"instance": True, "disk0": False}

        rss_kib = int(_status_field(qpid, "VmRSS").split()[0])
        guest_kib, own_kib = rss_split_kib(qpid, spec.memory_mib)
        figures = {
            "spawn_to_marker_s": round(boot_s, 2),
            "qemu_rss_mib": rss_kib // 1024,
            "guest_ram_resident_mib": guest_kib // 1024,
            "qemu_own_rss_beyond_guest_ram_mib": own_kib // 1024,
            "cgroup_memory_limit_mib": cg.memory_bytes // 2**20,
        }
        print("FIGURES", json.dumps(figures))

        how = backend.stop(record, timeout=8)
        assert how == "powerdown"  # the guest handles the ACPI power button
        print("STOP", how)
        assert not pid_alive(qpid)
        assert rw_disk.read_bytes()[512 : 512 + len(GUEST_WROTE)] == GUEST_WROTE
    finally:
        problems = undo_steps(log, lambda: None)
    assert problems == []
    assert all(not d.exists() for d in cg_dirs)
    assert cgroups.pids_in(cg_dirs) == []
    assert not (sandbox_dir / "vmm" / "qmp.sock").exists()
    assert plan.console_log.exists()  # logs stay until `rm` deletes the sandbox dir


def test_boot_jailed_q35_ovmf_uki(tmp_path: Path, stand_in_network) -> None:  # type: ignore[no-untyped-def]
    """--firmware ovmf: OVMF pflash (CODE read-only + per-sandbox VARS copy, both as fdsets) boots a UKI."""
    guest = build_guest()
    name = f"qo{os.getpid()}"
    image_dir = tmp_path / "image"
    image_dir.mkdir()
    guest_ip = "10.213.250.2"
    uki = guest.uki(f"console=ttyS0 ip={guest_ip}::10.213.250.1:255.255.255.252:{name}:eth0:off", image_dir / "test.efi")
    plan, rw_disk = make_plan(tmp_path, stand_in_network, name, image_dir, uki, None, firmware="ovmf")
    backend = QemuBackend()
    backend.check_host(plan)
    log = StepLog()
    t0 = time.monotonic()
    apply_steps(backend.steps(plan), log, lambda: None)
    vars_copy = plan.sandbox_dir / "vmm" / "OVMF_VARS.fd"
    try:
        assert vars_copy.is_file()
        console = _wait_for(plan.console_log, MARKER, 150)
        print("FIGURES", json.dumps({"ovmf_spawn_to_marker_s": round(time.monotonic() - t0, 2)}))
        assert "DISK /dev/vda SEALBOX-INSTANCE-V1" in console
        _wait_for(plan.console_log, "WROTE /dev/vdb", 20)
        assert HTTP_BODY in _http_from_netns(stand_in_network, guest_ip, 30)
        record = SandboxRecord(name=name, created_at=time.time(), steps=log)
        assert backend.inspect(record)["status"]["status"] == "running"
        assert backend.stop(record, timeout=15) == "powerdown"
    finally:
        problems = undo_steps(log, lambda: None)
    assert problems == []
    assert not vars_copy.exists()  # the per-sandbox VARS copy goes with the run dir
    assert all(not Path(d).exists() for d in log.entries[0].outputs["dirs"])
    assert rw_disk.read_bytes()[512 : 512 + len(GUEST_WROTE)] == GUEST_WROTE
