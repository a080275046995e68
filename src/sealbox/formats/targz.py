"""A one-file .tar.gz in GNU tar format, byte-for-byte reproducible (GCP's image import: `disk.raw`).

GCP imports a gzip-compressed tar whose only member is `disk.raw`, in the GNU format that
`tar --format=oldgnu` writes (magic "ustar  "). Fixed here: member name, mode 0644, owner 0:0 with
empty owner names, mtime = the image epoch, the gzip header (no file name, mtime 0, OS "unknown"),
the compression level, and the end-of-archive padding to a whole 10 KiB record.
"""

from __future__ import annotations

import contextlib
import gzip
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

BLOCK = 512
RECORD = 20 * BLOCK


def write_targz(out: Path, member: str, size: int, chunks: Iterable[bytes], epoch: int, level: int = 6) -> None:
    """Write `out` with one member of `size` bytes whose content is the concatenation of `chunks`."""
    info = tarfile.TarInfo(member)
    info.size = size
    info.mtime = epoch
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=level) as gz:
        gz.write(header)
        n = 0
        for chunk in chunks:
            gz.write(chunk)
            n += len(chunk)
        if n != size:
            raise ValueError(f"{member}: {n} bytes of content, {size} announced")
        written = len(header) + n
        pad = -written % BLOCK
        gz.write(bytes(pad + 2 * BLOCK))
        written += pad + 2 * BLOCK
        gz.write(bytes(-written % RECORD))


def file_chunks(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield block


class _Member:
    """Seek/read within the first member of a tar stream (offsets relative to the member's data)."""

    def __init__(self, stream: gzip.GzipFile) -> None:
        self._s = stream

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("only absolute seeks")
        return self._s.seek(BLOCK + offset) - BLOCK

    def read(self, n: int = -1) -> bytes:
        return self._s.read(n)


@contextlib.contextmanager
def first_member(path: Path) -> Iterator[tuple[str, int, _Member]]:
    """(name, size, reader) of the first member of a .tar.gz; reading near its start decompresses
    only that far (a disk's GPT header is in its first KiBs)."""
    with gzip.open(path, "rb") as gz:
        try:
            info = tarfile.TarInfo.frombuf(gz.read(BLOCK), "utf-8", "strict")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a tar.gz archive ({e})") from None
        yield info.name, info.size, _Member(gz)
