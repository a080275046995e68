"""Host pieces on the real host: KVM probe, real cgroupfs, the jail, the VMM user, TAP fds, TDX refusal."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups, jail, kvm, owner, users
from sealbox.sandbox.model import CgroupPlan, GuestNet, SandboxSpec, VmPlan
from sealbox.sandbox.vmm import qemu_launch
from sealbox.sandbox.vmm.qemu import QemuBackend, tdx_support
from strict import skip_allowed

pytestmark = pytest.mark.integration
TUNGETIFF = 0x800454D2


def _children() -> set[int]:
    """This process's children, zombies included (from /proc: other tests' helpers may be alive)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            out.add(int(stat.parent.name))
    return out


def test_kvm_probe_gives_a_definite_answer_within_its_timeout(tmp_path: Path) -> None:
    before = _children()
    t0 = time.monotonic()
    st = kvm.probe_kvm(timeout=2.0, cache_dir=tmp_path)
    took = time.monotonic() - t0
    assert took < 2.0 + 1.5, took
    assert st.present == Path("/dev/kvm").exists()
    if not st.functional:
        assert "TCG will be used" in st.summary
    print("KVM", st.summary, f"({took:.2f}s)")
    # the probe child is killed and reaped: no new child, not even a zombie (a module fixture elsewhere may keep its own)
    assert _children() <= before
    t1 = time.monotonic()
    again = kvm.probe_kvm(timeout=2.0, cache_dir=tmp_path)
    assert again.cached and again.functional == st.functional and time.monotonic() - t1 < 0.5


def test_cgroup_step_on_real_cgroupfs() -> None:
    layout = cgroups.detect()
    if layout.missing():
        pytest.skip(f"cgroup controllers missing here: {layout.missing()}")
    name = f"qcg{os.getpid()}"
    plan = cgroups.plan_for(name, layout, state_id=owner.state_id(f"/nonexistent/{name}"), memory_bytes=300 << 20, cpus=1, pids_max=64)
    step = cgroups.CgroupStep.from_plan(plan, layout)
    step.do()
    child = None
    try:
        if layout.version == 2:
            leaf = step.dirs()[0]
            assert int((leaf / "memory.max").read_text()) == plan.memory_bytes
            assert (leaf / "cpu.max").read_text().split() == [str(plan.cpu_quota_us), str(plan.cpu_period_us)]
            assert int((leaf / "pids.max").read_text()) == plan.pids_max
        else:
            m = Path(step.mounts["memory"]) / plan.name
            assert int((m / "memory.limit_in_bytes").read_text()) == plan.memory_bytes
            c = Path(step.mounts["cpu"]) / plan.name
            assert int((c / "cpu.cfs_quota_us").read_text()) == plan.cpu_quota_us
            assert int((Path(step.mounts["pids"]) / plan.name / "pids.max").read_text()) == plan.pids_max
        procs = step.procs_files()
        child = subprocess.Popen(["sleep", "300"], preexec_fn=lambda: cgroups.join(procs))  # noqa: PLW1509
        assert child.pid in cgroups.pids_in(step.dirs())
        step.undo({})
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert all(not d.exists() for d in step.dirs())
        step.undo({})  # idempotent
    finally:
        if child and child.poll() is None:
            child.kill()
        for d in step.dirs():
            if d.exists():
                cgroups.kill_all([d])
                d.rmdir()


def test_jail_is_unprivileged_and_empty() -> None:
    uid = users.free_uid()
    spec = jail.JailSpec(uid=uid, gid=uid, root_links=jail.host_root_links())
    script = "id -u; id -G; ls -1 /; grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; tail -n +3 /proc/net/dev | cut -d: -f1"
    proc = subprocess.run(jail.jail_argv(spec, ["/bin/sh", "-c", script]), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert lines[0] == str(uid)
    top = set(lines[2 : lines.index(next(x for x in lines if x.startswith("CapEff")))])
    assert top == {"usr", "dev", "proc", "tmp", *(link.lstrip("/") for link in spec.root_links)}
    status = dict(x.split(":", 1) for x in lines if x.startswith(("CapEff:", "NoNewPrivs:")))
    assert status["CapEff"].strip() == "0000000000000000" and status["NoNewPrivs"].strip() == "1"
    assert lines[-1] == "lo"  # an empty network namespace: the TAP arrives as an fd


def test_open_tap_in_netns(stand_in_network) -> None:  # type: ignore[no-untyped-def]
    fd = qemu_launch.open_tap(stand_in_network.netns, stand_in_network.tap)
    try:
        info = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
        name, flags = struct.unpack_from("16sH", info)
        assert name.rstrip(b"\0").decode() == stand_in_network.tap
        assert flags & (qemu_launch.IFF_TAP | qemu_launch.IFF_NO_PI | qemu_launch.IFF_VNET_HDR) == (
            qemu_launch.IFF_TAP | qemu_launch.IFF_NO_PI | qemu_launch.IFF_VNET_HDR
        )
    finally:
        os.close(fd)
    with pytest.raises(SandboxError, match="not found"):
        qemu_launch.open_tap("sealbox-no-such-netns", "tap0")


def test_run_tdx_is_refused_on_this_host(tmp_path: Path) -> None:
    if tdx_support()[0]:
        skip_allowed("tdx", "this host can run TDX guests, so the refusal on a host without TDX cannot be shown")
    (tmp_path / "demo.efi").write_bytes(b"MZ")
    subnet = ipaddress.IPv4Network("10.213.251.0/30")
    plan = VmPlan(
        spec=SandboxSpec(name="tdxdemo", image_dir=tmp_path, tdx=True, firmware="ovmf"), sandbox_dir=tmp_path / "sb",
        kernel=tmp_path / "demo.efi", initrd=None, rootfs=None, instance_disk=tmp_path / "inst.img", cmdline="",
        net=GuestNet(subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:00:00:00:00:01", tap="tap0", netns="sealbox-tdxdemo"),
        uid=1, gid=1, cgroup=CgroupPlan(version=cgroups.detect().version, name="sealbox/tdxdemo", memory_bytes=1 << 30, cpu_quota_us=100000,
                                        pids_max=64),
        accel="tcg", console_log=tmp_path / "sb" / "console.log",
    )
    backend = QemuBackend()
    with pytest.raises(SandboxError, match="--tdx cannot run on this host"):
        backend.check_host(plan)
    assert any(a.startswith("tdx-guest,id=tdx0,") for a in backend.describe(plan)["qemu_argv"])


def test_failed_start_reports_qemu_stderr_and_leaves_nothing(tmp_path: Path, stand_in_network) -> None:  # type: ignore[no-untyped-def]
    """A kernel QEMU cannot load: the start step fails with QEMU's own message and every step is undone."""
    from qemu_plan_helpers import make_plan

    from sealbox.sandbox.steps import StepLog, apply_steps

    bogus = tmp_path / "img" / "vmlinuz"
    bogus.parent.mkdir()
    bogus.write_bytes(b"not a kernel" * 100)
    bogus.chmod(0o644)
    plan, _rw = make_plan(tmp_path, stand_in_network, f"qf{os.getpid()}", bogus.parent, bogus, None)
    backend = QemuBackend()
    backend.check_host(plan)
    log = StepLog()
    with pytest.raises(SandboxError, match="QEMU exited during start: qemu: invalid kernel header"):
        apply_steps(backend.steps(plan), log, lambda: None)
    assert [e.state for e in log.entries] == ["undone", "undone", "undone"]
    cg = cgroups.CgroupStep.model_validate(log.entries[0].params)
    assert all(not d.exists() for d in cg.dirs())
    assert not (plan.sandbox_dir / "vmm" / "qmp.sock").exists()
