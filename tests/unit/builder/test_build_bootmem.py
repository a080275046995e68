"""The minimum guest memory recorded in the manifest, from the initramfs artifacts (no boot here; the
integration tests boot images at the recorded minimum)."""

from __future__ import annotations

import math
import os
from pathlib import Path

from sealbox.builder.bootmem import MIB, initramfs_footprint, min_memory_mib
from sealbox.formats.compress import zstd_decompress, zstd_writer
from sealbox.formats.cpio import write_cpio


def _tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/big").write_bytes(os.urandom(3 * MIB + 5))
    (tree / "usr/bin/small").write_bytes(b"x" * 10)  # one page on tmpfs, 10 bytes in the archive
    (tree / "usr/bin/empty").write_bytes(b"")
    os.link(tree / "usr/bin/big", tree / "usr/bin/big-link")  # a hard link's data counts once
    (tree / "usr/bin/sym").symlink_to("big")
    return tree


def _archive(tree: Path, out: Path) -> Path:
    with zstd_writer(out, 3) as w:
        write_cpio(tree, w, 0)
    return out


def test_footprint_is_the_archive_size_and_the_page_rounded_file_data(tmp_path: Path) -> None:
    zst = _archive(_tree(tmp_path), tmp_path / "initrd.cpio.zst")
    archive, data = initramfs_footprint(zst)
    assert archive == len(zstd_decompress(zst))
    assert data == (math.ceil((3 * MIB + 5) / 4096) + 1) * 4096


def test_min_memory_per_boot_mode(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    stage = tmp_path / "stage"
    stage.mkdir()
    _archive(tree, stage / "initrd.cpio.zst")
    archive, data = initramfs_footprint(stage / "initrd.cpio.zst")
    got = min_memory_mib(stage, {"initrd": "initrd.cpio.zst"})
    # measured (docs/sandbox-runtime.md): the initramfs is unpacked into a tmpfs limited to half of the RAM the
    # kernel sees, which excludes the archive itself and ~45 MiB the kernel keeps
    expect = math.ceil((archive + 2 * data) / MIB * 64 / 63) + 64
    assert got == {"initrd": expect}
    assert set(min_memory_mib(stage, {"initrd": "initrd.cpio.zst", "loader": "initrd.cpio.zst"})) == {"initrd", "disk"}
    assert min_memory_mib(stage, {}) == {}
