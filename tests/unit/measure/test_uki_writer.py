"""UKI writer: layout, determinism and refusal of unusable inputs (Debian's systemd stub as input)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pefile
import pytest
from pebuild import build_pe

from sealbox.errors import BuildError
from sealbox.formats.authenticode import authenticode
from sealbox.formats.pe import parse_pe
from sealbox.formats.uki import build_uki

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.exists(), reason="systemd-boot-efi (linuxx64.efi.stub) is not installed")
OSREL = b'ID=debian\nVERSION_ID="12"\n'


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(build_pe([(".text", b"\xcc" * 5000)]).data + b"payload" * 1000)
    initrd = tmp_path / "initrd"
    initrd.write_bytes(bytes(range(256)) * 37 + b"odd")
    return {"linux": kernel, "initrd": initrd}


def _build(inputs: dict[str, Path], out: Path, cmdline: str = "console=ttyS0 quiet") -> dict:
    return build_uki(STUB, inputs["linux"], inputs["initrd"], cmdline, OSREL, "6.1.0-test", out)


def test_layout(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.efi"
    facts = _build(inputs, out)
    data = out.read_bytes()
    stub = STUB.read_bytes()
    pe = pefile.PE(data=data)  # independent parser
    names = [s.Name.rstrip(b"\0").decode() for s in pe.sections]
    stub_names = [s.Name.rstrip(b"\0").decode() for s in pefile.PE(data=stub).sections]
    assert names == stub_names + [".osrel", ".cmdline", ".uname", ".initrd", ".linux"]
    assert ".sbat" in names
    opt = pe.OPTIONAL_HEADER
    assert opt.CheckSum == 0 and pe.FILE_HEADER.TimeDateStamp == 0
    assert pe.FILE_HEADER.PointerToSymbolTable == 0 and pe.FILE_HEADER.NumberOfSymbols == 0
    added = pe.sections[len(stub_names):]
    prev_end = max(s.VirtualAddress + max(s.Misc_VirtualSize, s.SizeOfRawData) for s in pe.sections[: len(stub_names)])
    for s in added:
        assert s.VirtualAddress % opt.SectionAlignment == 0 and s.VirtualAddress >= prev_end
        assert s.PointerToRawData % opt.FileAlignment == 0 and s.SizeOfRawData % opt.FileAlignment == 0
        prev_end = s.VirtualAddress + s.Misc_VirtualSize
    assert opt.SizeOfImage % opt.SectionAlignment == 0 and opt.SizeOfImage >= prev_end
    contents = {s.Name.rstrip(b"\0").decode(): s.get_data()[: s.Misc_VirtualSize] for s in added}
    assert contents[".linux"] == inputs["linux"].read_bytes()
    assert contents[".initrd"] == inputs["initrd"].read_bytes()
    assert contents[".cmdline"] == b"console=ttyS0 quiet" and contents[".osrel"] == OSREL
    assert contents[".uname"] == b"6.1.0-test"
    # the stub's own sections are carried over byte for byte
    stub_sections = pefile.PE(data=stub).sections
    for old, new in zip(stub_sections, pe.sections[: len(stub_sections)], strict=True):
        assert old.get_data() == new.get_data() and old.VirtualAddress == new.VirtualAddress
    assert facts["sha256"] == hashlib.sha256(data).hexdigest() and facts["size"] == len(data)
    assert [f["name"] for f in facts["sections"]] == names
    assert len(data) % opt.FileAlignment == 0


def test_deterministic(inputs: dict[str, Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a.efi", tmp_path / "b.efi"
    _build(inputs, a)
    _build(inputs, b)
    assert a.read_bytes() == b.read_bytes()
    _build(inputs, b, cmdline="console=ttyS0")
    assert a.read_bytes() != b.read_bytes()


@pytest.mark.skipif(shutil.which("pesign") is None, reason="pesign is not installed")
def test_uki_authenticode_matches_pesign(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.efi"
    _build(inputs, out)
    r = subprocess.run(["pesign", "-h", "-i", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.split()[-1] == authenticode(out.read_bytes())


@pytest.mark.parametrize("cmdline", ["", " console=ttyS0", "console=ttyS0\n", "a\tb", "caf\u00e9"])
def test_rejects_unusable_cmdline(inputs: dict[str, Path], tmp_path: Path, cmdline: str) -> None:
    with pytest.raises(BuildError, match="command line"):
        _build(inputs, tmp_path / "a.efi", cmdline)
    assert not (tmp_path / "a.efi").exists()


def test_rejects_bad_stubs(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a.efi"
    _build(inputs, out)
    with pytest.raises(BuildError, match="already has section"):
        build_uki(out, inputs["linux"], inputs["initrd"], "x", OSREL, "6.1", tmp_path / "b.efi")
    not_pe = tmp_path / "not.efi"
    not_pe.write_bytes(b"hello")
    with pytest.raises(BuildError, match="not a valid PE"):
        build_uki(not_pe, inputs["linux"], inputs["initrd"], "x", OSREL, "6.1", tmp_path / "b.efi")
    signed = tmp_path / "signed.efi"
    signed.write_bytes(build_pe([(".text", b"x" * 100)], cert=b"sig", extra_header_slots=8).data)
    with pytest.raises(BuildError, match="signed"):
        build_uki(signed, inputs["linux"], inputs["initrd"], "x", OSREL, "6.1", tmp_path / "b.efi")
    full = tmp_path / "full.efi"
    full.write_bytes(build_pe([(".text", b"x" * 100)] * 12).data)  # no spare header slots
    with pytest.raises(BuildError, match="no room"):
        build_uki(full, inputs["linux"], inputs["initrd"], "x", OSREL, "6.1", tmp_path / "b.efi")
    with pytest.raises(BuildError, match="cannot read"):
        build_uki(STUB, tmp_path / "missing", inputs["initrd"], "x", OSREL, "6.1", tmp_path / "b.efi")
    with pytest.raises(BuildError, match="uname"):
        build_uki(STUB, inputs["linux"], inputs["initrd"], "x", OSREL, "", tmp_path / "b.efi")


def test_stub_symbol_table_is_dropped(inputs: dict[str, Path], tmp_path: Path) -> None:
    stub_pe = parse_pe(STUB.read_bytes())
    out = tmp_path / "a.efi"
    _build(inputs, out)
    pe = parse_pe(out.read_bytes())
    assert pe.pointer_to_symbol_table == 0
    if stub_pe.pointer_to_symbol_table:
        # nothing of the old symbol table region remains between the stub sections and ours
        first_added = pe.sections[len(stub_pe.sections)]
        assert first_added.pointer_to_raw_data == stub_pe.pointer_to_symbol_table
