from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sealbox.sandbox.model import QCOW2_MAGIC, CgroupPlan, GuestNet, SandboxSpec, VmPlan
from sealbox.sandbox.vmm.qemu import HostFacts

PlanFactory = Callable[..., VmPlan]


@pytest.fixture
def host(tmp_path: Path) -> HostFacts:
    fw = tmp_path / "fw"
    fw.mkdir()
    for name in ("CODE.fd", "VARS.fd", "TDVF.fd"):
        (fw / name).write_bytes(b"\0" * 64)
    return HostFacts(
        tsc_khz=2_445_424, ovmf_code=fw / "CODE.fd", ovmf_vars=fw / "VARS.fd", tdvf=fw / "TDVF.fd",
        kvm_gid=108, root_links={"/lib": "usr/lib", "/bin": "usr/bin"},
    )


@pytest.fixture
def make_plan(tmp_path: Path) -> PlanFactory:
    img = tmp_path / "image"
    img.mkdir()
    for name in ("vmlinuz", "initrd.cpio.zst", "rootfs.ext4", "demo.efi"):
        (img / name).write_bytes(b"x" * 512)
    (tmp_path / "raw.img").write_bytes(b"\0" * 4096)
    (tmp_path / "data.qcow2").write_bytes(QCOW2_MAGIC + b"\0" * 508)

    def factory(accel: str = "tcg", kernel: str = "vmlinuz", **spec_kw: Any) -> VmPlan:
        spec_kw.setdefault("name", "demo")
        spec = SandboxSpec(image_dir=img, **spec_kw)
        subnet = ipaddress.IPv4Network("10.213.4.8/30")
        net = GuestNet(subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:aa:bb:cc:dd:ee", tap="tap0", netns=f"sealbox-{spec.name}")
        sdir = tmp_path / "state" / spec.name
        return VmPlan(
            spec=spec, sandbox_dir=sdir, kernel=img / kernel, initrd=img / "initrd.cpio.zst", rootfs=img / "rootfs.ext4",
            instance_disk=sdir / "instance.img", cmdline="console=ttyS0 " + net.kernel_ip_arg(spec.name), net=net,
            uid=995, gid=994, cgroup=CgroupPlan(version=1, name=f"sealbox/{spec.name}", memory_bytes=1 << 29, cpu_quota_us=100_000, pids_max=256),
            accel=accel, console_log=sdir / "console.log",
        )

    return factory
