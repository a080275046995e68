"""Fixed VHD (Microsoft Virtual Hard Disk Image Format Specification 1.0), the format Azure imports.

A fixed VHD is the raw disk followed by a 512-byte footer. Azure wants the raw part to be a multiple
of 1 MiB. Fields other tools fill from the clock or a random source are derived instead: the time
stamp is the image epoch (seconds since 2000-01-01 UTC), the unique id comes from the image digest.

Creator application "qem2": VHD readers disagree on whether the disk size is the footer's
`current_size` or its CHS geometry (which rounds down). QEMU, like Hyper-V tooling, takes
`current_size` only for a few known creators; "qem2" is the one `qemu-img convert -o force_size`
writes for Azure uploads, so every reader sees the exact size without a maximal fake geometry.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from sealbox.formats.gpt import copy_sparse

FOOTER_SIZE = 512
COOKIE = b"conectix"
FEATURES = 0x00000002  # "reserved" bit, always set
VERSION = 0x00010000
FIXED = 2
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
CREATOR_APP = b"qem2"
CREATOR_VERSION = 0x00010000
CREATOR_OS = b"Wi2k"
ALIGN = 1 << 20
_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427s")


class VhdError(ValueError):
    pass


def chs(size: int) -> tuple[int, int, int]:
    """Cylinders, heads, sectors per track: the specification's appendix algorithm."""
    total = min(size // 512, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = total // spt
    else:
        spt = 17
        cth = total // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = total // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = total // spt
    return cth // heads, heads, spt


def checksum(footer: bytes) -> int:
    """One's complement of the byte sum, with the checksum field (bytes 64..67) counted as zero."""
    return ~(sum(footer[:64]) + sum(footer[68:])) & 0xFFFFFFFF


def footer(size: int, epoch: int, digest: str) -> bytes:
    if size <= 0 or size % ALIGN:
        raise VhdError(f"a VHD for Azure needs a disk size that is a positive multiple of 1 MiB, not {size}")
    cyl, heads, spt = chs(size)
    unique = uuid.UUID(bytes=hashlib.sha256(f"sealbox-vhd:{digest}".encode()).digest()[:16])
    stamp = max(0, epoch - VHD_EPOCH) & 0xFFFFFFFF
    fields = [COOKIE, FEATURES, VERSION, 0xFFFFFFFFFFFFFFFF, stamp, CREATOR_APP, CREATOR_VERSION, CREATOR_OS,
              size, size, cyl, heads, spt, FIXED, 0, unique.bytes, 0, bytes(427)]
    raw = _FOOTER.pack(*fields)
    fields[14] = checksum(raw)
    return _FOOTER.pack(*fields)


def write_fixed_vhd(raw: Path, out: Path, epoch: int, digest: str) -> None:
    """out = raw disk (sparse copy) + footer."""
    size = raw.stat().st_size
    tail = footer(size, epoch, digest)
    with open(out, "wb") as f:
        f.truncate(size)
        copy_sparse(raw, f)
        f.seek(size)
        f.write(tail)


@dataclass(frozen=True)
class Footer:
    current_size: int
    original_size: int
    disk_type: int
    timestamp: int
    creator_app: bytes
    geometry: tuple[int, int, int]
    unique_id: uuid.UUID


def read_footer(path: Path) -> Footer:
    size = path.stat().st_size
    if size < FOOTER_SIZE:
        raise VhdError(f"{path}: too small for a VHD footer")
    with open(path, "rb") as f:
        f.seek(size - FOOTER_SIZE)
        data = f.read(FOOTER_SIZE)
    v = _FOOTER.unpack(data)
    if v[0] != COOKIE:
        raise VhdError(f"{path}: no VHD footer (cookie 'conectix' missing)")
    if checksum(data) != v[14]:
        raise VhdError(f"{path}: VHD footer checksum does not match")
    return Footer(current_size=v[9], original_size=v[8], disk_type=v[13], timestamp=v[4], creator_app=v[5],
                  geometry=(v[10], v[11], v[12]), unique_id=uuid.UUID(bytes=v[15]))
