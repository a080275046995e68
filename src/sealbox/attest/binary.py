"""Bounds-checked little-endian reading of untrusted binary structures.

Every read names the field and offset, so a truncated or corrupt file yields one precise line
instead of an IndexError or struct.error deep in the parser.
"""

from __future__ import annotations

import struct
from pathlib import Path

from sealbox.attest import AttestInputError


class Reader:
    """A cursor over `data`; `what` prefixes every error (e.g. "quote foo.dat")."""

    def __init__(self, data: bytes, what: str, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.what = what
        self.pos = start
        self.end = len(data) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, field: str) -> None:
        if n < 0 or n > self.remaining:
            raise AttestInputError(
                f"{self.what}: truncated at offset {self.pos}: {field} needs {n} bytes, only {self.remaining} left"
            )

    def bytes(self, n: int, field: str) -> bytes:
        self.need(n, field)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def _int(self, fmt: str, size: int, field: str) -> int:
        self.need(size, field)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def u8(self, field: str) -> int:
        return self._int("<B", 1, field)

    def u16(self, field: str) -> int:
        return self._int("<H", 2, field)

    def u32(self, field: str) -> int:
        return self._int("<I", 4, field)

    def u64(self, field: str) -> int:
        return self._int("<Q", 8, field)

    def sub(self, n: int, field: str) -> Reader:
        """A reader over the next `n` bytes (a length-prefixed sub-structure); advances past them."""
        self.need(n, field)
        child = Reader(self.data, self.what, self.pos, self.pos + n)
        self.pos += n
        return child


def read_input(path: str | Path, what: str, max_bytes: int) -> bytes:
    """Read a user-given file with a size cap; every failure is one AttestInputError line."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except IsADirectoryError:
        raise AttestInputError(f"{what} {p} is a directory, expected a file") from None
    except OSError as e:
        raise AttestInputError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise AttestInputError(f"{what} {p} is larger than {max_bytes} bytes; is it the right file?")
    if not data:
        raise AttestInputError(f"{what} {p} is empty")
    return data
