"""Unpack a sealbox initrd with GNU cpio, as the kernel would: the initrd is several zstd frames, each one newc
archive (a segment); cpio stops at an archive's trailer, so each segment is given to it on its own, in order
(a later segment's entry replaces an earlier one's, as in the kernel's unpacker)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import zstandard


def segments(initrd: Path) -> list[bytes]:
    data, out = initrd.read_bytes(), []
    while data:
        d = zstandard.ZstdDecompressor().decompressobj()
        out.append(d.decompress(data))
        data = d.unused_data
    return out


def unpack(initrd: Path, dest: Path) -> None:
    for segment in segments(initrd):
        subprocess.run(["cpio", "-idmu", "--quiet", "--no-absolute-filenames"], input=segment, cwd=dest, check=True,
                       timeout=300)
