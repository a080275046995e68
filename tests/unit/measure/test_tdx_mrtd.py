"""MRTD from TDVF metadata, on constructed firmware images (no public TDVF image with a published MRTD
is reachable from here), plus the real Debian OVMF images for parsing and error messages."""

from __future__ import annotations

import hashlib
import struct
import uuid
from pathlib import Path

import pytest

from sealbox.errors import MeasureError
from sealbox.measure import tdx

FOOTER = uuid.UUID("96b582de-1fb2-45f7-baea-a366c55a082d").bytes_le
META = uuid.UUID("e47a6535-984a-4798-865e-4685a7bf8ec2").bytes_le
OTHER = uuid.UUID("00f771de-1a7e-4fcb-890e-68c77e2fb44e").bytes_le
SIZE = 0x10000
# (data_offset, raw_size, gpa, mem_size, type, attributes)
SECTIONS = [
    (0x4000, 0x3000, 0xFFFFC000, 0x3000, 0, 1),  # BFV: measured page by page
    (0x1000, 0x1000, 0xFFFF1000, 0x1000, 1, 0),  # CFV: added, not extended
    (0, 0, 0x809000, 0x2000, 2, 0),  # TD_HOB
    (0, 0, 0x100000000, 0x40000000, 4, 2),  # PermMem, PAGE.AUG: not part of MRTD
]


def make_fw(sections=SECTIONS, *, version: int = 1, sig: bytes = b"TDVF", with_meta: bool = True) -> bytes:
    fw = bytearray((i * 7 + 3) % 251 for i in range(SIZE))
    desc_at = 0x200
    fw[desc_at - 16 : desc_at] = META
    desc = struct.pack("<4sIII", sig, 16 + 32 * len(sections), version, len(sections))
    desc += b"".join(struct.pack("<IIQQII", *s) for s in sections)
    fw[desc_at : desc_at + len(desc)] = desc
    end = SIZE - 0x20
    entries = b""
    if with_meta:
        entries += struct.pack("<I", SIZE - desc_at) + struct.pack("<H", 22) + META
    entries = struct.pack("<I", 7) + struct.pack("<H", 22) + OTHER + entries
    table = entries + struct.pack("<H", len(entries) + 18) + FOOTER
    fw[end - len(table) : end] = table
    return bytes(fw)


def reference_mrtd(fw: bytes, single_pass: bool = True) -> str:
    """Straight from the TDX module spec: 128-byte PAGE.ADD / MR.EXTEND blocks, 256-byte chunks."""
    h = hashlib.sha384()
    for off, _raw, gpa, size, _type, attr in SECTIONS:
        adds = [] if attr & 2 else [b"MEM.PAGE.ADD" + bytes(4) + struct.pack("<Q", gpa + p) + bytes(104)
                                     for p in range(0, size, 4096)]
        exts = []
        if attr & 1:
            for p in range(0, size, 4096):
                exts.append(b"".join(b"MR.EXTEND" + bytes(7) + struct.pack("<Q", gpa + p + c) + bytes(104)
                                     + fw[off + p + c : off + p + c + 256] for c in range(0, 4096, 256)))
        if single_pass:
            for i in range(max(len(adds), len(exts))):
                h.update(adds[i] if i < len(adds) else b"")
                h.update(exts[i] if i < len(exts) else b"")
        else:
            h.update(b"".join(adds) + b"".join(exts))
    return h.hexdigest()


def test_parse_constructed() -> None:
    secs = tdx.parse_tdvf(make_fw())
    assert [(s.type, s.attributes) for s in secs] == [(0, 1), (1, 0), (2, 0), (4, 2)]
    assert secs[0].memory_address == 0xFFFFC000


@pytest.mark.parametrize("order", ["single-pass", "two-pass"])
def test_mrtd_matches_reference(order: str) -> None:
    fw = make_fw()
    got = tdx.compute_mrtd(fw, tdx.parse_tdvf(fw), order)
    assert got == reference_mrtd(fw, order == "single-pass")


def test_orders_differ_and_content_matters() -> None:
    fw = make_fw()
    secs = tdx.parse_tdvf(fw)
    assert tdx.compute_mrtd(fw, secs, "single-pass") != tdx.compute_mrtd(fw, secs, "two-pass")
    changed = bytearray(fw)
    changed[0x4000 + 10] ^= 1  # inside the extended BFV
    assert tdx.compute_mrtd(bytes(changed), secs) != tdx.compute_mrtd(fw, secs)
    changed = bytearray(fw)
    changed[0x1000 + 10] ^= 1  # inside the CFV, which is added but not extended
    assert tdx.compute_mrtd(bytes(changed), secs) == tdx.compute_mrtd(fw, secs)


@pytest.mark.parametrize(
    "fw,needle",
    [
        (bytes(SIZE), "GUIDed table footer"),
        (make_fw(with_meta=False), "no TDX metadata"),
        (make_fw(sig=b"XXXX"), "'TDVF' descriptor"),
        (make_fw(version=2), "version 2"),
        (make_fw([(0, 0, 0x1234, 0x1000, 2, 0)]), "aligned"),
        (make_fw([(0xF000, 0x2000, 0x1000, 0x2000, 0, 1)]), "past the end"),
        (make_fw([(0, 0x2000, 0x1000, 0x1000, 0, 1)]), "more raw data"),
        (make_fw([(0, 0, 0, 0x1000, 3, 0)] * 65), "invalid"),
        (make_fw([(0, 0, 0, 0x1000_0000_0000, 3, 0)]), "more than any TDVF"),
    ],
)
def test_errors(fw: bytes, needle: str) -> None:
    with pytest.raises(MeasureError) as e:
        tdx.compute_mrtd(fw, tdx.parse_tdvf(fw, "fw.fd"))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_unknown_page_order() -> None:
    fw = make_fw()
    with pytest.raises(MeasureError, match="page order"):
        tdx.compute_mrtd(fw, tdx.parse_tdvf(fw), "three-pass")


OVMF_4M = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_UNIFIED = Path("/usr/share/ovmf/OVMF.fd")


@pytest.mark.skipif(not OVMF_4M.exists(), reason="ovmf is not installed")
def test_debian_4m_code_is_not_a_tdx_build() -> None:
    with pytest.raises(MeasureError, match="not a TDX build"):
        tdx.parse_tdvf(OVMF_4M.read_bytes(), str(OVMF_4M))


@pytest.mark.skipif(not OVMF_UNIFIED.exists(), reason="ovmf is not installed")
def test_debian_unified_ovmf_has_tdx_metadata() -> None:
    # Debian 12's 2 MiB OvmfPkgX64 image carries TDVF metadata ("one binary" OVMF): BFV extended,
    # CFV (variables) added only, TD_HOB and temporary memory added as zero pages.
    fw = OVMF_UNIFIED.read_bytes()
    secs = tdx.parse_tdvf(fw, str(OVMF_UNIFIED))
    assert secs[0].type == 0 and secs[0].attributes & tdx.ATTR_MR_EXTEND
    assert any(s.type == 2 for s in secs)
    assert len(tdx.compute_mrtd(fw, secs)) == 96
