"""Flag validation, disk checks, backend/accelerator choice and the kernel command line."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox import image, planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.model import GuestNet

BROKEN = KvmStatus(present=True, functional=False, detail="vCPUs never run")
WORKING = KvmStatus(present=True, functional=True, api_version=12, detail="ok")


def spec(image_dir: Path, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("name", "demo")
    return planning.make_spec(image_dir=image_dir, **kw)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"name": "bad name"}, "invalid sandbox name"),
    ({"name": ""}, "invalid sandbox name"),
    ({"memory_mib": 8}, "--memory=8"),
    ({"cpus": 0}, "--cpus=0"),
    ({"net": "bridge"}, "--net='bridge'"),
    ({"allow_egress": ["not-a-cidr"]}, "--allow-egress 'not-a-cidr'"),
])
def test_flag_errors_are_one_line(image_dir: Path, kw: dict, msg: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(UsageError) as e:
        spec(image_dir, **kw)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_disks_and_egress_are_parsed(image_dir: Path, tmp_path: Path) -> None:
    s = spec(image_dir, disks=[f"{tmp_path}/a.img:ro", f"{tmp_path}/b.img"], allow_egress=["10.0.0.0/8:443"], net="nat")
    assert [(d.path.name, d.readonly) for d in s.disks] == [("a.img", True), ("b.img", False)]
    assert str(s.allow_egress[0].cidr) == "10.0.0.0/8" and s.allow_egress[0].port == 443


def test_check_disks(image_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        planning.check_disks(spec(image_dir, disks=[str(tmp_path / "missing.img")]), image_dir)
    (tmp_path / "d.img").write_bytes(b"\0" * 4096)
    with pytest.raises(UsageError, match="attached twice"):
        planning.check_disks(spec(image_dir, disks=[str(tmp_path / "d.img"), str(tmp_path / "d.img") + ":ro"]), image_dir)
    with pytest.raises(UsageError, match="not a regular file"):
        planning.check_disks(spec(image_dir, disks=[str(tmp_path)]), image_dir)
    with pytest.raises(UsageError, match="inside the image directory"):
        planning.check_disks(spec(image_dir, disks=[str(image_dir / "rootfs.ext4") + ":rw"]), image_dir)
    planning.check_disks(spec(image_dir, disks=[str(image_dir / "rootfs.ext4") + ":ro", str(tmp_path / "d.img")]), image_dir)


def test_a_qcow2_disk_attached_without_a_format_is_refused(image_dir: Path, tmp_path: Path) -> None:
    # `sealbox disk create` makes qcow2 by default and --disk attaches raw unless told: the guest would get the
    # qcow2 container's few KiB as its disk. The format stays declared, never probed; the check only refuses.
    d = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(d), "64M"], check=True, timeout=60)
    with pytest.raises(UsageError) as e:
        planning.check_disks(spec(image_dir, disks=[f"{d}:rw,serial=data"]), image_dir)
    assert "qcow2" in str(e.value) and "\n" not in str(e.value) and e.value.hint and f"{d}:rw,serial=data,qcow2" in e.value.hint
    planning.check_disks(spec(image_dir, disks=[f"{d}:rw,qcow2"]), image_dir)
    planning.check_disks(spec(image_dir, disks=[f"{d}:rw,raw"]), image_dir)  # declared raw: its bytes as they are
    # a record written before the flag existed (a snapshot's) says qcow2 without saying it was declared
    s = spec(image_dir, disks=[f"{d}:rw,qcow2"])
    planning.check_disks(s.model_copy(update={"disks": (s.disks[0].model_copy(update={"format_declared": False}),)}), image_dir)
    (tmp_path / "short.img").write_bytes(b"QF")  # shorter than the magic: a raw disk like any other
    planning.check_disks(spec(image_dir, disks=[str(tmp_path / "short.img")]), image_dir)


@pytest.fixture
def kvm(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    box = {"status": BROKEN, "probed": 0}

    def fake(state_root: Path, dry_run: bool) -> KvmStatus:
        box["probed"] += 1  # type: ignore[operator]
        return box["status"]  # type: ignore[return-value]

    monkeypatch.setattr(planning, "_kvm", fake)
    monkeypatch.setattr("sealbox.sandbox.vmm.firecracker.doctor.auto_select_ok", lambda ok, settings=None: (ok, "stand-in"))
    return box


def test_auto_falls_back_to_tcg_with_a_warning(image_dir: Path, tmp_path: Path, kvm) -> None:  # type: ignore[no-untyped-def]
    c = planning.choose(spec(image_dir), tmp_path)
    assert (c.vmm, c.accel) == ("qemu", "tcg")
    assert len(c.warnings) == 1 and "KVM not functional" in c.warnings[0] and "TCG" in c.warnings[0]


def test_explicit_tcg_skips_the_probe_and_warns_nothing(image_dir: Path, tmp_path: Path, kvm) -> None:  # type: ignore[no-untyped-def]
    c = planning.choose(spec(image_dir, accel="tcg"), tmp_path)
    assert (c.vmm, c.accel, c.warnings, kvm["probed"]) == ("qemu", "tcg", [], 0)


def test_auto_prefers_firecracker_only_with_working_kvm(image_dir: Path, tmp_path: Path, kvm) -> None:  # type: ignore[no-untyped-def]
    kvm["status"] = WORKING
    assert planning.choose(spec(image_dir), tmp_path).vmm == "firecracker"
    assert planning.choose(spec(image_dir, firmware="ovmf"), tmp_path).vmm == "qemu"
    assert planning.choose(spec(image_dir, vmm="qemu"), tmp_path).accel == "kvm"


def test_firecracker_needs_kvm(image_dir: Path, tmp_path: Path, kvm) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SandboxError, match="needs KVM"):
        planning.choose(spec(image_dir, vmm="firecracker"), tmp_path)
    c = planning.choose(spec(image_dir, vmm="firecracker"), tmp_path, dry_run=True)
    assert c.vmm == "firecracker" and "would fail" in c.warnings[0]
    with pytest.raises(UsageError, match="no TCG"):
        planning.choose(spec(image_dir, vmm="firecracker", accel="tcg"), tmp_path)
    with pytest.raises(UsageError, match="need QEMU"):
        planning.choose(spec(image_dir, vmm="firecracker", tdx=True), tmp_path)
    with pytest.raises(SandboxError, match="--accel kvm was requested"):
        planning.choose(spec(image_dir, vmm="qemu", accel="kvm"), tmp_path)


def test_cmdline_adds_ip_but_never_to_a_uki(image_dir: Path) -> None:
    subnet = ipaddress.IPv4Network("10.213.0.4/30")
    net = GuestNet(subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:00:00:00:00:01", tap="tap0", netns="sealbox-demo")
    boot = image.load(image_dir).boot_files(vmm="qemu", rootfs="initrd")
    assert planning.kernel_cmdline(boot, net, "demo", False) == "console=ttyS0 quiet ip=10.213.0.6::10.213.0.5:255.255.255.252:demo:eth0:off"
    assert planning.kernel_cmdline(boot, net, "demo", True) == "console=ttyS0 quiet"
