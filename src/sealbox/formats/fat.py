"""A deterministic FAT32 EFI system partition image: mkfs.fat --invariant, files copied in with mtools.

Fixed: the volume id (from the image digest, by the caller), the label, every timestamp (mkfs.fat
--invariant for the boot sector and label; SOURCE_DATE_EPOCH for the directories mtools creates; each
file's mtime set to the epoch before `mcopy -m` keeps it), the hidden-sector count (the partition's
start), and the order in which directories and files are added (sorted). No mount, no root needed.
mtools reads no user or host configuration (MTOOLSRC points at an empty file).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from sealbox.errors import BuildError
from sealbox.util.run import run

SECTOR = 512
MIN_FAT32 = 33 << 20  # FAT32 needs >= 65525 clusters; with 512-byte clusters that is ~33 MiB


def _env(epoch: int, rc: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "SOURCE_DATE_EPOCH": str(epoch),
            "LC_ALL": "C", "TZ": "UTC", "MTOOLSRC": str(rc), "MTOOLS_SKIP_CHECK": "1", "HOME": "/nonexistent"}


def esp_size(payload: int, slack: int = 16 << 20) -> int:
    """An ESP size for `payload` bytes of files: room for FAT overhead, a signature added later and
    slack, rounded up to 8 MiB, at least 64 MiB (comfortably FAT32)."""
    need = payload + payload // 16 + slack
    return max(64 << 20, -(-need // (8 << 20)) * (8 << 20))


def make_esp(out: Path, size: int, files: dict[str, Path], volume_id: int, epoch: int, *, hidden_sectors: int,
             label: str = "ESP", scratch: Path) -> None:
    """Write a FAT32 image of `size` bytes at `out` holding `files` ({"/EFI/BOOT/BOOTX64.EFI": src})."""
    if size < MIN_FAT32 or size % SECTOR:
        raise BuildError(f"ESP size {size} is too small for FAT32 or not a multiple of {SECTOR}")
    scratch.mkdir(parents=True, exist_ok=True)
    rc = scratch / "mtoolsrc"
    rc.write_text("")
    env = _env(epoch, rc)
    with open(out, "wb") as f:
        f.truncate(size)
    run(["mkfs.fat", "--invariant", "-F", "32", "-S", str(SECTOR), "-i", f"{volume_id & 0xFFFFFFFF:08x}",
         "-n", label, "-h", str(hidden_sectors), str(out)], env=env, what="mkfs.fat")
    dirs: set[str] = set()
    for dest in files:
        p = PurePosixPath(dest)
        if not p.is_absolute() or ".." in p.parts or len(p.parts) < 2:
            raise BuildError(f"ESP path {dest!r} must be an absolute path of a file below /")
        dirs.update(str(a) for a in p.parents if str(a) != "/")
    for d in sorted(dirs, key=lambda x: (x.count("/"), x)):
        run(["mmd", "-i", str(out), f"::{d}"], env=env, what="mmd")
    for dest in sorted(files):
        staged = scratch / "file"
        shutil.copyfile(files[dest], staged)
        os.utime(staged, (epoch, epoch))
        run(["mcopy", "-m", "-i", str(out), str(staged), f"::{dest}"], env=env, what="mcopy")
        staged.unlink()
