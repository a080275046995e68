"""Boot the tiny test guest with QemuBackend under the full jail (TCG), then stop and undo it."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest

from qemu_guest_fixture import HTTP_BODY, HTTP_PORT, MARKER, build_guest
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.host.users import ensure_vmm_user
from sealbox.sandbox.model import GuestNet, SandboxSpec, VmPlan
from sealbox.sandbox.state import SandboxRecord, pid_alive
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps
from sealbox.sandbox.vmm.qemu import QemuBackend, memory_limit_bytes

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
    user = ensure_vmm_user()
    name = f"qt{os.getpid()}"
    subnet = ipaddress.IPv4Network("10.213.250.0/30")
    net = GuestNet(
        subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:5e:a1:b0:c5:01",
        tap=stand_in_network.tap, netns=stand_in_network.netns,
    )
    sandbox_dir = tmp_path / "sandboxes" / name
    sandbox_dir.mkdir(parents=True, mode=0o700)
    instance = sandbox_dir / "instance.img"
    instance.write_bytes(b"SEALBOX-INSTANCE-V1\nhostname=x\nEND\n".ljust(4096, b"\0"))
    instance.chmod(0o600)  # root-only on purpose: the VMM gets it as an fd
    spec = SandboxSpec(name=name, image_dir=guest.kernel.parent, memory_mib=256, accel="tcg")
    layout = cgroups.detect()
    cg = cgroups.plan_for(name, layout, memory_bytes=memory_limit_bytes(spec, "tcg"), cpus=spec.cpus, pids_max=spec.limits.pids_max)
    plan = VmPlan(
        spec=spec, sandbox_dir=sandbox_dir, kernel=guest.kernel, initrd=guest.initrd, rootfs=None,
        instance_disk=instance, cmdline=f"console=ttyS0 {net.kernel_ip_arg(name)}", net=net,
        uid=user.uid, gid=user.gid, cgroup=cg, accel="tcg", console_log=sandbox_dir / "console.log",
    )
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
        assert HTTP_BODY in _http_from_netns(stand_in_network, str(net.guest_ip), 30)

        qpid = log.entries[-1].outputs["qemu_pid"]
        assert qpid and pid_alive(qpid)
        uids = _status_field(qpid, "Uid").split()
        assert uids[0] != "0" and set(uids) == {str(user.uid)}
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
        assert {b["device"] for b in info["block"]} == {"instance"}

        rss_kib = int(_status_field(qpid, "VmRSS").split()[0])
        figures = {
            "spawn_to_marker_s": round(boot_s, 2),
            "qemu_rss_mib": rss_kib // 1024,
            "rss_beyond_guest_ram_mib": rss_kib // 1024 - spec.memory_mib,
            "cgroup_memory_limit_mib": cg.memory_bytes // 2**20,
        }
        print("FIGURES", json.dumps(figures))

        how = backend.stop(record, timeout=8)
        assert how in ("powerdown", "quit")
        print("STOP", how)
        assert not pid_alive(qpid)
    finally:
        problems = undo_steps(log, lambda: None)
    assert problems == []
    assert all(not d.exists() for d in cg_dirs)
    assert cgroups.pids_in(cg_dirs) == []
    assert not (sandbox_dir / "vmm" / "qmp.sock").exists()
    assert plan.console_log.exists()  # logs stay until `rm` deletes the sandbox dir
