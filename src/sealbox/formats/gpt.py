"""GUID partition tables (UEFI 2.10 §5.3), written byte-exact and read back defensively.

A sealbox disk is laid out by `plan()`: protective MBR, primary header and a 128-entry array, partitions
aligned to 1 MiB, backup array and header in the last 33 sectors. Nothing depends on time or chance:
the caller passes every GUID (derived from the image digest) and the writer fixes every other field.
`read_gpt` parses a table from the first and last sectors of a disk (for `measure`, `disk inspect` and
tests) and checks signatures, sizes and CRCs; `gpt_event` is the UEFI_GPT_DATA firmware measures into
PCR 5 when it boots from the disk.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

SECTOR = 512
ALIGN = 1 << 20  # partitions start on MiB boundaries (what sgdisk and cloud tools expect)
ENTRIES = 128
ENTRY_SIZE = 128
ENTRY_SECTORS = ENTRIES * ENTRY_SIZE // SECTOR  # 32
HEADER_SIZE = 92
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
MAX_ENTRIES_READ = 1024  # a hostile header may claim any count: refuse absurd ones

ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
# Discoverable Partitions Specification: x86-64 root and its dm-verity hash partition
ROOT_X86_64_TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")
ROOT_X86_64_VERITY_TYPE = uuid.UUID("2c7357ed-ebd2-46d9-aec1-23d437ec2bf5")
ATTR_READ_ONLY = 1 << 60  # DPS: mount read-only
ATTR_NO_AUTO = 1 << 63  # DPS: do not auto-mount

_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")  # 92 bytes
_ENTRY = struct.Struct("<16s16sQQQ72s")  # 128 bytes


class SeekRead(Protocol):
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def read(self, n: int = ..., /) -> bytes: ...


class GptError(ValueError):
    """A partition table that is missing, truncated or inconsistent."""


def derived_guid(digest: str, label: str) -> uuid.UUID:
    """A GUID that is a pure function of the image digest and a label (version-4 layout, like systemd's
    derived IDs), so two builds of the same image get the same disk and partition GUIDs."""
    raw = bytearray(hashlib.sha256(f"sealbox-gpt:{label}:{digest}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return uuid.UUID(bytes=bytes(raw))


@dataclass(frozen=True)
class Partition:
    type_guid: uuid.UUID
    guid: uuid.UUID
    first_lba: int
    last_lba: int  # inclusive
    name: str
    attributes: int = 0

    @property
    def offset(self) -> int:
        return self.first_lba * SECTOR

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * SECTOR

    def entry(self) -> bytes:
        name = self.name.encode("utf-16-le")
        if len(name) > 72:
            raise GptError(f"partition name {self.name!r} is longer than 36 UTF-16 units")
        return _ENTRY.pack(self.type_guid.bytes_le, self.guid.bytes_le, self.first_lba, self.last_lba,
                           self.attributes, name.ljust(72, b"\0"))


@dataclass(frozen=True)
class Table:
    disk_guid: uuid.UUID
    total_sectors: int
    partitions: tuple[Partition, ...]

    @property
    def size(self) -> int:
        return self.total_sectors * SECTOR

    @property
    def first_usable(self) -> int:
        return 2 + ENTRY_SECTORS

    @property
    def last_usable(self) -> int:
        return self.total_sectors - 2 - ENTRY_SECTORS

    def entries(self) -> bytes:
        return b"".join(p.entry() for p in self.partitions).ljust(ENTRIES * ENTRY_SIZE, b"\0")

    def header(self, primary: bool) -> bytes:
        """The 92-byte header (its CRC filled in)."""
        my_lba, alt_lba = (1, self.total_sectors - 1) if primary else (self.total_sectors - 1, 1)
        entries_lba = 2 if primary else self.total_sectors - 1 - ENTRY_SECTORS
        fields = [SIGNATURE, REVISION, HEADER_SIZE, 0, 0, my_lba, alt_lba, self.first_usable, self.last_usable,
                  self.disk_guid.bytes_le, entries_lba, ENTRIES, ENTRY_SIZE, zlib.crc32(self.entries())]
        crc = zlib.crc32(_HEADER.pack(*fields))
        fields[3] = crc
        return _HEADER.pack(*fields)

    def protective_mbr(self) -> bytes:
        size = min(self.total_sectors - 1, 0xFFFFFFFF)
        # one 0xEE record from LBA 1 over the whole disk; CHS fields are the "not representable" values
        record = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
        return bytes(446) + record + bytes(48) + b"\x55\xaa"

    def head(self) -> bytes:
        """LBA 0 .. 33: protective MBR, primary header, primary entry array."""
        return self.protective_mbr() + self.header(True).ljust(SECTOR, b"\0") + self.entries()

    def tail(self) -> bytes:
        """The last 33 sectors: backup entry array, then the backup header."""
        return self.entries() + self.header(False).ljust(SECTOR, b"\0")


def plan(disk_guid: uuid.UUID, parts: list[tuple[uuid.UUID, uuid.UUID, int, str, int]], min_size: int = 0,
         multiple: int = ALIGN) -> Table:
    """Lay out partitions (type, guid, size in bytes, name, attributes) back to back from 1 MiB, each
    starting on a MiB boundary; the disk is at least `min_size` and a multiple of `multiple` bytes."""
    if len(parts) > ENTRIES:
        raise GptError(f"{len(parts)} partitions do not fit a {ENTRIES}-entry table")
    offset, out = ALIGN, []
    for type_guid, guid, size, name, attrs in parts:
        if size <= 0 or size % SECTOR:
            raise GptError(f"partition {name!r}: size {size} is not a positive multiple of {SECTOR}")
        out.append(Partition(type_guid, guid, offset // SECTOR, (offset + size) // SECTOR - 1, name, attrs))
        offset = -(-(offset + size) // ALIGN) * ALIGN
    need = offset + (1 + ENTRY_SECTORS) * SECTOR  # room for the backup table after the last partition
    total = max(need, min_size)
    total = -(-total // multiple) * multiple
    return Table(disk_guid, total // SECTOR, tuple(out))


CHUNK = 1 << 20
ZEROS = bytes(CHUNK)


def disk_chunks(table: Table, contents: Sequence[Path | None]) -> Iterator[bytes]:
    """The whole disk image as a stream of chunks: tables, each partition's content (a file no larger
    than the partition, or None for an empty one), zeros elsewhere (as ZEROS or shorter zero chunks)."""
    if len(contents) != len(table.partitions):
        raise GptError("one content file (or None) per partition is needed")
    for part, src in zip(table.partitions, contents, strict=True):
        if src is not None and src.stat().st_size > part.size:
            raise GptError(f"{src.name} ({src.stat().st_size} bytes) does not fit partition {part.name!r} ({part.size} bytes)")
    head, tail = table.head(), table.tail()
    pos = len(head)
    yield head
    for part, src in zip(table.partitions, contents, strict=True):
        if src is None:
            continue
        yield from _zeros(part.offset - pos)
        with open(src, "rb") as f:
            while block := f.read(CHUNK):
                yield block
                pos = part.offset + f.tell()
    yield from _zeros(table.size - len(tail) - pos)
    yield tail


def _zeros(n: int) -> Iterator[bytes]:
    while n > 0:
        yield ZEROS if n >= CHUNK else bytes(n)
        n -= CHUNK


def is_zero_run(chunk: bytes) -> bool:
    return chunk is ZEROS or chunk == (ZEROS if len(chunk) == CHUNK else bytes(len(chunk)))


def write_disk(path: Path, table: Table, contents: Sequence[Path | None]) -> None:
    """Write the disk image to `path`, leaving zero runs as holes (the file is sparse)."""
    with open(path, "wb") as f:
        for chunk in disk_chunks(table, contents):
            if is_zero_run(chunk):
                f.seek(len(chunk), 1)
            else:
                f.write(chunk)
        f.truncate(table.size)


def copy_sparse(src: Path, dst: BinaryIO) -> None:
    """Copy src into the open file `dst` at its position, seeking over all-zero chunks (holes)."""
    with open(src, "rb") as s:
        while block := s.read(CHUNK):
            if is_zero_run(block):
                dst.seek(len(block), 1)
            else:
                dst.write(block)


# ---- reading ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Parsed:
    header: bytes  # the HeaderSize header bytes as on disk
    disk_guid: uuid.UUID
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    entries_lba: int
    entry_count: int
    entry_size: int
    entries: bytes  # the whole array as on disk
    partitions: tuple[Partition, ...]  # non-empty entries, in array order


class _Header(NamedTuple):
    signature: bytes
    revision: int
    header_size: int
    header_crc: int
    reserved: int
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    disk_guid: bytes
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def parse_header(sector: bytes, where: str) -> _Header:
    if len(sector) < HEADER_SIZE or sector[:8] != SIGNATURE:
        raise GptError(f"{where}: no GPT header (signature 'EFI PART' missing)")
    h = _Header(*_HEADER.unpack_from(sector))
    if not HEADER_SIZE <= h.header_size <= SECTOR or len(sector) < h.header_size:
        raise GptError(f"{where}: GPT header size {h.header_size} is out of range")
    raw = bytearray(sector[: h.header_size])
    raw[16:20] = bytes(4)
    if zlib.crc32(bytes(raw)) != h.header_crc:
        raise GptError(f"{where}: GPT header CRC does not match")
    return h


def read_gpt(path: Path, backup: bool = False) -> Parsed:
    """The primary (or backup) GPT of a disk image file, validated."""
    with open(path, "rb") as f:
        return read_gpt_stream(f, path.stat().st_size, str(path), backup)


def read_gpt_stream(f: SeekRead, size: int, name: str, backup: bool = False) -> Parsed:
    """The GPT of a disk of `size` bytes readable from `f` (offsets relative to where `f` starts)."""
    if size < (2 + ENTRY_SECTORS) * SECTOR * 2:
        raise GptError(f"{name}: {size} bytes is too small for a GPT disk")
    where = f"{name} ({'backup' if backup else 'primary'} header)"
    f.seek(size - SECTOR if backup else SECTOR)
    sector = f.read(SECTOR)
    h = parse_header(sector, where)
    if not 0 < h.entry_count <= MAX_ENTRIES_READ or h.entry_size < ENTRY_SIZE or h.entry_size % 8 or h.entry_size > 4096:
        raise GptError(f"{where}: GPT entry array {h.entry_count} x {h.entry_size} is not plausible")
    if h.entries_lba * SECTOR + h.entry_count * h.entry_size > size:
        raise GptError(f"{where}: GPT entry array lies beyond the end of the disk")
    f.seek(h.entries_lba * SECTOR)
    array = f.read(h.entry_count * h.entry_size)
    if zlib.crc32(array) != h.entries_crc:
        raise GptError(f"{where}: GPT entry array CRC does not match")
    parts = []
    for i in range(h.entry_count):
        t, g, a, b, attrs, name_raw = _ENTRY.unpack_from(array, i * h.entry_size)
        if t == bytes(16):
            continue
        label = name_raw.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(uuid.UUID(bytes_le=t), uuid.UUID(bytes_le=g), a, b, label, attrs))
    return Parsed(sector[: h.header_size], uuid.UUID(bytes_le=h.disk_guid), h.my_lba, h.alternate_lba, h.first_usable,
                  h.last_usable, h.entries_lba, h.entry_count, h.entry_size, array, tuple(parts))


def gpt_event(parsed: Parsed) -> bytes:
    """UEFI_GPT_DATA (TCG PC Client PFP §10.2.5): the primary header as read (HeaderSize bytes; ours is 92),
    the number of non-empty entries, then those entries (SizeOfPartitionEntry bytes each) in array order."""
    used = [parsed.entries[i * parsed.entry_size:(i + 1) * parsed.entry_size] for i in range(parsed.entry_count)
            if parsed.entries[i * parsed.entry_size:i * parsed.entry_size + 16] != bytes(16)]
    return parsed.header + struct.pack("<Q", len(used)) + b"".join(used)
