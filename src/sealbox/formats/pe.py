"""A small, strict PE/COFF header parser (PE32 and PE32+).

Written for measurement rather than loading: it only reads the headers and the section table, checks
every offset against the file size, and raises MeasureError with one line naming the file and the
offending field. pefile is deliberately not used here so that the Authenticode hash (authenticode.py)
rests on code we control and can fuzz.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from sealbox.errors import MeasureError

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B
SECTION_HEADER_SIZE = 40
COFF_HEADER_SIZE = 20
CERT_TABLE_INDEX = 4  # IMAGE_DIRECTORY_ENTRY_SECURITY
CERT_TABLE_BASERELOC_INDEX = 5


@dataclass(frozen=True)
class Section:
    name: str  # decoded, NUL padding removed
    raw_name: bytes  # the 8 bytes as stored
    virtual_size: int
    virtual_address: int
    size_of_raw_data: int
    pointer_to_raw_data: int
    characteristics: int


@dataclass(frozen=True)
class PEImage:
    """Parsed header facts. Offsets are file offsets."""

    size: int
    pe_offset: int  # e_lfanew: offset of the "PE\0\0" signature
    machine: int
    timestamp: int
    pointer_to_symbol_table: int
    number_of_symbols: int
    characteristics: int
    opt_offset: int  # start of the optional header
    size_of_optional_header: int
    magic: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    checksum: int
    checksum_offset: int
    number_of_rva_and_sizes: int
    data_dir_offset: int
    cert_dir_offset: int | None  # None when the optional header has no certificate-table entry
    cert_table_offset: int
    cert_table_size: int
    section_table_offset: int
    sections: tuple[Section, ...]

    @property
    def is_pe32_plus(self) -> bool:
        return self.magic == PE32PLUS_MAGIC

    def find(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def content(self, data: bytes, section: Section) -> bytes:
        """The section as the loader maps it: VirtualSize bytes, zero-filled past the raw data."""
        raw = data[section.pointer_to_raw_data : section.pointer_to_raw_data + section.size_of_raw_data]
        if section.virtual_size <= len(raw):
            return bytes(raw[: section.virtual_size])
        return bytes(raw) + bytes(section.virtual_size - len(raw))


def _u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def parse_pe(data: bytes, what: str = "input") -> PEImage:
    """Parse the headers of a PE image held in `data`; `what` names it in error messages."""

    def bad(msg: str) -> MeasureError:
        return MeasureError(f"{what}: not a valid PE/COFF image: {msg}", hint="pass an EFI binary such as a UKI")

    size = len(data)
    if size < 64 or data[:2] != b"MZ":
        raise bad("missing 'MZ' DOS header")
    pe_off = _u32(data, 0x3C)
    if pe_off + 4 + COFF_HEADER_SIZE > size:
        raise bad(f"e_lfanew 0x{pe_off:x} points past the end of the file ({size} bytes)")
    if data[pe_off : pe_off + 4] != b"PE\0\0":
        raise bad(f"no 'PE' signature at offset 0x{pe_off:x}")
    coff = pe_off + 4
    machine, nsect, timestamp, symptr, nsyms, opt_size, chars = struct.unpack_from("<HHIIIHH", data, coff)
    opt = coff + COFF_HEADER_SIZE
    if opt + opt_size > size or opt_size < 2:
        raise bad(f"optional header ({opt_size} bytes) is truncated")
    magic = _u16(data, opt)
    if magic == PE32_MAGIC:
        dd_rel, min_opt = 96, 96
    elif magic == PE32PLUS_MAGIC:
        dd_rel, min_opt = 112, 112
    else:
        raise bad(f"unknown optional header magic 0x{magic:x}")
    if opt_size < min_opt:
        raise bad(f"optional header of {opt_size} bytes is too short for magic 0x{magic:x}")
    sect_align, file_align = struct.unpack_from("<II", data, opt + 32)
    size_of_image, size_of_headers, checksum = struct.unpack_from("<III", data, opt + 56)
    n_rva = _u32(data, opt + dd_rel - 4)
    dd_off = opt + dd_rel
    # Only entries that fit inside the declared optional header count.
    n_rva = min(n_rva, (opt_size - dd_rel) // 8)
    cert_dir = dd_off + 8 * CERT_TABLE_INDEX if n_rva > CERT_TABLE_INDEX else None
    cert_off, cert_size = struct.unpack_from("<II", data, cert_dir) if cert_dir is not None else (0, 0)
    st_off = opt + opt_size
    if st_off + nsect * SECTION_HEADER_SIZE > size:
        raise bad(f"section table ({nsect} entries) runs past the end of the file")
    if size_of_headers > size:
        raise bad(f"SizeOfHeaders {size_of_headers} exceeds the file size {size}")
    if size_of_headers < st_off + nsect * SECTION_HEADER_SIZE:
        raise bad(f"SizeOfHeaders {size_of_headers} does not cover the section table")
    if cert_size and (cert_off < size_of_headers or cert_off + cert_size > size):
        raise bad(f"certificate table 0x{cert_off:x}+{cert_size} lies outside the file")
    sections = []
    for i in range(nsect):
        h = st_off + i * SECTION_HEADER_SIZE
        raw_name = bytes(data[h : h + 8])
        vsize, vaddr, rawsize, rawptr = struct.unpack_from("<IIII", data, h + 8)
        schars = _u32(data, h + 36)
        name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
        if rawsize and rawptr + rawsize > size:
            raise bad(f"section {name!r} raw data 0x{rawptr:x}+{rawsize} runs past the end of the file")
        sections.append(Section(name, raw_name, vsize, vaddr, rawsize, rawptr, schars))
    return PEImage(
        size=size,
        pe_offset=pe_off,
        machine=machine,
        timestamp=timestamp,
        pointer_to_symbol_table=symptr,
        number_of_symbols=nsyms,
        characteristics=chars,
        opt_offset=opt,
        size_of_optional_header=opt_size,
        magic=magic,
        section_alignment=sect_align,
        file_alignment=file_align,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        checksum=checksum,
        checksum_offset=opt + 64,
        number_of_rva_and_sizes=n_rva,
        data_dir_offset=dd_off,
        cert_dir_offset=cert_dir,
        cert_table_offset=cert_off,
        cert_table_size=cert_size,
        section_table_offset=st_off,
        sections=tuple(sections),
    )
