"""Fixed VHD footer: fields, checksum, geometry, derived identity; qemu-img as the reader oracle."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from sealbox.formats import vhd

EPOCH = 1_735_689_600


def test_footer_fields() -> None:
    f = vhd.footer(64 << 20, EPOCH, "ab" * 32)
    assert len(f) == 512 and f[:8] == b"conectix"
    assert int.from_bytes(f[16:24], "big") == 0xFFFFFFFFFFFFFFFF  # fixed disk: no dynamic header
    assert int.from_bytes(f[24:28], "big") == EPOCH - 946684800
    assert int.from_bytes(f[40:48], "big") == int.from_bytes(f[48:56], "big") == 64 << 20
    assert int.from_bytes(f[60:64], "big") == 2
    assert vhd.checksum(f) == int.from_bytes(f[64:68], "big")
    assert f == vhd.footer(64 << 20, EPOCH, "ab" * 32)
    assert f[68:84] != vhd.footer(64 << 20, EPOCH, "cd" * 32)[68:84]  # unique id follows the image digest


def test_epoch_before_2000_clamps_to_zero() -> None:
    assert vhd.footer(1 << 20, 0, "00")[24:28] == bytes(4)


@pytest.mark.parametrize("size", [0, (1 << 20) + 512, 12345])
def test_size_must_be_whole_mib(size: int) -> None:
    with pytest.raises(vhd.VhdError, match="1 MiB"):
        vhd.footer(size, EPOCH, "00")


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
@pytest.mark.parametrize("size", ["3M", "10M", "1G", "200G"])
def test_chs_matches_qemu_img(tmp_path: Path, size: str) -> None:
    """qemu-img's own fixed VHD (17, 63 and 255 sectors-per-track branches) as the geometry oracle."""
    out = tmp_path / "q.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=fixed", str(out), size], check=True, timeout=60)
    with open(out, "rb") as f:
        f.seek(-512, 2)
        foot = f.read()
    out.unlink()
    current = int.from_bytes(foot[48:56], "big")
    assert vhd.chs(current) == (int.from_bytes(foot[56:58], "big"), foot[58], foot[59])


def test_read_footer_roundtrip_and_damage(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x01" * (2 << 20))
    out = tmp_path / "disk.vhd"
    vhd.write_fixed_vhd(raw, out, EPOCH, "ab" * 32)
    assert out.read_bytes()[: 2 << 20] == raw.read_bytes()
    f = vhd.read_footer(out)
    assert f.current_size == f.original_size == 2 << 20 and f.disk_type == 2 and f.creator_app == b"qem2"
    data = bytearray(out.read_bytes())
    data[-100] ^= 1
    out.write_bytes(bytes(data))
    with pytest.raises(vhd.VhdError, match="checksum"):
        vhd.read_footer(out)
    with pytest.raises(vhd.VhdError, match="cookie"):
        vhd.read_footer(raw)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-utils is not installed")
def test_qemu_img_reads_the_exact_size_and_content(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(range(256)) * (3 * 4096))  # 3 MiB, not a CHS-exact size
    out = tmp_path / "disk.vhd"
    vhd.write_fixed_vhd(raw, out, EPOCH, "ab" * 32)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", str(out)],
                                     capture_output=True, text=True, timeout=60, check=True).stdout)
    assert info["virtual-size"] == 3 << 20 and info["format"] == "vpc"
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vpc", str(raw), str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
