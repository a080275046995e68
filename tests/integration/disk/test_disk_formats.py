"""The default image's disk formats, read by the real tools and booted under OVMF (TCG) to ready.

disk.raw is booted through `sealbox run --boot disk-image` (tests/integration/runtime); here qcow2 and
the fixed VHD boot directly, and the GCP tarball's disk.raw after GNU tar unpacked it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ovmf_boot import READY, boot_disk
from sealbox.formats import gpt

pytestmark = pytest.mark.integration
FORMATS = {"disk.raw": "raw", "disk.qcow2": "qcow2", "disk.vhd": "vpc"}


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1", "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/sbin"})


def _unpack_gcp(tarball: Path, dest: Path) -> Path:
    """GNU tar extracts disk.raw; written sparse (zero MiB chunks become holes) to spare the disk."""
    out, zero = dest / "disk.raw", bytes(1 << 20)
    with subprocess.Popen(["tar", "-xzOf", str(tarball), "disk.raw"], stdout=subprocess.PIPE) as tar, open(out, "wb") as f:
        assert tar.stdout is not None
        while chunk := tar.stdout.read(1 << 20):
            f.seek(len(chunk), 1) if chunk == zero[: len(chunk)] else f.write(chunk)
        f.truncate(f.tell())
    assert tar.returncode == 0
    return out


@pytest.fixture(scope="module")
def gcp_raw(disk_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _unpack_gcp(disk_image / "disk.gcp.tar.gz", tmp_path_factory.mktemp("gcp"))


def test_qemu_img_reads_every_format_with_the_right_size(disk_image: Path, gcp_raw: Path) -> None:
    size = (disk_image / "disk.raw").stat().st_size
    assert size % (1 << 20) == 0
    for name, fmt in FORMATS.items():
        info = json.loads(_run(["qemu-img", "info", "--output=json", "-f", fmt, str(disk_image / name)]).stdout)
        assert info["format"] == fmt and info["virtual-size"] == size, (name, info)
        if fmt != "raw":
            r = _run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(disk_image / "disk.raw"), str(disk_image / name)])
            assert r.returncode == 0, (name, r.stdout)
    info = json.loads(_run(["qemu-img", "info", "--output=json", "-f", "raw", str(gcp_raw)]).stdout)
    assert info["virtual-size"] % (1 << 30) == 0 and info["virtual-size"] >= size
    listing = _run(["tar", "-tvzf", str(disk_image / "disk.gcp.tar.gz")]).stdout.splitlines()
    assert len(listing) == 1 and listing[0].split()[-1] == "disk.raw" and listing[0].split()[1] == "0/0"


def test_gpt_and_esp_have_no_errors(disk_image: Path, gcp_raw: Path, tmp_path: Path) -> None:
    for disk in (disk_image / "disk.raw", gcp_raw):
        r = _run(["sgdisk", "-v", str(disk)])
        assert r.returncode == 0 and "No problems found" in r.stdout, (disk, r.stdout)
    (esp,) = gpt.read_gpt(disk_image / "disk.raw").partitions
    assert esp.type_guid == gpt.ESP_TYPE and gpt.read_gpt(gcp_raw).partitions == (esp,)
    fat = tmp_path / "esp.fat"
    with open(disk_image / "disk.raw", "rb") as f:
        f.seek(esp.offset)
        fat.write_bytes(f.read(esp.size))
    r = _run(["fsck.fat", "-n", str(fat)])
    assert r.returncode == 0, r.stdout + r.stderr
    uki = json.loads((disk_image / "manifest.json").read_text())["boot"]["uki"]
    got = subprocess.run(["mtype", "-i", str(fat), "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, timeout=120,
                         env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert got == (disk_image / uki).read_bytes()


@pytest.mark.boot
@pytest.mark.parametrize("name", ["disk.qcow2", "disk.vhd", "gcp"])
def test_format_boots_under_ovmf_to_ready(disk_image: Path, gcp_raw: Path, qemu_ovmf: None, name: str) -> None:
    disk, fmt = (gcp_raw, "raw") if name == "gcp" else (disk_image / name, FORMATS[name])
    b = boot_disk(disk, fmt, timeout=300)
    assert b.marker == READY, b.console[-2000:]
    assert "BdsDxe: starting Boot" in b.console  # the firmware chose the disk itself (no -kernel)
    print(f"{name} boot to ready under OVMF/TCG: {b.seconds:.1f} s")
