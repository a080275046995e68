"""Deterministic read-only ext4 root disk via mkfs.ext4 -d (e2fsprogs, the real tool).

Fixed: UUID and directory hash seed (derived from the image's identity by the caller), creation time
(E2FSPROGS_FAKE_TIME), block size, inode size, no journal (the disk is attached read-only), no reserved
blocks, root owned by 0:0; the size follows from the content. mke2fs orders entries itself, so the
host's directory order does not reach the image.

mke2fs -d copies each inode's atime and ctime from the host tree, and ctime cannot be set from user
space: it is when the tree was made. So afterwards every inode gets atime = ctime = epoch and its mtime
clamped to the epoch (older ones kept, as in the cpio writer), written with debugfs so that the inode
checksums stay right.
"""

from __future__ import annotations

import os
import struct
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from sealbox.errors import BuildError
from sealbox.util.run import run

BLOCK = 4096
INODE_SIZE = 256


def tree_usage(tree: Path) -> tuple[int, int]:
    """(blocks needed for file data, inode count) of a tree, counting hard links once."""
    blocks, inodes, seen = 0, 0, set()
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            inodes += 1
            blocks += -(-st.st_size // BLOCK) + 1  # data + slack for directory/extent blocks
    return blocks, inodes + 1


def make_ext4(tree: Path, out: Path, fs_uuid: uuid.UUID, epoch: int, extra_mib: int, label: str = "sealbox-root") -> None:
    blocks, inodes = tree_usage(tree)
    inodes = inodes + inodes // 4 + 64
    meta = inodes * INODE_SIZE // BLOCK + 1024  # inode tables, bitmaps, group descriptors
    total = (blocks + meta) * BLOCK + extra_mib * (1 << 20)
    total = -(-total // (1 << 20)) * (1 << 20)  # whole MiB
    with open(out, "wb") as f:
        f.truncate(total)
    env = _env(epoch)
    run([
        "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes), "-m", "0",
        "-L", label, "-U", str(fs_uuid),
        "-O", "^has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode",
        "-E", f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
        "-d", str(tree), str(out),
    ], env=env, what="mkfs.ext4")
    fix_inode_times(out, epoch)


def _env(epoch: int) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "E2FSPROGS_FAKE_TIME": str(epoch),
            "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C", "TZ": "UTC", "MKE2FS_CONFIG": "/dev/null"}


def used_inodes(image: Path) -> Iterator[tuple[int, bytes]]:
    """(inode number, raw inode) of every allocated inode of an ext4 image, from its bitmaps and inode tables."""
    with open(image, "rb") as f:
        sb = _pread(f, 1024, 1024)
        if sb[0x38:0x3A] != b"\x53\xef":
            raise BuildError(f"{image.name}: not an ext4 image (no superblock magic)")
        inodes, = struct.unpack_from("<I", sb, 0)
        first_data_block, log_block = struct.unpack_from("<II", sb, 20)
        per_group, = struct.unpack_from("<I", sb, 40)
        inode_size, = struct.unpack_from("<H", sb, 88)
        incompat, = struct.unpack_from("<I", sb, 96)
        is64 = bool(incompat & 0x80)
        desc_size = struct.unpack_from("<H", sb, 254)[0] if is64 else 32
        block = 1024 << log_block
        groups = -(-inodes // per_group)
        gdt = _pread(f, (first_data_block + 1) * block, groups * desc_size)
        for g in range(groups):
            d = gdt[g * desc_size:(g + 1) * desc_size]
            bitmap_blk, table_blk = struct.unpack_from("<II", d, 4)
            flags, = struct.unpack_from("<H", d, 0x12)
            if is64 and desc_size >= 64:
                bitmap_blk |= struct.unpack_from("<I", d, 0x24)[0] << 32
                table_blk |= struct.unpack_from("<I", d, 0x28)[0] << 32
            if flags & 0x1:  # INODE_UNINIT: nothing allocated in this group
                continue
            bitmap = _pread(f, bitmap_blk * block, per_group // 8)
            used = [i for i in range(per_group) if bitmap[i >> 3] >> (i & 7) & 1]
            if used:
                table = _pread(f, table_blk * block, (used[-1] + 1) * inode_size)
                for i in used:
                    yield g * per_group + i + 1, table[i * inode_size:(i + 1) * inode_size]


def _time(raw: bytes, lo: int, extra: int) -> tuple[int, int]:
    """(seconds, nanoseconds) of one inode timestamp; the extra field holds 2 epoch bits and the nanoseconds."""
    secs, = struct.unpack_from("<i", raw, lo)
    if len(raw) <= 128 or struct.unpack_from("<H", raw, 0x80)[0] < extra - 0x80 + 4:
        return secs, 0
    ext, = struct.unpack_from("<I", raw, extra)
    return secs + ((ext & 3) << 32), ext >> 2


def _pread(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise BuildError(f"ext4 image truncated at offset {offset}")
    return bytes(data)


def fix_inode_times(image: Path, epoch: int) -> None:
    """atime = ctime = epoch and mtime = min(mtime, epoch) on every allocated inode except the reserved ones."""
    with open(image, "rb") as f:
        first_ino, = struct.unpack_from("<I", _pread(f, 1024 + 84, 4))
    cmds = []
    for ino, raw in used_inodes(image):
        if ino != 2 and ino < first_ino:  # reserved inodes (bad blocks, quota...) are not files; 2 is /
            continue
        for field, lo, extra in (("atime", 0x08, 0x8C), ("ctime", 0x0C, 0x84), ("mtime", 0x10, 0x88)):
            secs, nsec = _time(raw, lo, extra)
            want = min(secs, epoch) if field == "mtime" else epoch
            if nsec or secs != want:  # extra first: setting the seconds then fills in the epoch bits
                cmds.append(f"sif <{ino}> {field}_extra 0")
            if secs != want:
                cmds.append(f"sif <{ino}> {field} @{want}")
    if not cmds:
        return
    with tempfile.NamedTemporaryFile("w", prefix="sealbox-debugfs-", suffix=".cmds") as script:
        script.write("\n".join(cmds) + "\n")
        script.flush()
        proc = run(["debugfs", "-w", "-f", script.name, str(image)], env=_env(epoch), what="debugfs (inode times)")
    # debugfs reports a failed command on stderr but still exits 0
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines() if line and not line.startswith("debugfs ")]
    if errors:
        raise BuildError(f"debugfs could not set inode times in {image.name}: {errors[0]}")
