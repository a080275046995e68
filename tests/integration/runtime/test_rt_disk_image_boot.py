"""`sealbox run --boot disk-image`: OVMF finds the UKI on the image's GPT disk by itself (no -kernel),
the guest reaches ready with its per-instance data, sees the disk read-only and UEFI as its firmware."""

from __future__ import annotations

from pathlib import Path

import pytest
from rt_integ import Sealbox, leftovers, manifest

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def test_disk_image_boots_to_ready(sealbox: Sealbox) -> None:
    m = manifest(sealbox.image)
    if not m["boot"].get("disk"):
        pytest.skip("the test image has no disk output")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").is_file():
        pytest.skip("OVMF (ovmf package) is not installed")
    name = f"{sealbox.prefix}-diskimg"
    p = sealbox(*sealbox.run_args(name, "--boot", "disk-image"), timeout=480)
    assert p.returncode == 0, p.stderr
    try:
        rec = sealbox.record(name)
        assert rec is not None
        argv = " ".join(sealbox("inspect", name, check=True).stdout.split())
        assert "-kernel" not in argv and "bootindex=0" in argv
        assert sealbox.exec(name, "cat", "/proc/cmdline").stdout.split() == m["kernel"]["cmdline"]
        probe = sealbox.exec(name, "sh", "-c", "test -d /sys/firmware/efi && echo uefi; cat /sys/block/vda/ro /sys/block/vda/size").stdout.split()
        assert probe == ["uefi", "1", str(m["artifacts"]["disk.raw"]["size"] // 512)]
        addr = sealbox.exec(name, "ip", "-4", "-o", "addr", "show", "eth0").stdout
        assert f"{rec['network']['guest_ip']}/30" in addr  # the instance disk still carries the address
        print(f"disk.raw boot to ready (sealbox run, OVMF/TCG): {p.stdout.split('guest ready ')[1].split('s ')[0]} s")
    finally:
        sealbox("rm", "--force", name, check=True)
    assert leftovers(sealbox.state_dir, name) == []
