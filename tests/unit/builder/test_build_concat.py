"""Everything that reads initrd.cpio.zst copes with the initramfs buffer format the segmented initrd uses:
several zstd frames, each a whole newc archive with its own trailer, one after the other.

The kernel unpacks such a buffer archive by archive (init/initramfs.c: a hard link table per archive, freed at
each trailer; zero padding between archives). These tests build such buffers with the builder's writer and
check the readers: formats.cpio.read_cpio, formats.compress.zstd_decompress, builder.bootmem (the recorded
minimum memory), sandbox.initrd_cache (the decompressed copy for direct boots), builder.compare (explanations).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import stat
from pathlib import Path

import pytest
import zstandard

from sealbox.builder.bootmem import MIB, initramfs_footprint
from sealbox.builder.compare import explain
from sealbox.formats.compress import zstd_decompress
from sealbox.formats.cpio import read_cpio, write_cpio


def _tree(root: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    root.mkdir()
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    for rel, first in (links or {}).items():
        os.link(root / first, root / rel)
    return root


def _cpio(tree: Path) -> bytes:
    buf = io.BytesIO()
    write_cpio(tree, buf, 0)
    return buf.getvalue()


def _two_archives(tmp_path: Path) -> tuple[bytes, bytes]:
    # both archives number their inodes from 1: a hard link in the second must not pick up data from the first
    a = _cpio(_tree(tmp_path / "a", {"usr/bin/one": b"first archive\n", "usr/bin/two": b"x"}, {"usr/bin/one-link": "usr/bin/one"}))
    b = _cpio(_tree(tmp_path / "b", {"etc/app.conf": b"second archive\n", "opt/big": os.urandom(2 * MIB + 1)},
                    {"opt/big-link": "opt/big"}))
    return a, b


def _frames(*parts: bytes) -> bytes:
    return b"".join(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(p) for p in parts)


def test_read_cpio_reads_every_archive_with_a_link_table_per_archive(tmp_path: Path) -> None:
    a, b = _two_archives(tmp_path)
    entries = {e.name: e for e in read_cpio(a + b"\0" * 8 + b)}  # zero padding between archives is allowed
    assert entries["usr/bin/one-link"].data == b"first archive\n"
    assert entries["etc/app.conf"].data == b"second archive\n"
    big = entries["opt/big"].data
    assert len(big) == 2 * MIB + 1 and entries["opt/big-link"].data == big


def test_read_cpio_still_rejects_garbage_after_a_trailer(tmp_path: Path) -> None:
    a, _ = _two_archives(tmp_path)
    from sealbox.errors import BuildError

    with pytest.raises(BuildError):
        list(read_cpio(a + b"junk"))


def test_zstd_decompress_reads_every_frame(tmp_path: Path) -> None:
    a, b = _two_archives(tmp_path)
    p = tmp_path / "initrd.cpio.zst"
    p.write_bytes(_frames(a, b))
    assert zstd_decompress(p) == a + b


def test_bootmem_counts_the_files_of_every_archive(tmp_path: Path) -> None:
    a, b = _two_archives(tmp_path)
    p = tmp_path / "initrd.cpio.zst"
    p.write_bytes(_frames(a, b))
    archive, data = initramfs_footprint(p)
    assert archive == len(a) + len(b)
    pages = [len(b"first archive\n"), 1, len(b"second archive\n"), 2 * MIB + 1]  # hard links count once
    assert data == sum(math.ceil(n / 4096) * 4096 for n in pages)


def test_initrd_cache_decompresses_every_frame(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox import initrd_cache

    monkeypatch.setenv("SEALBOX_CACHE_DIR", str(tmp_path / "cache"))
    a, b = _two_archives(tmp_path)
    p = tmp_path / "initrd.cpio.zst"
    p.write_bytes(_frames(a, b))
    out = initrd_cache.ensure_plain(p, hashlib.sha256(p.read_bytes()).hexdigest())
    assert out.read_bytes() == a + b


def test_compare_explains_a_difference_in_a_later_archive(tmp_path: Path) -> None:
    a, b = _two_archives(tmp_path)
    changed = _cpio(_tree(tmp_path / "c", {"etc/app.conf": b"changed\n", "opt/big": b"small now"}, {"opt/big-link": "opt/big"}))
    (tmp_path / "x.cpio.zst").write_bytes(_frames(a, b))
    (tmp_path / "y.cpio.zst").write_bytes(_frames(a, changed))
    lines = explain("initrd.cpio.zst", tmp_path / "x.cpio.zst", tmp_path / "y.cpio.zst", tmp_path)
    assert any(line.startswith("/etc/app.conf: content ") for line in lines), lines
    assert not any(line.startswith("/usr/bin/") for line in lines), lines
    assert lines[-1].startswith("zstd frames (initrd segments") and ": 2 of 2 and 2" in lines[-1], lines
    assert all(stat.S_ISREG(e.mode) or stat.S_ISDIR(e.mode) for e in read_cpio(a))
