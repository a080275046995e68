"""The least guest RAM an image boots in, recorded in its manifest (`min_memory_mib`) for `sealbox run`.

The kernel unpacks the initramfs into a tmpfs limited to half of the RAM it manages, and while it
unpacks, the archive itself still occupies RAM outside of that. Measured on Debian's 6.1 cloud kernel
under QEMU microvm (docs/sandbox-runtime.md): an image boots iff

    RAM >= archive + 2 * page-rounded file data + ~45 MiB (kernel, memmap: ~1/64 of RAM)

and below that the unpack fails ("Initramfs unpacking failed: write error") and the boot panics or
hangs. Recorded: archive + 2 * data, plus 1/63 for the memmap, plus 64 MiB.
"""

from __future__ import annotations

import math
import stat
from pathlib import Path
from typing import BinaryIO

MIB = 1 << 20
PAGE = 4096
KERNEL_MIB = 64  # measured ~41-48 MiB kept by the kernel at these sizes, plus a margin
HEADER = 110  # newc: "070701" + 13 eight-digit hex fields
CHUNK = 1 << 20


def _read_exact(f: BinaryIO, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            raise ValueError("truncated newc archive")
        out += chunk
    return out


def _skip(f: BinaryIO, n: int) -> None:
    while n > 0:
        got = len(f.read(min(n, CHUNK)))
        if not got:
            raise ValueError("truncated newc archive")
        n -= got


def initramfs_footprint(path: Path) -> tuple[int, int]:
    """(archive bytes, page-rounded bytes of file data once unpacked) of a zstd newc initramfs, streamed.

    The initramfs may be several archives one after the other (the segmented initrd: one zstd frame each, zero
    padding allowed between them); the kernel unpacks them all, so all count."""
    import zstandard

    archive = data = 0
    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as f:
        first = _read_exact(f, 1)
        while True:
            hdr = first + _read_exact(f, HEADER - 1)
            mode, size, namesize = int(hdr[14:22], 16), int(hdr[54:62], 16), int(hdr[94:102], 16)
            name_pad = -(HEADER + namesize) % 4
            name = _read_exact(f, namesize + name_pad)[:namesize]
            _skip(f, size + (-size % 4))
            archive += HEADER + namesize + name_pad + size + (-size % 4)
            if stat.S_ISREG(mode):  # a hard link's later entries carry no data
                data += math.ceil(size / PAGE) * PAGE
            first = f.read(1)
            if name == b"TRAILER!!!\0":  # padding, then the next archive or the end
                while first == b"\0":
                    archive += 1
                    first = f.read(1)
            if not first:
                if name != b"TRAILER!!!\0":
                    raise ValueError("truncated newc archive (no trailer)")
                break
    return archive, data


def min_memory_mib(stage: Path, boot: dict[str, str]) -> dict[str, int]:
    """{"initrd": MiB, "disk": MiB} for the boot modes the image has (rootfs in the initramfs, or on disk
    with the loader initramfs). A UKI carries the same initramfs compressed, so "initrd" bounds it too."""
    out = {}
    for mode, key in (("initrd", "initrd"), ("disk", "loader")):
        if key in boot:
            archive, data = initramfs_footprint(stage / boot[key])
            out[mode] = math.ceil((archive + 2 * data) / MIB * 64 / 63) + KERNEL_MIB
    return out
