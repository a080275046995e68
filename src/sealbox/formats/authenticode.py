"""Authenticode (PE/COFF image hash) as defined in the Microsoft PE/COFF specification.

This is the digest UEFI firmware extends into PCR 4 / RTMR 1 when it loads an EFI application, and
what `pesign -h` prints. The rules, in order:
  1. hash the headers up to SizeOfHeaders, leaving out the 4-byte CheckSum and the 8-byte
     certificate-table data-directory entry (when the optional header has one);
  2. hash every section with SizeOfRawData > 0, in ascending PointerToRawData order, SizeOfRawData
     bytes each;
  3. hash whatever follows (file size - certificate table size - bytes hashed so far).
Trailing bytes are hashed as they are: edk2 (DxeTpm2MeasureBootLib) and pesign 0.112 do not pad an
unaligned file to 8 bytes (some third-party tools do, and then disagree with the firmware).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sealbox.errors import MeasureError
from sealbox.formats.pe import PEImage, parse_pe

ALGORITHMS = ("sha256", "sha384")


@dataclass(frozen=True)
class Span:
    start: int
    end: int


def hashed_spans(pe: PEImage) -> list[Span]:
    """The byte ranges of the file that go into the hash, in hashing order."""
    spans: list[Span] = []
    skips = [(pe.checksum_offset, 4)]
    if pe.cert_dir_offset is not None:
        skips.append((pe.cert_dir_offset, 8))
    pos = 0
    for off, length in skips:
        spans.append(Span(pos, off))
        pos = off + length
    spans.append(Span(pos, pe.size_of_headers))
    hashed = pe.size_of_headers
    for s in sorted((s for s in pe.sections if s.size_of_raw_data), key=lambda s: s.pointer_to_raw_data):
        spans.append(Span(s.pointer_to_raw_data, s.pointer_to_raw_data + s.size_of_raw_data))
        hashed += s.size_of_raw_data
    cert = pe.cert_table_size if pe.cert_dir_offset is not None else 0
    if pe.size > hashed:
        if pe.size < hashed + cert:
            raise MeasureError(
                f"certificate table ({cert} bytes) overlaps hashed image data",
                hint="the PE file is malformed or truncated",
            )
        if pe.size > hashed + cert:
            spans.append(Span(hashed, pe.size - cert))
    return spans


def authenticode(data: bytes, algorithm: str = "sha256", *, what: str = "input") -> str:
    """Hex Authenticode digest of the PE image in `data`."""
    return authenticode_all(data, (algorithm,), what=what)[algorithm]


def authenticode_all(data: bytes, algorithms: tuple[str, ...] = ALGORITHMS, *, what: str = "input") -> dict[str, str]:
    """Authenticode digests for several algorithms in one pass over the file."""
    pe = parse_pe(data, what)
    view = memoryview(data)
    hashers = {a: hashlib.new(a) for a in algorithms}
    spans = hashed_spans(pe)
    for span in spans:
        chunk = view[span.start : span.end]
        for h in hashers.values():
            h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}
