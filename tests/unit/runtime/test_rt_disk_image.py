"""`sealbox run --boot disk-image`: which disk file, which flags it refuses, and the QEMU command line
(OVMF pflash, the disk as the first boot device, no -kernel, nothing added to the measured command line)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.formats.vhd import footer
from sealbox.sandbox import image, planning
from sealbox.sandbox.model import QCOW2_MAGIC, CgroupPlan, GuestNet, SandboxSpec, VmPlan
from sealbox.sandbox.vmm.qemu import HostFacts, build_command

DISKS = {"disk.raw": bytes(1 << 20), "disk.qcow2": QCOW2_MAGIC + bytes(1020), "disk.vhd": bytes(1 << 20) + footer(1 << 20, 0, "00")}


def _with_disks(make_image: Callable[..., Path], keys: dict[str, str], name: str = "img") -> Path:
    """The fixture image plus the disk files `keys` names ({boot key: file}), recorded in its manifest."""
    d = make_image(name)
    m = json.loads((d / "manifest.json").read_text())
    for key, fname in keys.items():
        (d / fname).write_bytes(DISKS[fname])
        m["boot"][key] = fname
        m["artifacts"][fname] = {"sha256": hashlib.sha256(DISKS[fname]).hexdigest(), "size": len(DISKS[fname])}
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def test_prefers_raw_then_qcow2_then_vhd(make_image: Callable[..., Path]) -> None:
    all3 = image.load(_with_disks(make_image, {"disk": "disk.raw", "qcow2": "disk.qcow2", "vhd": "disk.vhd"}, "a"))
    assert all3.boot_files(vmm="qemu", rootfs="initrd", boot="disk-image").kernel.name == "disk.raw"
    only_vhd = image.load(_with_disks(make_image, {"vhd": "disk.vhd"}, "b"))
    b = only_vhd.boot_files(vmm="qemu", rootfs="initrd", boot="disk-image")
    assert b.kernel.name == "disk.vhd" and b.initrd is None and b.rootfs is None


def test_image_without_a_disk_is_a_one_line_error(image_dir: Path) -> None:
    with pytest.raises(UsageError) as e:
        image.load(image_dir).boot_files(vmm="qemu", rootfs="initrd", boot="disk-image")
    assert "has no 'disk' boot file" in str(e.value) and "--boot disk-image" in str(e.value) and "\n" not in str(e.value)


def test_truncated_disk_is_refused(make_image: Callable[..., Path]) -> None:
    d = _with_disks(make_image, {"disk": "disk.raw"})
    (d / "disk.raw").write_bytes(bytes(4096))
    with pytest.raises(UsageError, match="the manifest records"):
        image.load(d).boot_files(vmm="qemu", rootfs="initrd", boot="disk-image")


@pytest.mark.parametrize(("kw", "msg"), [
    ({"tdx": True}, "not supported with --tdx"),
    ({"rootfs": "disk"}, "drop --rootfs disk"),
    ({"vmm": "firecracker"}, "need QEMU"),
])
def test_conflicting_flags(image_dir: Path, tmp_path: Path, kw: dict[str, object], msg: str) -> None:
    s = planning.make_spec(image_dir=image_dir, name="demo", boot="disk-image", accel="tcg", **kw)
    with pytest.raises(UsageError, match=msg):
        planning.choose(s, tmp_path)


def test_disk_image_uses_qemu_and_keeps_the_measured_cmdline(image_dir: Path, tmp_path: Path) -> None:
    s = planning.make_spec(image_dir=image_dir, name="demo", boot="disk-image", accel="tcg")
    assert planning.choose(s, tmp_path).vmm == "qemu"
    net = GuestNet(subnet=ipaddress.IPv4Network("10.9.0.0/30"), host_ip="10.9.0.1", guest_ip="10.9.0.2",
                   guest_mac="02:00:00:00:00:01", tap="t", netns="n")
    boot = image.BootFiles(kernel=image_dir / "x", cmdline=["console=ttyS0"])
    assert planning.kernel_cmdline(boot, net, "demo", firmware_boot=True) == "console=ttyS0"


def _plan(tmp_path: Path, disk_name: str) -> tuple[VmPlan, HostFacts]:
    img = tmp_path / "image"
    img.mkdir()
    (img / disk_name).write_bytes(DISKS[disk_name])
    fw = tmp_path / "fw"
    fw.mkdir()
    for n in ("CODE.fd", "VARS.fd"):
        (fw / n).write_bytes(bytes(64))
    spec = SandboxSpec(image_dir=img, name="demo", boot="disk-image", accel="tcg")
    subnet = ipaddress.IPv4Network("10.213.4.8/30")
    net = GuestNet(subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:aa:bb:cc:dd:ee", tap="tap0", netns="n")
    sdir = tmp_path / "state"
    plan = VmPlan(spec=spec, sandbox_dir=sdir, kernel=img / disk_name, initrd=None, rootfs=None, instance_disk=sdir / "instance.img",
                  cmdline="console=ttyS0", net=net, uid=995, gid=994, accel="tcg", console_log=sdir / "console.log",
                  cgroup=CgroupPlan(version=1, name="sealbox/demo", memory_bytes=1 << 29, cpu_quota_us=100_000, pids_max=256))
    return plan, HostFacts(ovmf_code=fw / "CODE.fd", ovmf_vars=fw / "VARS.fd")


@pytest.mark.parametrize(("disk_name", "fmt"), [("disk.raw", "raw"), ("disk.qcow2", "qcow2"), ("disk.vhd", "vpc")])
def test_command_line(tmp_path: Path, disk_name: str, fmt: str) -> None:
    plan, host = _plan(tmp_path, disk_name)
    cmd = build_command(plan, host)
    a = cmd.qemu_argv
    assert cmd.mode == "ovmf" and a[a.index("-M") + 1] == "q35"
    assert "-kernel" not in a and "-append" not in a and "-initrd" not in a
    drives = [a[i + 1] for i, x in enumerate(a) if x == "-drive"]
    boot = next(d for d in drives if d.startswith("if=none,id=boot,"))
    assert f"format={fmt}" in boot and "readonly=on" in boot
    assert sum("if=pflash" in d for d in drives) == 2
    assert "virtio-blk-pci,drive=boot,bootindex=0" in a
    fdset = boot.split("file=")[1].split(",")[0]
    sid = fdset.rsplit("/", 1)[1]
    members = [f for f in cmd.fds if any(x == f"fd={f.fd},set={sid}" for x in a)]
    assert [(m.path, m.access) for m in members] == [(str(plan.kernel), "r")]  # read-only, the image is shared
    net = next(x for x in a if x.startswith("virtio-net-pci,"))
    assert net.endswith(",romfile=")  # no iPXE ROM: the firmware boots the disk


def test_cli_flag_reaches_the_spec(image_dir: Path) -> None:
    from click.testing import CliRunner

    from sealbox.cli.main import cli

    r = CliRunner().invoke(cli, ["run", str(image_dir), "--name", "x", "--boot", "floppy"])
    assert r.exit_code == 2 and "'floppy' is not one of 'kernel', 'disk-image'" in r.output
