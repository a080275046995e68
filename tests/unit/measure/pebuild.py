"""Test helper: assemble small PE32/PE32+ images byte by byte, independently of sealbox's parser.

It records where it put every field, so tests can compute the expected Authenticode from byte
ranges without going through the code under test.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field


@dataclass
class Layout:
    data: bytes
    checksum_off: int
    certdir_off: int | None
    size_of_headers: int
    section_ranges: list[tuple[int, int]] = field(default_factory=list)  # (ptr, size) in header order
    trailing: tuple[int, int] = (0, 0)  # (start, end) of hashed trailing data

    def expected_authenticode(self, alg: str = "sha256") -> str:
        h = hashlib.new(alg)
        d = self.data
        if self.certdir_off is None:
            h.update(d[: self.checksum_off] + d[self.checksum_off + 4 : self.size_of_headers])
        else:
            h.update(d[: self.checksum_off] + d[self.checksum_off + 4 : self.certdir_off]
                     + d[self.certdir_off + 8 : self.size_of_headers])
        for ptr, size in sorted(r for r in self.section_ranges if r[1]):
            h.update(d[ptr : ptr + size])
        h.update(d[self.trailing[0] : self.trailing[1]])
        return h.hexdigest()


def _align(v: int, a: int) -> int:
    return (v + a - 1) // a * a


def build_pe(
    sections: list[tuple[str, bytes]],
    *,
    pe32plus: bool = True,
    file_align: int = 0x200,
    sect_align: int = 0x1000,
    n_rva: int = 16,
    lfanew: int = 0x80,
    trailing: bytes = b"",
    cert: bytes | None = None,
    reverse_file_order: bool = False,
    extra_header_slots: int = 0,
    raw_pad: bool = True,
    machine: int = 0x8664,
) -> Layout:
    opt_fixed = 112 if pe32plus else 96
    opt_size = opt_fixed + 8 * n_rva
    st_off = lfanew + 4 + 20 + opt_size
    soh = _align(st_off + 40 * (len(sections) + extra_header_slots), file_align)
    # raw data placement (optionally in reverse file order to test sorting)
    order = list(range(len(sections)))[::-1] if reverse_file_order else list(range(len(sections)))
    ptrs: dict[int, tuple[int, int]] = {}
    pos = soh
    for i in order:
        data = sections[i][1]
        rawsize = _align(len(data), file_align) if raw_pad else len(data)
        ptrs[i] = (pos if rawsize else 0, rawsize)
        pos += rawsize
    body = bytearray(pos)
    for i, (_name, data) in enumerate(sections):
        if ptrs[i][1]:
            body[ptrs[i][0] : ptrs[i][0] + len(data)] = data
    # headers
    body[0:2] = b"MZ"
    struct.pack_into("<I", body, 0x3C, lfanew)
    body[lfanew : lfanew + 4] = b"PE\0\0"
    struct.pack_into("<HHIIIHH", body, lfanew + 4, machine, len(sections), 0, 0, 0, opt_size, 0x22)
    opt = lfanew + 24
    va = sect_align
    vas = []
    for _name, data in sections:
        vas.append(va)
        va = _align(va + max(len(data), 1), sect_align)
    if pe32plus:
        struct.pack_into("<HBBIIIII", body, opt, 0x20B, 2, 0, 0, 0, 0, 0, 0)
        struct.pack_into("<Q", body, opt + 24, 0)
    else:
        struct.pack_into("<HBBIIIIII", body, opt, 0x10B, 2, 0, 0, 0, 0, 0, 0, 0)
    struct.pack_into("<II", body, opt + 32, sect_align, file_align)
    struct.pack_into("<III", body, opt + 56, va, soh, 0x1234ABCD)  # SizeOfImage, SizeOfHeaders, CheckSum
    struct.pack_into("<HH", body, opt + 68, 10, 0)  # subsystem EFI application
    struct.pack_into("<I", body, opt + opt_fixed - 4, n_rva)
    for i, (name, data) in enumerate(sections):
        h = st_off + 40 * i
        struct.pack_into("<8sIIII", body, h, name.encode(), len(data), vas[i], ptrs[i][1], ptrs[i][0])
        struct.pack_into("<I", body, h + 36, 0x40000040)
    certdir = opt + opt_fixed + 8 * 4 if n_rva > 4 else None
    out = bytes(body) + trailing
    trail = (len(body), len(out))
    if cert is not None:
        assert certdir is not None
        out += bytes(_align(len(out), 8) - len(out))
        trail = (len(body), len(out))
        wc = struct.pack("<IHH", 8 + len(cert), 0x0200, 0x0002) + cert
        wc += bytes(_align(len(wc), 8) - len(wc))
        cert_off = len(out)
        out += wc
        out = bytearray(out)
        struct.pack_into("<II", out, certdir, cert_off, len(wc))
        out = bytes(out)
    return Layout(out, opt + 64, certdir, soh, [ptrs[i] for i in range(len(sections))], trail)
