"""A one-file .tar.gz in GNU tar format, byte-for-byte reproducible (GCP's image import: `disk.raw`).

GCP imports a gzip-compressed tar whose only member is `disk.raw`, in the GNU format that
`tar --format=oldgnu` writes (magic "ustar  "). Fixed here: member name, mode 0644, owner 0:0 with
empty owner names, mtime = the image epoch, the gzip header (no file name, mtime 0, OS "unknown"),
the compression level, and the end-of-archive padding to a whole 10 KiB record.
"""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20


def write_targz(out: Path, member: str, src: Path, epoch: int, level: int = 9) -> None:
    info = tarfile.TarInfo(member)
    info.size = src.stat().st_size
    info.mtime = epoch
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as gz:
        gz.write(header)
        written = len(header)
        with open(src, "rb") as f:
            while block := f.read(CHUNK):
                gz.write(block)
                written += len(block)
        pad = -written % BLOCK
        gz.write(bytes(pad + 2 * BLOCK))
        written += pad + 2 * BLOCK
        gz.write(bytes(-written % RECORD))
