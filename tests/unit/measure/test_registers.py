"""PCR 4/9/11 and RTMR 1/2 predictions, recomputed here from the documented event lists."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pebuild import build_pe

from sealbox.errors import MeasureError
from sealbox.formats.authenticode import authenticode
from sealbox.formats.uki import build_uki
from sealbox.formats.ukiinfo import read_uki, stub_cmdline_to_load_options
from sealbox.measure import tdx, tpm

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
pytestmark = pytest.mark.skipif(not STUB.exists(), reason="systemd-boot-efi is not installed")
OSREL = b"ID=debian\n"
ACTION = b"Calling EFI Application from Boot Option"


def extend(bank: str, digests: list[bytes]) -> str:
    value = bytes(hashlib.new(bank).digest_size)
    for d in digests:
        value = hashlib.new(bank, value + d).digest()
    return value.hex()


def H(bank: str, data: bytes) -> bytes:
    return hashlib.new(bank, data).digest()


@pytest.fixture
def uki(tmp_path: Path) -> tuple[bytes, bytes, bytes]:
    kernel = build_pe([(".text", b"\xcc" * 3000)]).data
    initrd = b"070701" + bytes(500)
    (tmp_path / "k").write_bytes(kernel)
    (tmp_path / "i").write_bytes(initrd)
    build_uki(STUB, tmp_path / "k", tmp_path / "i", "console=ttyS0 ro", OSREL, "6.12.9-cloud-amd64", tmp_path / "u.efi")
    return (tmp_path / "u.efi").read_bytes(), kernel, initrd


def test_pcr11_is_stub_252_section_order(uki: tuple[bytes, bytes, bytes]) -> None:
    data, kernel, initrd = uki
    reg = tpm.predict_pcr11(read_uki(data))
    expected = []
    for name, content in [(".linux", kernel), (".osrel", OSREL), (".cmdline", b"console=ttyS0 ro"), (".initrd", initrd)]:
        expected += [H("sha256", name.encode() + b"\0"), H("sha256", content)]
    assert reg.expected == extend("sha256", expected)
    assert all(e.event_type == "EV_IPL" for e in reg.events) and len(reg.events) == 8
    assert not any(".uname" in e.description or ".sbat" in e.description for e in reg.events)


def test_pcr4_orders(uki: tuple[bytes, bytes, bytes]) -> None:
    data, kernel, _ = uki
    info = read_uki(data)
    u, k = bytes.fromhex(authenticode(data)), bytes.fromhex(authenticode(kernel))
    act, sep = H("sha256", ACTION), H("sha256", bytes(4))
    boot = tpm.predict_pcr4(info, tpm.BOOT_OPTION)
    assert boot.expected == extend("sha256", [act, sep, u, k])
    assert [e.event_type for e in boot.events] == ["EV_EFI_ACTION", "EV_SEPARATOR"] + ["EV_EFI_BOOT_SERVICES_APPLICATION"] * 2
    assert tpm.predict_pcr4(info, tpm.QEMU_DIRECT).expected == extend("sha256", [u, act, sep, k])


def test_pcr9_load_options_then_initrd(uki: tuple[bytes, bytes, bytes]) -> None:
    data, _, initrd = uki
    reg = tpm.predict_pcr9(read_uki(data))
    opts = "console=ttyS0 ro".encode("utf-16-le") + b"\0\0"
    assert reg.expected == extend("sha256", [H("sha256", opts), H("sha256", initrd)])


def test_rtmrs(uki: tuple[bytes, bytes, bytes]) -> None:
    data, kernel, initrd = uki
    info = read_uki(data)
    r1 = tdx.predict_rtmr1(info)
    ev = [bytes.fromhex(authenticode(data, "sha384")), H("sha384", ACTION), H("sha384", bytes(4)),
          bytes.fromhex(authenticode(kernel, "sha384")), H("sha384", b"Exit Boot Services Invocation"),
          H("sha384", b"Exit Boot Services Returned with Success")]
    assert r1.expected == extend("sha384", ev) and r1.bank == "sha384"
    r2 = tdx.predict_rtmr2(info)  # .uname says 6.12: the kernel measures into RTMR2
    opts = "console=ttyS0 ro".encode("utf-16-le") + b"\0\0"
    assert r2.expected == extend("sha384", [H("sha384", opts), H("sha384", initrd)])


def test_rtmr2_empty_for_kernels_without_cc_measurement(tmp_path: Path) -> None:
    (tmp_path / "k").write_bytes(build_pe([(".text", b"\xcc" * 100)]).data)
    (tmp_path / "i").write_bytes(b"x")
    build_uki(STUB, tmp_path / "k", tmp_path / "i", "quiet", OSREL, "6.1.0-28-cloud-amd64", tmp_path / "u.efi")
    reg = tdx.predict_rtmr2(read_uki((tmp_path / "u.efi").read_bytes()))
    assert reg.events == [] and reg.expected == "00" * 48 and any("6.9" in n for n in reg.notes)


@pytest.mark.parametrize(
    "raw,text",
    [
        (b"console=ttyS0", "console=ttyS0"),
        (b"a\nb\tc  \n", "a b c"),
        (b"root=/dev/vda\0garbage", "root=/dev/vda"),
        ("caf\u00e9".encode(), "caf\u00e9"),
    ],
)
def test_stub_command_line_mangling(raw: bytes, text: str) -> None:
    assert stub_cmdline_to_load_options(raw) == text.encode("utf-16-le") + b"\0\0"


def test_invalid_utf8_cmdline_is_an_error() -> None:
    with pytest.raises(MeasureError, match="UTF-8"):
        stub_cmdline_to_load_options(b"\xff\xfe")


def test_non_uki_pe_is_rejected() -> None:
    with pytest.raises(MeasureError, match="no .linux section"):
        read_uki(build_pe([(".text", b"x")]).data)
