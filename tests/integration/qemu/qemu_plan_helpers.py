"""Builds a VmPlan for the integration tests the way the manager would (addresses, disks, cgroup)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from qemu_guest_fixture import RW_MAGIC

from sealbox.sandbox.host import cgroups, owner, users
from sealbox.sandbox.model import DiskSpec, GuestNet, SandboxSpec, VmPlan
from sealbox.sandbox.vmm.qemu import memory_limit_bytes


def make_plan(tmp_path: Path, net_stand_in, name: str, image_dir: Path, kernel: Path, initrd: Path | None, **spec_kw) -> tuple[VmPlan, Path]:  # type: ignore[no-untyped-def]
    uid = users.free_uid()  # a sandbox uid (nothing leased here: the test owns its objects)
    subnet = ipaddress.IPv4Network("10.213.250.0/30")
    net = GuestNet(
        subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:5e:a1:b0:c5:01",
        tap=net_stand_in.tap, netns=net_stand_in.netns,
    )
    sandbox_dir = tmp_path / "sandboxes" / name
    sandbox_dir.mkdir(parents=True, mode=0o700)
    instance = sandbox_dir / "instance.img"
    instance.write_bytes(b"SEALBOX-INSTANCE-V1\nhostname=x\nEND\n".ljust(4096, b"\0"))
    instance.chmod(0o600)  # root-only on purpose: the VMM gets it as an fd
    rw_disk = tmp_path / "rw.img"
    rw_disk.write_bytes(RW_MAGIC.ljust(8192, b"\0"))
    rw_disk.chmod(0o600)  # likewise: a root-only writable disk works through an fdset
    spec = SandboxSpec(name=name, image_dir=image_dir, memory_mib=256, accel="tcg", disks=(DiskSpec(path=rw_disk, readonly=False),), **spec_kw)
    layout = cgroups.detect()
    cg = cgroups.plan_for(name, layout, state_id=owner.state_id(tmp_path), memory_bytes=memory_limit_bytes(spec, "tcg"), cpus=spec.cpus,
                          pids_max=spec.limits.pids_max)
    plan = VmPlan(
        spec=spec, sandbox_dir=sandbox_dir, kernel=kernel, initrd=initrd, rootfs=None,
        instance_disk=instance, cmdline=f"console=ttyS0 {net.kernel_ip_arg(name)}", net=net,
        uid=uid, gid=uid, cgroup=cg, accel="tcg", console_log=sandbox_dir / "console.log",
    )
    return plan, rw_disk
