"""zstd streams with fixed parameters: the output depends only on the input and the level."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

# zstd's multi-threaded mode yields identical bytes for any worker count >= 1, so use the cores we have.
WORKERS = 2


@contextlib.contextmanager
def zstd_writer(path: Path, level: int) -> Iterator[BinaryIO]:
    import os

    import zstandard

    cctx = zstandard.ZstdCompressor(level=level, threads=max(WORKERS, os.cpu_count() or 1), write_checksum=True)
    with open(path, "wb") as raw, cctx.stream_writer(raw, closefd=False) as w:
        yield w


def zstd_decompress(path: Path) -> bytes:
    """Every frame of `path`, one after the other (a segmented initrd is one frame per archive)."""
    import zstandard

    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
