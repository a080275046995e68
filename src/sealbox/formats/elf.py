"""The few ELF64 little-endian structures sealbox reads: program headers (the link check's dynamic section) and named
sections (a kernel module's .modinfo). Input is any file of an image, so nothing is trusted: a table entry past the end
of the data raises struct.error / ValueError / IndexError, which callers turn into their own verdict.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

PT_LOAD, PT_DYNAMIC = 1, 2
_PHDR, _SHDR = struct.Struct("<IIQQQQ"), struct.Struct("<IIQQQQ")  # the leading fields of Elf64_Phdr / Elf64_Shdr


class Segment(NamedTuple):
    type: int
    offset: int
    vaddr: int
    filesz: int


def is_elf64_le(data: bytes) -> bool:
    return len(data) >= 64 and data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1


def segments(data: bytes) -> list[Segment]:
    """The program headers (empty when their entries are too small to be Elf64_Phdr)."""
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    if phentsize < 56:
        return []
    out = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = _PHDR.unpack_from(data, phoff + i * phentsize)
        out.append(Segment(p_type, p_offset, p_vaddr, p_filesz))
    return out


def section(data: bytes, name: bytes) -> bytes | None:
    """The bytes of the first section called `name`, None if there is none."""
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if shentsize < 64:
        raise ValueError(f"section header entries of {shentsize} bytes")
    headers = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    for name_off, _type, _flags, _addr, off, size in headers:
        if names[name_off:names.index(b"\0", name_off)] == name:
            if off + size > len(data):
                raise ValueError(f"{name.decode(errors='replace')} runs past the end of the file")
            return data[off:off + size]
    return None
