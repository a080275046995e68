"""Other boot modes of the same image, one boot each: the read-only ext4 root disk (booted through the
image's loader initramfs) with extra data disks, and the UKI under OVMF. Skipped when the image has no
such output."""

from __future__ import annotations

from pathlib import Path

import pytest
from rt_integ import Sealbox, leftovers, manifest

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def _needs(sb: Sealbox, *keys: str) -> None:
    boot = manifest(sb.image)["boot"]
    missing = [k for k in keys if not boot.get(k)]
    if missing:
        pytest.skip(f"the test image has no {', '.join(missing)} output")


def test_rootfs_disk_with_rw_and_ro_data_disks(sealbox: Sealbox, tmp_path: Path) -> None:
    _needs(sealbox, "rootfs", "loader", "vmlinuz")
    name = f"{sealbox.prefix}-disk"
    rw, ro = tmp_path / "data.img", tmp_path / "ro.img"
    rw.write_bytes(b"\0" * (1 << 20))
    ro.write_bytes(b"READONLY-DATA".ljust(1 << 20, b"\0"))
    p = sealbox(*sealbox.run_args(name, "--rootfs", "disk", "--memory", "384", "--disk", f"{rw}:rw", "--disk", f"{ro}:ro"), timeout=420)
    assert p.returncode == 0, p.stderr
    try:
        mounts = sealbox.exec(name, "cat", "/proc/mounts").stdout.splitlines()
        root = next(ln.split() for ln in mounts if ln.split()[1] == "/")
        assert root[0] == "/dev/vda" and root[2] == "ext4" and root[3].split(",")[0] == "ro"
        assert "Read-only file system" in sealbox.exec(name, "touch", "/probe").stderr
        # disks in order: vda root, vdb instance, vdc data (rw), vdd data (ro)
        w = sealbox.exec(name, "sh", "-c", "printf GUEST-WROTE-THIS | dd of=/dev/vdc bs=512 seek=8 conv=notrunc,fsync 2>&1")
        assert w.returncode == 0, w.stdout + w.stderr
        bad = sealbox.exec(name, "sh", "-c", "printf X | dd of=/dev/vdd conv=notrunc,fsync 2>&1")
        assert bad.returncode != 0
        assert sealbox.exec(name, "head", "-c", "13", "/dev/vdd").stdout == "READONLY-DATA"
    finally:
        sealbox("rm", "--force", name, check=True)
    assert rw.read_bytes()[8 * 512 : 8 * 512 + 16] == b"GUEST-WROTE-THIS"
    assert ro.read_bytes().startswith(b"READONLY-DATA\0")
    assert leftovers(sealbox.state_dir, name) == []


def test_uki_under_ovmf_gets_its_address_from_the_instance_disk(sealbox: Sealbox) -> None:
    _needs(sealbox, "uki")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file():
        pytest.skip("OVMF (ovmf package) is not installed")
    name = f"{sealbox.prefix}-uki"
    p = sealbox(*sealbox.run_args(name, "--firmware", "ovmf", "--memory", "512"), timeout=480)
    assert p.returncode == 0, p.stderr
    try:
        rec = sealbox.record(name)
        assert rec is not None
        cmdline = sealbox.exec(name, "cat", "/proc/cmdline").stdout
        assert "ip=" not in cmdline  # the UKI's measured command line is not touched ...
        addr = sealbox.exec(name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{rec['network']['guest_ip']}/30" in addr  # ... the instance disk carried the address
        assert sealbox.exec(name, "hostname").stdout.strip() == name
    finally:
        sealbox("rm", "--force", name, check=True)
    assert leftovers(sealbox.state_dir, name) == []
