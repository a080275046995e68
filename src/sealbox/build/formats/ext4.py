"""Deterministic read-only ext4 root disk via mkfs.ext4 -d (e2fsprogs, the real tool).

Fixed: UUID and directory hash seed (derived from the image's identity by the caller), creation time
(E2FSPROGS_FAKE_TIME), block size, inode size, no journal (the disk is attached read-only), no reserved
blocks, root owned by 0:0; the size follows from the content. mke2fs orders entries itself, so the
host's directory order does not reach the image. mke2fs 1.47.0 copies each source file's atime and
ctime (which no one can set) into the inode, so every inode's atime/ctime/crtime is rewritten to the
epoch afterwards with one batched debugfs run.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

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
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "E2FSPROGS_FAKE_TIME": str(epoch),
           "SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C", "TZ": "UTC", "MKE2FS_CONFIG": "/dev/null"}
    run([
        "mkfs.ext4", "-q", "-F", "-t", "ext4", "-b", str(BLOCK), "-I", str(INODE_SIZE), "-N", str(inodes), "-m", "0",
        "-L", label, "-U", str(fs_uuid),
        "-O", "^has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize,^resize_inode",
        "-E", f"hash_seed={fs_uuid},root_owner=0:0,lazy_itable_init=0,nodiscard",
        "-d", str(tree), str(out),
    ], env=env, what="mkfs.ext4")
    fix_inode_times(tree, out, epoch)


def _fix_times_commands(tree: Path, epoch: int) -> str:
    paths = ["/", "/lost+found"]
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            rel = "/" + os.path.relpath(os.path.join(dirpath, name), tree)
            if '"' in rel or "\n" in rel:
                raise BuildError(f"cannot put {rel!r} into rootfs.ext4: file names with quotes or newlines are not supported")
            paths.append(rel)
    lines = []
    for p in sorted(paths):
        for field in ("atime", "ctime", "crtime"):
            lines.append(f'sif "{p}" {field} @{epoch}')
        for field in ("atime_extra", "ctime_extra", "crtime_extra"):
            lines.append(f'sif "{p}" {field} 0')
    return "\n".join(lines) + "\n"


def fix_inode_times(tree: Path, image: Path, epoch: int) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="sealbox-debugfs-", suffix=".cmds") as cmds:
        cmds.write(_fix_times_commands(tree, epoch))
        cmds.flush()
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "E2FSPROGS_FAKE_TIME": str(epoch)}
        proc = run(["debugfs", "-w", "-f", cmds.name, str(image)], env=env, what="debugfs (fixing inode times)")
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines()[1:] if line.strip()]
    if errors:
        raise BuildError(f"debugfs could not fix inode times in {image.name}: {errors[0]}")
