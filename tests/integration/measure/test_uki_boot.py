"""Boot sealbox UKIs under QEMU TCG + OVMF and compare the TPM's PCRs and event log with our predictions.

The fixture UKI is systemd-stub 252 + Debian's cloud kernel + a busybox initrd whose /init prints the
command line, PCRs 4/9/11/12 and the firmware event log, then powers off.
"""

from __future__ import annotations

import base64
import shutil
import struct
import time
from pathlib import Path

import pytest
from measure_fixtures import CMDLINE, MARKER, OVMF_CODE
from qemu_boot import boot_uki, console_pcrs

from sealbox.formats.ukiinfo import read_uki
from sealbox.measure import tpm

pytestmark = [
    pytest.mark.integration,
    pytest.mark.boot,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
    pytest.mark.skipif(not OVMF_CODE.exists(), reason="ovmf is not installed"),
]
needs_swtpm = pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed (apt-get install swtpm)")
SHA256 = 0x000B


def event_log(console: str) -> list[tuple[int, str, str]]:
    """(pcr, event type code, sha256 digest) from the base64 TCG2 crypto-agile log the guest printed."""
    text = console.replace("\r", "")
    if "SEALBOX-EVENTLOG-BEGIN\n" not in text:
        return []
    raw = base64.b64decode(text.split("SEALBOX-EVENTLOG-BEGIN\n", 1)[1].split("SEALBOX-EVENTLOG-END", 1)[0])
    _, _, _, size = struct.unpack_from("<II20sI", raw, 0)  # SHA-1 format header event (Spec ID)
    spec = raw[32 : 32 + size]
    sizes = {}
    for i in range(struct.unpack_from("<I", spec, 24)[0]):
        alg, dsize = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = dsize
    off, events = 32 + size, []
    while off + 12 <= len(raw):
        pcr, etype, count = struct.unpack_from("<III", raw, off)
        off += 12
        digests = {}
        for _ in range(count):
            alg = struct.unpack_from("<H", raw, off)[0]
            digests[alg] = raw[off + 2 : off + 2 + sizes[alg]].hex()
            off += 2 + sizes[alg]
        esize = struct.unpack_from("<I", raw, off)[0]
        off += 4 + esize
        events.append((pcr, etype, digests.get(SHA256, "")))
    return events


def test_uki_boots_to_marker(test_uki: tuple[Path, dict]) -> None:
    uki, _ = test_uki
    start = time.monotonic()
    console = boot_uki(uki, timeout=180)
    elapsed = time.monotonic() - start
    assert MARKER in console, console[-3000:]
    assert f"SEALBOX-CMDLINE {CMDLINE}" in console
    print(f"UKI boot to power-off under TCG: {elapsed:.1f} s")


@needs_swtpm
def test_pcrs_for_qemu_direct_kernel_boot(test_uki: tuple[Path, dict]) -> None:
    uki, _ = test_uki
    console = boot_uki(uki, tpm=True, timeout=240)
    assert MARKER in console, console[-3000:]
    info = read_uki(uki.read_bytes())
    predicted = {4: tpm.predict_pcr4(info, tpm.QEMU_DIRECT), 9: tpm.predict_pcr9(info), 11: tpm.predict_pcr11(info)}
    log = event_log(console)
    for pcr, reg in predicted.items():
        logged = [d for p, _, d in log if p == pcr]
        assert logged == [e.digest for e in reg.events], f"PCR {pcr} events differ"
    assert console_pcrs(console) == {4: predicted[4].expected, 9: predicted[9].expected,
                                     11: predicted[11].expected, 12: "00" * 32}


@needs_swtpm
def test_pcr4_for_boot_option_from_esp(test_uki: tuple[Path, dict], tmp_path: Path) -> None:
    """UKI as \\EFI\\BOOT\\BOOTX64.EFI on a FAT disk (QEMU vvfat): the boot-option path of registers.PCR4."""
    uki, _ = test_uki
    esp = tmp_path / "esp" / "EFI" / "BOOT"
    esp.mkdir(parents=True)
    shutil.copy(uki, esp / "BOOTX64.EFI")
    drive = ["-drive", f"file=fat:{tmp_path / 'esp'},format=raw,if=virtio,readonly=on"]
    console = boot_uki(None, tpm=True, timeout=240, extra_args=drive)
    assert MARKER in console, console[-3000:]
    info = read_uki(uki.read_bytes())
    pcr4 = tpm.predict_pcr4(info, tpm.BOOT_OPTION)
    assert [d for p, _, d in event_log(console) if p == 4] == [e.digest for e in pcr4.events]
    assert console_pcrs(console)[4] == pcr4.expected
