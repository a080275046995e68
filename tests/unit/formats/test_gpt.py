"""GPT writer and reader: layout, CRCs, backup table, derived GUIDs, the PCR 5 event, hostile tables."""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid
import zlib
from pathlib import Path

import pytest

from sealbox.formats import gpt

DIGEST = "ab" * 32


def _table(sizes: list[int], multiple: int = gpt.ALIGN) -> gpt.Table:
    parts = [(gpt.ESP_TYPE if i == 0 else gpt.ROOT_X86_64_TYPE, gpt.derived_guid(DIGEST, f"p{i}"), s, f"part{i}", 0)
             for i, s in enumerate(sizes)]
    return gpt.plan(gpt.derived_guid(DIGEST, "disk"), parts, multiple=multiple)


def _disk(tmp_path: Path, sizes: list[int], fill: bool = True) -> tuple[Path, gpt.Table]:
    table = _table(sizes)
    contents = []
    for i, s in enumerate(sizes):
        src = tmp_path / f"c{i}"
        src.write_bytes(bytes([i + 1]) * min(s, 4096) if fill else b"")
        contents.append(src)
    out = tmp_path / "disk.raw"
    gpt.write_disk(out, table, contents)
    return out, table


def test_layout_is_aligned_and_sized() -> None:
    t = _table([5 << 20, 3 << 20])
    a, b = t.partitions
    assert a.first_lba == 2048 and a.size == 5 << 20
    assert b.first_lba * gpt.SECTOR == 6 << 20  # next MiB boundary after the first
    assert t.size % gpt.ALIGN == 0 and t.size >= b.offset + b.size + 33 * gpt.SECTOR
    assert b.last_lba <= t.last_usable
    assert _table([5 << 20], multiple=1 << 30).size == 1 << 30


def test_derived_guids_are_stable_version4_and_distinct() -> None:
    g = gpt.derived_guid(DIGEST, "disk")
    assert g == gpt.derived_guid(DIGEST, "disk") and g.version == 4 and g.variant == uuid.RFC_4122
    assert g != gpt.derived_guid(DIGEST, "esp") != gpt.derived_guid("cd" * 32, "esp")


def test_primary_and_backup_read_back(tmp_path: Path) -> None:
    path, table = _disk(tmp_path, [2 << 20, 1 << 20])
    p, b = gpt.read_gpt(path), gpt.read_gpt(path, backup=True)
    assert p.partitions == b.partitions == table.partitions
    assert (p.my_lba, p.alternate_lba) == (1, table.total_sectors - 1) == (b.alternate_lba, b.my_lba)
    assert p.disk_guid == table.disk_guid and p.entries_lba == 2
    assert b.entries_lba == table.total_sectors - 33
    data = path.read_bytes()
    assert data[510:512] == b"\x55\xaa" and data[450] == 0xEE
    assert data[1 << 20] == 1 and data[(3 << 20)] == 2  # each content at its partition's offset


def test_gpt_event_layout(tmp_path: Path) -> None:
    path, _ = _disk(tmp_path, [2 << 20, 1 << 20])
    parsed = gpt.read_gpt(path)
    ev = gpt.gpt_event(parsed)
    assert ev[:92] == path.read_bytes()[512:604]
    assert struct.unpack_from("<Q", ev, 92)[0] == 2 and len(ev) == 92 + 8 + 2 * 128
    assert ev[100:228] == parsed.entries[:128]


@pytest.mark.parametrize("where,what", [(512 + 40, "header CRC"), (1024 + 5, "entry array CRC")])
def test_corruption_is_detected(tmp_path: Path, where: int, what: str) -> None:
    path, _ = _disk(tmp_path, [1 << 20])
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(gpt.GptError, match=what):
        gpt.read_gpt(path)


def _rewrite_header(path: Path, **changes: int) -> None:
    """Change header fields and fix the header CRC, as a hostile or foreign writer could."""
    data = bytearray(path.read_bytes())
    fields = list(struct.unpack_from("<8sIIIIQQQQ16sQIII", data, 512))
    names = ["sig", "rev", "size", "crc", "res", "my", "alt", "first", "last", "guid", "elba", "count", "esize", "ecrc"]
    for k, v in changes.items():
        fields[names.index(k)] = v
    fields[3] = 0
    fields[3] = zlib.crc32(struct.pack("<8sIIIIQQQQ16sQIII", *fields))
    struct.pack_into("<8sIIIIQQQQ16sQIII", data, 512, *fields)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("changes,msg", [
    ({"count": 0xFFFFFFFF}, "not plausible"),
    ({"esize": 4}, "not plausible"),
    ({"elba": 1 << 40}, "beyond the end"),
    ({"size": 4000}, "out of range"),
])
def test_hostile_headers_are_refused(tmp_path: Path, changes: dict[str, int], msg: str) -> None:
    path, _ = _disk(tmp_path, [1 << 20])
    _rewrite_header(path, **changes)
    with pytest.raises(gpt.GptError, match=msg):
        gpt.read_gpt(path)


def test_not_a_gpt_and_too_small(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(bytes(1 << 20))
    with pytest.raises(gpt.GptError, match="signature"):
        gpt.read_gpt(p)
    p.write_bytes(bytes(1000))
    with pytest.raises(gpt.GptError, match="too small"):
        gpt.read_gpt(p)


def test_content_larger_than_partition_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(bytes(2 << 20) + b"x")
    with pytest.raises(gpt.GptError, match="does not fit"):
        gpt.write_disk(tmp_path / "d", _table([2 << 20]), [big])


def test_bad_partition_size_and_name() -> None:
    with pytest.raises(gpt.GptError, match="multiple of 512"):
        _table([1000])
    long = gpt.Partition(gpt.ESP_TYPE, uuid.uuid4(), 2048, 4095, "x" * 37)
    with pytest.raises(gpt.GptError, match="36"):
        long.entry()


@pytest.mark.skipif(shutil.which("sgdisk") is None, reason="gdisk is not installed")
def test_sgdisk_finds_no_problems(tmp_path: Path) -> None:
    path, table = _disk(tmp_path, [3 << 20, 2 << 20])
    r = subprocess.run(["sgdisk", "-v", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "No problems found" in r.stdout, r.stdout + r.stderr
    info = subprocess.run(["sgdisk", "-i", "1", str(path)], capture_output=True, text=True, timeout=60).stdout
    assert str(table.partitions[0].guid).upper() in info and "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in info
    disk = subprocess.run(["sgdisk", "-p", str(path)], capture_output=True, text=True, timeout=60).stdout
    assert str(table.disk_guid).upper() in disk
