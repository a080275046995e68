"""builder/disk.py on a small stand-in UKI (any bytes: the ESP only carries the file): every format read by
the real tools (sgdisk, fsck.fat, mtools, qemu-img, GNU tar), bit-for-bit repeatable, identity derived
from the UKI digest. Booting real disks is in tests/integration/disk."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sealbox.builder import disk
from sealbox.formats import gpt, vhd

TOOLS = ("sgdisk", "fsck.fat", "mkfs.fat", "mcopy", "mtype", "qemu-img")
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
pytestmark = pytest.mark.skipif(not all(shutil.which(t, path=PATH) for t in TOOLS),
                                reason=f"needs {', '.join(TOOLS)} (gdisk, dosfstools, mtools, qemu-utils)")
EPOCH = 1_735_689_600


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PATH": PATH, "MTOOLS_SKIP_CHECK": "1"}, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def uki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("uki") / "img.efi"
    p.write_bytes(b"MZ" + hashlib.sha256(b"sealbox").digest() * 40000)  # ~1.3 MB, not all zeros
    return p


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory, uki: Path) -> Path:
    out = tmp_path_factory.mktemp("out")
    boot = disk.write_disks(out, tmp_path_factory.mktemp("work"), uki, ["disk", "qcow2", "vhd", "gcp", "initrd"], EPOCH)
    assert boot == {"disk": "disk.raw", "qcow2": "disk.qcow2", "vhd": "disk.vhd", "gcp": "disk.gcp.tar.gz"}
    assert sorted(os.listdir(out)) == sorted(boot.values())  # nothing else left behind
    return out


def _esp(raw: Path, tmp: Path) -> Path:
    part = gpt.read_gpt(raw).partitions[0]
    esp = tmp / "esp.fat"
    with open(raw, "rb") as f:
        f.seek(part.offset)
        esp.write_bytes(f.read(part.size))
    return esp


def test_raw_gpt_and_esp_pass_the_real_checkers(disks: Path, uki: Path, tmp_path: Path) -> None:
    raw = disks / "disk.raw"
    r = _run(["sgdisk", "-v", str(raw)])
    assert r.returncode == 0 and "No problems found" in r.stdout, r.stdout
    ident = disk.DiskIdentity.of(uki)
    parsed = gpt.read_gpt(raw)
    assert parsed.disk_guid == gpt.derived_guid(ident.digest, "disk")
    (esp_part,) = parsed.partitions
    assert esp_part.type_guid == gpt.ESP_TYPE and esp_part.size == ident.esp_size and raw.stat().st_size % (1 << 20) == 0
    esp = _esp(raw, tmp_path)
    r = _run(["fsck.fat", "-n", str(esp)])
    assert r.returncode == 0, r.stdout + r.stderr
    got = subprocess.run(["mtype", "-i", str(esp), "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, timeout=60,
                         env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert got == uki.read_bytes()
    listing = _run(["mdir", "-i", str(esp), "::/EFI/BOOT"]).stdout
    assert "2025-01-01   0:00" in listing  # fixed timestamps, not the build's clock
    assert f"{ident.volume_id:08X}"[:4] in _run(["mdir", "-i", str(esp), "::/"]).stdout


@pytest.mark.parametrize("name,fmt", [("disk.raw", "raw"), ("disk.qcow2", "qcow2"), ("disk.vhd", "vpc")])
def test_qemu_img_reads_the_same_disk(disks: Path, name: str, fmt: str) -> None:
    info = json.loads(_run(["qemu-img", "info", "--output=json", "-f", fmt, str(disks / name)]).stdout)
    assert info["virtual-size"] == (disks / "disk.raw").stat().st_size
    r = _run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(disks / "disk.raw"), str(disks / name)])
    assert r.returncode == 0, r.stdout + r.stderr
    if fmt == "qcow2":
        assert _run(["qemu-img", "check", str(disks / name)]).returncode == 0


def test_vhd_footer_is_derived(disks: Path, uki: Path) -> None:
    f = vhd.read_footer(disks / "disk.vhd")
    assert f.timestamp == EPOCH - vhd.VHD_EPOCH and f.disk_type == 2 and f.current_size % (1 << 20) == 0


def test_gcp_tarball_holds_a_whole_gib_disk_raw(disks: Path, tmp_path: Path) -> None:
    big = tmp_path / "disk.raw"
    zero = bytes(1 << 20)
    with subprocess.Popen(["tar", "-xzOf", str(disks / "disk.gcp.tar.gz"), "disk.raw"], stdout=subprocess.PIPE) as tar, \
            open(big, "wb") as dst:  # GNU tar extracts; written sparse (seek over zero chunks)
        assert tar.stdout is not None
        while chunk := tar.stdout.read(1 << 20):
            dst.seek(len(chunk), 1) if chunk == zero[: len(chunk)] else dst.write(chunk)
        size = dst.tell()
        dst.truncate(size)
    assert tar.returncode == 0 and size % (1 << 30) == 0 and size > 0
    r = _run(["sgdisk", "-v", str(big)])
    assert "No problems found" in r.stdout, r.stdout
    small = gpt.read_gpt(disks / "disk.raw")
    assert gpt.read_gpt(big).partitions == small.partitions and gpt.read_gpt(big).disk_guid == small.disk_guid
    with open(big, "rb") as a, open(disks / "disk.raw", "rb") as b:  # same ESP bytes
        p = small.partitions[0]
        a.seek(p.offset)
        b.seek(p.offset)
        assert a.read(p.size) == b.read(p.size)


def test_every_format_is_bit_for_bit_repeatable(disks: Path, uki: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    again.mkdir()
    os.environ["SEALBOX_REPRO_NOISE"] = "1"
    try:
        disk.write_disks(again, tmp_path / "work", uki, ["disk", "qcow2", "vhd", "gcp"], EPOCH)
    finally:
        del os.environ["SEALBOX_REPRO_NOISE"]
    for name in os.listdir(disks):
        assert (again / name).read_bytes() == (disks / name).read_bytes(), name


def test_identity_follows_the_unsigned_uki(tmp_path: Path, uki: Path) -> None:
    """A bigger (signed) UKI written with the unsigned identity keeps layout and GUIDs."""
    signed = tmp_path / "signed.efi"
    signed.write_bytes(uki.read_bytes() + b"\0" * 8 + b"signature" * 300)
    ident = disk.DiskIdentity.of(uki)
    out = tmp_path / "o"
    out.mkdir()
    disk.write_disks(out, tmp_path / "w", signed, ["disk"], EPOCH, identity=ident)
    assert gpt.read_gpt(out / "disk.raw").partitions == ident.table().partitions


def test_no_disk_format_writes_nothing(tmp_path: Path, uki: Path) -> None:
    assert disk.write_disks(tmp_path, tmp_path / "w", uki, ["initrd", "uki"], EPOCH) == {}
    assert disk.tool_versions(["initrd"]) == {}
    assert set(disk.tool_versions(["vhd"])) == {"dosfstools", "mtools", "qemu-utils", "cryptsetup-bin", "zlib"}


def test_wanted_accepts_any_iterable() -> None:
    """sign passes a generator over the manifest's boot keys: every disk format must be found, not only the first."""
    assert disk.wanted(k for k in ["gcp", "uki", "disk", "vhd", "qcow2"]) == ["disk", "qcow2", "vhd", "gcp"]


def test_differences_are_explained(tmp_path: Path, uki: Path) -> None:
    """verify-reproducible's explanation of two disks built three days apart: ESP dates, VHD time stamp."""
    from sealbox.builder.compare import explain

    for tag, epoch in (("a", EPOCH), ("b", EPOCH + 3 * 86400)):
        (tmp_path / tag).mkdir()
        disk.write_disks(tmp_path / tag, tmp_path / f"w{tag}", uki, ["disk", "qcow2", "vhd"], epoch)
    raw = explain("disk.raw", tmp_path / "a/disk.raw", tmp_path / "b/disk.raw", tmp_path)
    size = uki.stat().st_size
    assert f"ESP listing, first build only: ::/EFI/BOOT/BOOTX64 EFI {size} 2025-01-01 0:00" in raw, raw
    assert any(f"second build only: ::/EFI/BOOT/BOOTX64 EFI {size} 2025-01-04" in line for line in raw)
    assert not [line for line in raw if "content" in line]  # same UKI bytes
    vhd_lines = explain("disk.vhd", tmp_path / "a/disk.vhd", tmp_path / "b/disk.vhd", tmp_path)
    assert vhd_lines == [f"VHD footer timestamp: {EPOCH - 946684800} != {EPOCH + 3 * 86400 - 946684800}"]
    q = explain("disk.qcow2", tmp_path / "a/disk.qcow2", tmp_path / "b/disk.qcow2", tmp_path)
    assert q[0].startswith("the virtual disks differ") and "mismatch" in q[0]


def test_verity_layout(tmp_path: Path, uki: Path) -> None:
    """disk_root = "verity": ESP, read-only root and hash partitions (DPS types, GUIDs = root hash halves), aligned."""
    data, tree = tmp_path / "rootfs.ext4", tmp_path / "rootfs.verity"
    data.write_bytes(b"\x11" * (3 << 20))
    tree.write_bytes(b"\x22" * 12288)  # not a whole MiB: the partition is rounded up
    root = disk.VerityRoot(data, tree, "0123456789abcdef" * 4, "ab" * 32, (3 << 20) // 4096)
    (tmp_path / "o").mkdir()
    disk.write_disks(tmp_path / "o", tmp_path / "w", uki, ["disk", "gcp"], EPOCH, verity=root)
    raw = tmp_path / "o/disk.raw"
    esp, r, v = gpt.read_gpt(raw).partitions
    assert (r.type_guid, r.name, r.guid) == (gpt.ROOT_X86_64_TYPE, "root-x86-64", root.root_guid)
    assert (v.type_guid, v.name, v.guid) == (gpt.ROOT_X86_64_VERITY_TYPE, "root-x86-64-verity", root.verity_guid)
    assert str(r.guid).replace("-", "") == root.roothash[:32] and str(v.guid).replace("-", "") == root.roothash[32:]
    assert r.attributes & gpt.ATTR_READ_ONLY and v.attributes & gpt.ATTR_READ_ONLY and v.size == 1 << 20
    with open(raw, "rb") as f:
        f.seek(r.offset)
        assert f.read(3 << 20) == data.read_bytes()
        f.seek(v.offset)
        assert f.read(12288) == tree.read_bytes() and f.read(4096) == bytes(4096)
    out = _run(["sgdisk", "-v", str(raw)]).stdout
    assert "No problems found" in out and "Caution" not in out, out
