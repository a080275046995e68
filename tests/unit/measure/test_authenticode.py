"""Authenticode: our implementation against independently computed byte ranges and against pesign."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pebuild import build_pe

from sealbox.errors import MeasureError
from sealbox.formats.authenticode import authenticode, authenticode_all, hashed_spans
from sealbox.formats.pe import parse_pe

CASES = {
    "pe32plus": dict(sections=[(".text", b"\x90" * 1000), (".data", b"abc")]),
    "pe32": dict(sections=[(".text", b"\x90" * 1000)], pe32plus=False),
    "sections-out-of-file-order": dict(sections=[(".a", b"1" * 700), (".b", b"2" * 100), (".bss", b"")],
                                       reverse_file_order=True),
    "trailing-data": dict(sections=[(".text", b"x" * 10)], trailing=b"TRAILING-DATA!"),
    "cert-table": dict(sections=[(".text", b"x" * 10)], trailing=b"TR", cert=b"C" * 37),
    "odd-alignment-unpadded": dict(sections=[(".text", b"x" * 33), (".d", b"y" * 5)], file_align=0x20,
                                   sect_align=0x20, raw_pad=False),
    "pe32-cert-table": dict(sections=[(".text", b"z" * 600)], pe32plus=False, cert=b"sig"),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("alg", ["sha256", "sha384"])
def test_matches_independent_byte_ranges(name: str, alg: str) -> None:
    layout = build_pe(**CASES[name])
    assert authenticode(layout.data, alg) == layout.expected_authenticode(alg)


def test_no_certificate_directory_entry_hashes_through() -> None:
    # NumberOfRvaAndSizes = 4: the optional header has no certificate entry, so nothing is skipped
    # after CheckSum (edk2 DxeTpm2MeasureBootLib). pesign 0.112 skips 8 bytes anyway; firmware wins.
    layout = build_pe([(".text", b"x" * 10)], n_rva=4)
    assert parse_pe(layout.data).cert_dir_offset is None
    assert authenticode(layout.data) == layout.expected_authenticode()


def test_cert_table_is_excluded_and_signing_does_not_change_the_hash() -> None:
    unsigned = build_pe([(".text", b"q" * 512)])
    signed = build_pe([(".text", b"q" * 512)], cert=b"a signature blob")
    assert len(unsigned.data) % 8 == 0
    assert authenticode(signed.data) == authenticode(unsigned.data)
    assert parse_pe(signed.data).cert_table_size > 0


def test_checksum_and_certdir_bytes_do_not_matter_but_others_do() -> None:
    layout = build_pe([(".text", b"x" * 10)])
    base = authenticode(layout.data)
    tweaked = bytearray(layout.data)
    tweaked[layout.checksum_off] ^= 0xFF
    assert authenticode(bytes(tweaked)) == base
    tweaked[0x20] ^= 0x01  # a DOS header byte is covered
    assert authenticode(bytes(tweaked)) != base


def test_spans_are_in_file_order_for_sections() -> None:
    layout = build_pe(**CASES["sections-out-of-file-order"])
    spans = hashed_spans(parse_pe(layout.data))
    section_starts = [s.start for s in spans[3:]]
    assert section_starts == sorted(section_starts)


def test_all_algorithms_in_one_pass() -> None:
    layout = build_pe(**CASES["trailing-data"])
    both = authenticode_all(layout.data)
    assert both == {"sha256": layout.expected_authenticode("sha256"), "sha384": layout.expected_authenticode("sha384")}


def test_cert_table_overlapping_sections_is_an_error() -> None:
    layout = build_pe([(".text", b"x" * 1024)], cert=b"s")
    data = bytearray(layout.data)
    import struct

    off, size = struct.unpack_from("<II", data, layout.certdir_off)
    struct.pack_into("<II", data, layout.certdir_off, off, size + 4096)  # claims more than the file has
    with pytest.raises(MeasureError):
        authenticode(bytes(data))


PESIGN = shutil.which("pesign")


@pytest.mark.skipif(PESIGN is None, reason="pesign is not installed (apt-get install pesign)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_constructed_images_match_pesign(name: str, tmp_path: Path) -> None:
    layout = build_pe(**CASES[name])
    path = tmp_path / f"{name}.efi"
    path.write_bytes(layout.data)
    out = subprocess.run([PESIGN, "-h", "-i", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == authenticode(layout.data)


DEBIAN_EFI = sorted(Path("/usr/lib/systemd/boot/efi").glob("*.efi*"))


@pytest.mark.skipif(PESIGN is None or not DEBIAN_EFI, reason="pesign or systemd-boot-efi not installed")
@pytest.mark.parametrize("path", DEBIAN_EFI, ids=lambda p: p.name)
def test_debian_systemd_efi_binaries_match_pesign(path: Path) -> None:
    out = subprocess.run([PESIGN, "-h", "-i", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == authenticode(path.read_bytes())
