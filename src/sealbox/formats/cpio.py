"""Deterministic newc (SVR4 "070701") cpio writer and reader.

Determinism by construction: entries in a fixed order (below), mtimes clamped to the epoch, inode numbers
assigned in archive order, device numbers zeroed, hard links emitted the way the kernel's initramfs
unpacker expects (first entry carries the data, later ones have size 0 and the same inode).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sealbox.errors import BuildError

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER = 110
MAX_FIELD = 0xFFFFFFFF


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _header(ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int, rmaj: int, rmin: int, namesize: int) -> bytes:
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rmaj, rmin, namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def walk_sorted(tree: Path) -> list[str]:
    """"." then all paths below `tree` (relative, no leading './'), sorted by their bytes; parents first.

    The "." entry carries the root directory's mode and owner: without it the kernel leaves the
    initramfs root world-writable, which sshd (rightly) refuses for authorized_keys paths.
    """
    out = []

    def fail(e: OSError) -> None:  # os.walk would otherwise skip an unreadable directory silently
        raise BuildError(f"cannot archive {e.filename}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(tree, onerror=fail):
        rel = os.path.relpath(dirpath, tree)
        for name in dirnames + filenames:
            out.append(name if rel == "." else f"{rel}/{name}")
    return ["."] + sorted(out, key=os.fsencode)


def archive_order(tree: Path, paths: list[str], stats: dict[str, os.stat_result]) -> list[str]:
    """Directories first (by path), then links and nodes (by path), then files grouped by kind.

    Every directory exists before anything is unpacked into it, so files may come in any order; putting
    ELF files together and text files by extension gives zstd similar neighbours (about 1% smaller).
    Only names and content decide the order, never the host's directory order.
    """
    def key(p: str) -> tuple[int, bytes, bytes, bytes]:
        mode = stats[p].st_mode
        if stat.S_ISDIR(mode):
            return (0, b"", b"", os.fsencode(p))
        if not stat.S_ISREG(mode):
            return (1, b"", b"", os.fsencode(p))
        elf = is_elf(tree / p)
        name = os.path.basename(p)
        ext = name.rsplit(".", 1)[1] if "." in name else ""
        return (2 if elf else 3, os.fsencode(ext), os.fsencode(name), os.fsencode(p))

    head = [p for p in paths if p == "."]
    return head + sorted((p for p in paths if p != "."), key=key)


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def plan_cpio(tree: Path) -> tuple[list[str], dict[str, os.stat_result]]:
    """Every path of `tree` in archive order, and its lstat."""
    paths = walk_sorted(tree)
    stats = {p: os.lstat(tree / p) for p in paths}
    return archive_order(tree, paths, stats), stats


def write_cpio(tree: Path, out: BinaryIO, epoch: int) -> int:
    """Write `tree` as a newc archive to `out`; returns the number of entries."""
    paths, stats = plan_cpio(tree)
    return write_entries(tree, paths, stats, out, epoch)


def write_entries(tree: Path, paths: list[str], stats: dict[str, os.stat_result], out: BinaryIO, epoch: int) -> int:
    """Write `paths` of `tree` (in this order) as one newc archive, inode numbers from 1; returns the entry count.

    Hard links are grouped among `paths` only: a caller splitting a tree into several archives keeps each
    group in one of them (the kernel forgets links at each trailer)."""
    links: dict[tuple[int, int], list[str]] = {}
    for p in paths:
        st = stats[p]
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            links.setdefault((st.st_dev, st.st_ino), []).append(p)
    inode_of: dict[tuple[int, int], int] = {}
    next_ino = 1
    for p in paths:
        st = stats[p]
        key = (st.st_dev, st.st_ino)
        group = links.get(key)
        if group and key in inode_of:
            ino, first = inode_of[key], False
        else:
            ino, first = next_ino, True
            next_ino += 1
            if group:
                inode_of[key] = ino
        nlink = len(group) if group else (2 if stat.S_ISDIR(st.st_mode) else 1)
        data = b""
        if stat.S_ISLNK(st.st_mode):
            data = os.fsencode(os.readlink(tree / p))
        elif stat.S_ISREG(st.st_mode) and first:
            if st.st_size > MAX_FIELD:  # checked before reading: newc sizes are 32-bit
                raise BuildError(f"cannot archive {p}: {st.st_size} bytes is more than newc cpio allows (4 GiB)")
            data = (tree / p).read_bytes()
        elif not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)
                  or stat.S_ISBLK(st.st_mode) or stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode)):
            raise BuildError(f"cannot archive {p}: unsupported file type")
        rmaj = os.major(st.st_rdev) if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        rmin = os.minor(st.st_rdev) if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
        name = os.fsencode(p) + b"\0"
        mtime = max(0, min(int(st.st_mtime), epoch))  # newc has no negative times: pre-1970 becomes 0
        hdr = _header(ino, st.st_mode, st.st_uid, st.st_gid, nlink, mtime, len(data), rmaj, rmin, len(name))
        out.write(hdr + name + _pad4(len(hdr) + len(name)))
        out.write(data + _pad4(len(data)))
    name = TRAILER.encode() + b"\0"
    hdr = _header(0, 0, 0, 0, 1, 0, 0, 0, 0, len(name))
    out.write(hdr + name + _pad4(len(hdr) + len(name)))
    return len(paths)


@dataclass
class Entry:
    name: str
    mode: int
    uid: int
    gid: int
    mtime: int
    ino: int
    nlink: int
    rdev: tuple[int, int]
    data: bytes


def read_cpio(data: bytes) -> Iterator[Entry]:
    """Parse a newc archive, or several one after the other as the kernel unpacks an initramfs (zero padding
    between them, each starting 4-byte aligned, a hard link table per archive). Hard links get the data of
    their first entry; a later archive's entry for a path overrides an earlier one, as in the kernel."""
    pos = 0
    while True:
        pos = yield from _read_one(data, pos)
        while pos < len(data) and data[pos] == 0:  # padding between archives (and after the last)
            pos += 1
        if pos >= len(data):
            return
        if pos % 4:
            raise BuildError(f"cpio archive at offset {pos} does not start on a 4-byte boundary")


def _read_one(data: bytes, pos: int) -> Generator[Entry, None, int]:
    """One archive from `pos` to its trailer; returns the offset after the trailer."""
    first_data: dict[int, bytes] = {}
    while True:
        if data[pos:pos + 6] != MAGIC or pos + HEADER > len(data):
            raise BuildError(f"not a newc cpio archive at offset {pos}" if data[pos:pos + 6] != MAGIC
                             else f"cpio archive truncated in the header at offset {pos}")
        try:
            f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        except ValueError:
            raise BuildError(f"cpio header at offset {pos} has a field that is not hexadecimal") from None
        if any(not 0 <= x <= MAX_FIELD for x in f):  # int() also takes '+', '-', '_' and spaces
            raise BuildError(f"cpio header at offset {pos} has an out-of-range field")
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = f
        name_end = pos + HEADER + namesize
        body_start = name_end + (-name_end % 4)
        if namesize < 1 or body_start + size > len(data) or data[name_end - 1:name_end] != b"\0":
            raise BuildError(f"cpio entry at offset {pos} is truncated or malformed")
        name = data[pos + HEADER:name_end - 1].decode(errors="surrogateescape")
        body = data[body_start:body_start + size]
        pos = body_start + size + (-size % 4)
        if name == TRAILER:
            return pos
        if stat.S_ISREG(mode) and nlink > 1:
            body = first_data.setdefault(ino, body)  # later links have size 0
        yield Entry(name, mode, uid, gid, mtime, ino, nlink, (rmaj, rmin), body)
