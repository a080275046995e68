"""Unified Kernel Image writer: the systemd EFI stub plus .osrel/.cmdline/.uname/.initrd/.linux sections.

Pure Python so the output is a function of the inputs only (objcopy's output depends on its version).
The layout follows ukify: the stub's own sections (.sbat, .sdmagic, ...) stay byte-for-byte where
they are; new sections are appended in the order .osrel, .cmdline, .uname, .initrd, .linux (the
kernel last, leaving room above it for decompression), each at the next SectionAlignment boundary
in memory and the next FileAlignment boundary in the file; SizeOfImage is recomputed, CheckSum and
TimeDateStamp are zeroed.

systemd-stub 252 finds sections by name and uses VirtualSize as their length, so VirtualSize is the
exact payload size and SizeOfRawData its FileAlignment-padded size. The stub's COFF symbol table
(Debian's stub is not stripped) is dropped: it is not part of any section, so keeping it in the
middle of the file would leave bytes that no Authenticode hash covers.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from sealbox.errors import BuildError, MeasureError
from sealbox.formats.pe import SECTION_HEADER_SIZE, PEImage, parse_pe
from sealbox.util import atomic

# IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: what objcopy's "data,readonly" and ukify set.
DATA_FLAGS = 0x40000040
# The kernel section is marked as code (IMAGE_SCN_CNT_CODE | IMAGE_SCN_MEM_READ) like ukify does,
# because kernels using the EFI handover protocol are executed in place.
CODE_FLAGS = 0x60000020
UKI_SECTIONS = (".osrel", ".cmdline", ".uname", ".initrd", ".linux")
MACHINE_X86_64 = 0x8664


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align if align > 1 else value


def _check_cmdline(cmdline: str) -> bytes:
    # systemd-stub 252 turns control characters into spaces and strips trailing blanks before it
    # hands the line to the kernel; refuse them here so the embedded line is the line the kernel sees.
    if not cmdline or any(not (0x20 <= ord(c) < 0x7F) for c in cmdline) or cmdline != cmdline.strip():
        raise BuildError(
            f"UKI kernel command line {cmdline!r} is not usable",
            hint="use a non-empty line of printable ASCII without leading/trailing blanks",
        )
    return cmdline.encode("ascii")


def _stub_image(stub: Path, data: bytes) -> PEImage:
    try:
        pe = parse_pe(data, str(stub))
    except MeasureError as e:
        raise BuildError(f"UKI stub: {e.message}", hint="point it at linuxx64.efi.stub from systemd-boot-efi") from None
    if not pe.is_pe32_plus or pe.machine != MACHINE_X86_64:
        raise BuildError(f"UKI stub {stub} is not an x86_64 PE32+ image", hint="use the x86_64 systemd EFI stub")
    if pe.cert_table_size:
        raise BuildError(f"UKI stub {stub} is signed", hint="use the unsigned stub; sign the finished UKI instead")
    present = [s.name for s in pe.sections if s.name in UKI_SECTIONS]
    if present:
        raise BuildError(f"UKI stub {stub} already has section(s) {', '.join(present)}", hint="use the bare stub")
    if not pe.sections or pe.section_alignment < 512 or pe.file_alignment < 512:
        raise BuildError(f"UKI stub {stub} has an unexpected layout (no sections or tiny alignment)")
    return pe


def _section_header(name: str, vsize: int, vaddr: int, rawsize: int, rawptr: int, flags: int) -> bytes:
    return struct.pack("<8sIIIIIIHHI", name.encode(), vsize, vaddr, rawsize, rawptr, 0, 0, 0, 0, flags)


def layout_uki(stub_data: bytes, payloads: list[tuple[str, bytes]], stub_name: str = "stub") -> tuple[bytes, list[dict[str, Any]]]:
    """Return the UKI bytes and one fact dict per section (stub sections first)."""
    pe = _stub_image(Path(stub_name), stub_data)
    n_old = len(pe.sections)
    table_end = pe.section_table_offset + (n_old + len(payloads)) * SECTION_HEADER_SIZE
    if table_end > pe.size_of_headers:
        raise BuildError(
            f"UKI stub {stub_name}: no room for {len(payloads)} more section headers in {pe.size_of_headers} header bytes",
            hint="use systemd-boot-efi's linuxx64.efi.stub",
        )
    raw_end = max([pe.size_of_headers] + [s.pointer_to_raw_data + s.size_of_raw_data for s in pe.sections])
    out = bytearray(stub_data[:raw_end])
    # Drop the deprecated COFF symbol table (see module docstring) and zero the timestamp.
    coff = pe.pe_offset + 4
    struct.pack_into("<III", out, coff + 4, 0, 0, 0)  # TimeDateStamp, PointerToSymbolTable, NumberOfSymbols
    last = max(pe.sections, key=lambda s: s.virtual_address)
    next_va = _round_up(last.virtual_address + max(last.virtual_size, last.size_of_raw_data), pe.section_alignment)
    added_init = 0
    facts = [_fact(s.name, s.virtual_address, s.virtual_size, s.pointer_to_raw_data, s.size_of_raw_data,
                   pe.content(stub_data, s), "stub") for s in pe.sections]
    for i, (name, payload) in enumerate(payloads):
        rawptr = _round_up(len(out), pe.file_alignment)
        rawsize = _round_up(len(payload), pe.file_alignment)
        flags = CODE_FLAGS if name == ".linux" else DATA_FLAGS
        header_at = pe.section_table_offset + (n_old + i) * SECTION_HEADER_SIZE
        out[header_at : header_at + SECTION_HEADER_SIZE] = _section_header(
            name, len(payload), next_va, rawsize, rawptr, flags
        )
        out += bytes(rawptr - len(out)) + payload + bytes(rawsize - len(payload))
        facts.append(_fact(name, next_va, len(payload), rawptr, rawsize, payload, "added"))
        added_init += rawsize
        next_va = _round_up(next_va + len(payload), pe.section_alignment)
    struct.pack_into("<H", out, coff + 2, n_old + len(payloads))  # NumberOfSections
    size_of_init = struct.unpack_from("<I", out, pe.opt_offset + 8)[0]
    struct.pack_into("<I", out, pe.opt_offset + 8, (size_of_init + added_init) & 0xFFFFFFFF)
    struct.pack_into("<I", out, pe.opt_offset + 56, next_va)  # SizeOfImage (already aligned)
    struct.pack_into("<I", out, pe.checksum_offset, 0)
    # SizeOfHeaders is unchanged: the new headers fit in the space the stub already reserves.
    return bytes(out), facts


def _fact(name: str, va: int, vsize: int, rawptr: int, rawsize: int, content: bytes, origin: str) -> dict[str, Any]:
    return {
        "name": name,
        "origin": origin,
        "virtual_address": va,
        "virtual_size": vsize,
        "raw_offset": rawptr,
        "raw_size": rawsize,
        "sha256": hashlib.sha256(content).hexdigest(),
    }


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise BuildError(f"cannot read UKI {what} {path}: {e.strerror}") from None


def build_uki(stub: Path, linux: Path, initrd: Path, cmdline: str, osrel: bytes, uname: str, out: Path) -> dict[str, Any]:
    """Write a UKI to `out` atomically; return {"path", "size", "sha256", "sections": [...]}.

    Deterministic: identical inputs give identical bytes (no timestamps, fixed section order).
    """
    stub_data = _read(stub, "stub")
    kernel = _read(linux, "kernel")
    initrd_data = _read(initrd, "initrd")
    if not kernel:
        raise BuildError(f"UKI kernel {linux} is empty")
    if not uname or not uname.isprintable() or not uname.isascii():
        raise BuildError(f"UKI uname {uname!r} is not a printable ASCII kernel release", hint="e.g. 6.1.0-28-cloud-amd64")
    payloads = [
        (".osrel", bytes(osrel)),
        (".cmdline", _check_cmdline(cmdline)),
        (".uname", uname.encode("ascii")),
        (".initrd", initrd_data),
        (".linux", kernel),
    ]
    data, facts = layout_uki(stub_data, payloads, str(stub))
    atomic.write_bytes(Path(out), data)
    return {"path": str(out), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "sections": facts}
