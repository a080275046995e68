"""Decompressed copies of images' initramfs, for direct boots.

The image ships initrd.cpio.zst (small: that is what is stored, copied and measured). Under emulation
the guest kernel needs ~2 s to decompress it at every boot (measured: boot to ready 10.0 s with the zstd
initramfs, 8.0-8.7 s with the same cpio uncompressed). So `run` hands the VMM the identical cpio,
decompressed once per image on the host and kept under <cache>/initrd/<sha256>.cpio, named by the
compressed file's digest from the manifest and checked against it when the copy is made. The guest
receives byte-for-byte the archive the image describes. `gc` removes copies no sandbox uses.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sealbox.errors import SandboxError

SUFFIX = ".cpio"


def cache_dir() -> Path:
    return Path(os.environ.get("SEALBOX_CACHE_DIR", "/var/cache/sealbox")) / "initrd"


def plain_path(sha256: str) -> Path:
    return cache_dir() / f"{sha256}{SUFFIX}"


def ensure_plain(compressed: Path, sha256: str) -> Path:
    """The decompressed copy of `compressed` (whose manifest digest is `sha256`), made if missing."""
    import zstandard

    out = plain_path(sha256)
    if out.is_file():
        os.utime(out)  # last use: gc leaves recently used copies alone
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(compressed, "rb") as src, open(tmp, "wb") as dst:

            class Hashing:  # feed the compressed bytes through the digest on their way to zstd
                def read(self, n: int = -1) -> bytes:
                    data = src.read(n)
                    digest.update(data)
                    return data

            zstandard.ZstdDecompressor().copy_stream(Hashing(), dst)  # type: ignore[arg-type]  # it only calls read(); the stub wants a full IO
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != sha256:
            raise SandboxError(f"{compressed} does not match the sha256 its manifest records",
                               hint="the image was modified or damaged after it was built: rebuild it")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except zstandard.ZstdError as e:
        raise SandboxError(f"{compressed} is not a valid zstd stream: {e}", hint="rebuild the image") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def prune(keep: set[str], idle_s: float = 3600.0) -> list[Path]:
    """Remove cached copies that no sandbox in `keep` names and nobody used for `idle_s` (another state
    dir's `run` may be about to use one). A running VMM keeps its open copy even after the unlink."""
    import time

    removed = []
    d = cache_dir()
    if d.is_dir():
        for p in sorted(d.glob(f"*{SUFFIX}")):
            if p.name[: -len(SUFFIX)] not in keep and time.time() - p.stat().st_mtime > idle_s:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
