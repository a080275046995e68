"""Deterministic read-only ext4 root disk via mkfs.ext4 -d (e2fsprogs, the real tool).

Fixed: UUID and directory hash seed (derived from the image's identity by the caller), creation time
(E2FSPROGS_FAKE_TIME), block size, inode size, no journal (the disk is attached read-only), no reserved
blocks, root owned by 0:0; the size follows from the content. mke2fs orders entries itself, so the
host's directory order does not reach the image.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

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
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "E2FSPROGS_FAKE_TIME": str(epoch),
           "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C", "TZ": "UTC", "MKE2FS_CONFIG": "/dev/null"}
    run([
        "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes), "-m", "0",
        "-L", label, "-U", str(fs_uuid),
        "-O", "^has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode",
        "-E", f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
        "-d", str(tree), str(out),
    ], env=env, what="mkfs.ext4")
