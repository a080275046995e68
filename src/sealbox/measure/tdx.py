"""Intel TDX: MRTD from a TDVF (OVMF for TDX) image, and RTMR 1/2 for QEMU direct boot of a UKI.

MRTD. The firmware image ends with OVMF's GUIDed table: the 16-byte footer GUID 96b582de-... sits
just before the last 0x20 bytes, preceded by a u16 giving the whole table's length. Walking the table
backwards (each entry = data, u16 length, GUID) finds the TDX metadata offset entry (GUID
e47a6535-...), whose first u32 is the distance from the end of the image to the TDVF descriptor
("TDVF", length, version 1, section count, then 32-byte sections: DataOffset, RawDataSize,
MemoryAddress, MemoryDataSize, Type, Attributes). The VMM adds every page of every section; the TDX
module then extends MRTD (one SHA-384 running over the whole build) with
  TDH.MEM.PAGE.ADD: a 128-byte block "MEM.PAGE.ADD" + GPA (u64 at offset 16), for each 4 KiB page
                    of sections without the PAGE.AUG attribute;
  TDH.MR.EXTEND:    a 128-byte block "MR.EXTEND" + GPA, followed by the 256 bytes of content, for
                    each 256-byte chunk of sections with the MR.EXTEND attribute.
QEMU >= 9 adds and extends page by page ("single-pass"); the QEMU 8 TDX series added all of a
section's pages before extending them ("two-pass"); both orders are supported.

RTMRs. TDVF maps PCR 1,7 -> RTMR0, PCR 2-6 -> RTMR1, PCR 8-15 -> RTMR2 (UEFI 2.10 section 38.4.1)
and measures through EFI_CC_MEASUREMENT_PROTOCOL with SHA-384. RTMR0 depends on the VM's ACPI
tables, memory map and firmware variables and is not predicted here.
"""

from __future__ import annotations

import hashlib
import re
import struct
import uuid
from dataclasses import dataclass

from sealbox.errors import MeasureError
from sealbox.formats.ukiinfo import UkiInfo
from sealbox.measure.events import (
    CALLING_EFI_APPLICATION,
    EXIT_BOOT_SERVICES_INVOCATION,
    EXIT_BOOT_SERVICES_SUCCESS,
    SEPARATOR_DATA,
    Register,
)
from sealbox.measure.tpm import kernel_stub_events, pe_load_events

BANK = "sha384"
PAGE = 0x1000
CHUNK = 0x100
ATTR_MR_EXTEND = 0x1
ATTR_PAGE_AUG = 0x2
TABLE_FOOTER_GUID = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
TDX_METADATA_OFFSET_GUID = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
SECTION_TYPES = {0: "BFV", 1: "CFV", 2: "TD_HOB", 3: "TempMem", 4: "PermMem", 5: "Payload", 6: "PayloadParam",
                 8: "TdInfo"}
MAX_SECTIONS = 64
MAX_ADDED_PAGES = 1 << 20  # 4 GiB of PAGE.ADD: far above any real TDVF, bounds hostile input
PAGE_ORDERS = ("single-pass", "two-pass")
# Linux gained CC-protocol measurement in its EFI stub in 6.9; older kernels measure nothing into RTMRs.
LINUX_CC_MEASURE_MIN = (6, 9)


@dataclass(frozen=True)
class TdvfSection:
    data_offset: int
    raw_data_size: int
    memory_address: int
    memory_data_size: int
    type: int
    attributes: int

    def to_json(self) -> dict[str, object]:
        return {
            "type": SECTION_TYPES.get(self.type, f"unknown({self.type})"),
            "data_offset": self.data_offset,
            "raw_data_size": self.raw_data_size,
            "memory_address": f"0x{self.memory_address:x}",
            "memory_data_size": self.memory_data_size,
            "attributes": self.attributes,
        }


def _bad(what: str, msg: str) -> MeasureError:
    return MeasureError(f"{what}: {msg}", hint="pass a TDVF build (OVMF built for Intel TDX), e.g. OVMF.inteltdx.fd")


def find_guided_entry(fw: bytes, guid: bytes, what: str = "firmware") -> bytes | None:
    """Data of the OVMF GUIDed-table entry `guid`, None if the table has no such entry."""
    end = len(fw) - 0x20
    if end < 18 or fw[end - 16 : end] != TABLE_FOOTER_GUID:
        raise _bad(what, "no OVMF GUIDed table footer before the last 32 bytes, so this is not an OVMF/TDVF image")
    total = struct.unpack_from("<H", fw, end - 18)[0]
    start = end - total
    if total < 18 or start < 0:
        raise _bad(what, f"GUIDed table length {total} is invalid")
    pos = end - 18  # entries end where the footer entry begins
    for _ in range(256):  # bounded walk
        if pos - 18 < start:
            return None
        length = struct.unpack_from("<H", fw, pos - 18)[0]
        if length < 18 or pos - length < start:
            raise _bad(what, f"GUIDed table entry of length {length} at 0x{pos:x} is invalid")
        if fw[pos - 16 : pos] == guid:
            return bytes(fw[pos - length : pos - 18])
        pos -= length
    raise _bad(what, "GUIDed table has too many entries")


def parse_tdvf(fw: bytes, what: str = "firmware") -> list[TdvfSection]:
    entry = find_guided_entry(fw, TDX_METADATA_OFFSET_GUID, what)
    if entry is None:
        raise _bad(what, "the image has no TDX metadata (GUID e47a6535-...): it is not a TDX build of OVMF")
    if len(entry) < 4:
        raise _bad(what, "TDX metadata offset entry is truncated")
    dist = struct.unpack_from("<I", entry, 0)[0]
    off = len(fw) - dist
    if dist > len(fw) or off + 16 > len(fw):
        raise _bad(what, f"TDX metadata offset 0x{dist:x} points outside the image")
    sig, length, version, count = struct.unpack_from("<4sIII", fw, off)
    if sig != b"TDVF":
        raise _bad(what, f"no 'TDVF' descriptor at 0x{off:x}")
    if version != 1:
        raise _bad(what, f"unsupported TDVF descriptor version {version}")
    if count == 0 or count > MAX_SECTIONS or length < 16 + 32 * count or off + 16 + 32 * count > len(fw):
        raise _bad(what, f"TDVF descriptor with {count} sections / length {length} is invalid")
    sections = []
    for i in range(count):
        s = TdvfSection(*struct.unpack_from("<IIQQII", fw, off + 16 + 32 * i))
        if s.memory_address % PAGE or s.memory_data_size % PAGE:
            raise _bad(what, f"TDVF section {i} is not 4 KiB aligned")
        if s.data_offset + s.raw_data_size > len(fw):
            raise MeasureError(
                f"{what}: TDVF section {i} lies past the end of this {len(fw)}-byte file "
                f"(offset 0x{s.data_offset:x} + {s.raw_data_size}): this is the CODE half of a split OVMF image",
                hint="pass the unified image with the variable store, e.g. /usr/share/ovmf/OVMF.fd",
            )
        if s.raw_data_size > s.memory_data_size:
            raise _bad(what, f"TDVF section {i} has more raw data ({s.raw_data_size}) than memory")
        sections.append(s)
    added = sum(s.memory_data_size // PAGE for s in sections if not s.attributes & ATTR_PAGE_AUG)
    if added > MAX_ADDED_PAGES:
        raise _bad(what, f"TDVF sections add {added} pages, more than any TDVF image")
    return sections


def _page_add(gpa: int) -> bytes:
    return b"MEM.PAGE.ADD".ljust(16, b"\0") + struct.pack("<Q", gpa) + bytes(104)


def _mr_extend(gpa: int) -> bytes:
    return b"MR.EXTEND".ljust(16, b"\0") + struct.pack("<Q", gpa) + bytes(104)


def compute_mrtd(fw: bytes, sections: list[TdvfSection], page_order: str = "single-pass") -> str:
    if page_order not in PAGE_ORDERS:
        raise MeasureError(f"unknown MRTD page order {page_order!r}", hint=f"use one of {', '.join(PAGE_ORDERS)}")
    h = hashlib.sha384()

    def add(s: TdvfSection, page: int) -> None:
        if not s.attributes & ATTR_PAGE_AUG:
            h.update(_page_add(s.memory_address + page * PAGE))

    def extend(s: TdvfSection, page: int) -> None:
        if not s.attributes & ATTR_MR_EXTEND:
            return
        # Bytes past RawDataSize are zero in the TD (the VMM zero-fills the rest of the section).
        raw = fw[s.data_offset : s.data_offset + s.raw_data_size]
        for c in range(PAGE // CHUNK):
            rel = page * PAGE + c * CHUNK
            h.update(_mr_extend(s.memory_address + rel))
            h.update(raw[rel : rel + CHUNK].ljust(CHUNK, b"\0"))

    for s in sections:
        pages = range(s.memory_data_size // PAGE)
        if page_order == "two-pass":
            for p in pages:
                add(s, p)
            for p in pages:
                extend(s, p)
        else:
            for p in pages:
                add(s, p)
                extend(s, p)
    return h.hexdigest()


def mrtd_register(fw: bytes, what: str, page_order: str) -> dict[str, object]:
    sections = parse_tdvf(fw, what)
    return {
        "expected": compute_mrtd(fw, sections, page_order),
        "bank": BANK,
        "scenario": f"TDVF build measured by the TDX module ({page_order} page order)",
        "page_order": page_order,
        "sections": [s.to_json() for s in sections],
        "events": [],  # MRTD is a running hash, not an extend log
    }


def kernel_release(info: UkiInfo) -> tuple[int, int] | None:
    """(major, minor) from .uname, else from the bzImage setup header's kernel_version string."""
    text = info.uname
    if not text:
        k = info.kernel
        if len(k) > 0x210 and k[0x202:0x206] == b"HdrS":
            ptr = struct.unpack_from("<H", k, 0x20E)[0] + 0x200
            text = k[ptr : ptr + 64].split(b"\0", 1)[0].decode("ascii", errors="replace")
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def predict_rtmr1(info: UkiInfo) -> Register:
    """RTMR1 for `qemu -kernel uki.efi` with TDVF: the same firmware path as PCR 4 qemu-direct-kernel,
    plus the ExitBootServices actions (PCR 5 -> RTMR1). One separator, as TDVF measures it once per RTMR."""
    reg = Register("RTMR1", BANK, "qemu-direct-kernel")
    uki, kernel = pe_load_events(info, BANK)
    reg.add(*uki)
    reg.add_data("EV_EFI_ACTION", CALLING_EFI_APPLICATION.decode(), CALLING_EFI_APPLICATION)
    reg.add_data("EV_SEPARATOR", "separator (00000000)", SEPARATOR_DATA)
    reg.add(*kernel)
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_INVOCATION.decode(), EXIT_BOOT_SERVICES_INVOCATION)
    reg.add_data("EV_EFI_ACTION", EXIT_BOOT_SERVICES_SUCCESS.decode(), EXIT_BOOT_SERVICES_SUCCESS)
    return reg


def predict_rtmr2(info: UkiInfo) -> Register:
    """RTMR2: what the Linux EFI stub measures (LoadOptions, initrd). systemd-stub 252 knows only the
    TCG2 protocol, so its PCR 11 section events do not reach any RTMR in a TD without a vTPM."""
    reg = Register("RTMR2", BANK, "qemu-direct-kernel")
    reg.notes.append("systemd-stub 252 has no EFI_CC_MEASUREMENT_PROTOCOL support (added in systemd 256)")
    release = kernel_release(info)
    if release is not None and release < LINUX_CC_MEASURE_MIN:
        reg.notes.append(
            f"kernel {release[0]}.{release[1]} predates CC measurement in the Linux EFI stub (6.9): RTMR2 stays zero"
        )
        return reg
    if release is None:
        reg.notes.append("kernel release unknown: assuming a Linux >= 6.9 EFI stub that measures into RTMR2")
    kernel_stub_events(reg, info)
    return reg
