"""PCR 4, 5 and 7 for booting a GPT disk image from UEFI (measure/diskboot.py), checked against swtpm:
event by event against the firmware's log and against the PCR values the guest reads from the TPM.

The UKI is the fixture's (systemd-stub 252 + Debian's cloud kernel + a busybox initrd) with an /init
that prints PCRs 4, 5, 7 and the event log; builder/disk.py puts it on a disk. Two boots: Debian's OVMF
with its empty variable store (Secure Boot off), and the Secure Boot build on q35 with SMM and a store
that trusts a test key, booting the signed UKI."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from measure_fixtures import STUB, debian_package

from ovmf_boot import OVMF_SECBOOT_CODE, OVMF_VARS, boot_disk, event_log
from sealbox.builder.disk import DiskIdentity, VerityRoot, write_disks
from sealbox.formats import efivars, gpt
from sealbox.formats.uki import build_uki
from sealbox.formats.ukiinfo import read_uki
from sealbox.measure import diskboot
from sealbox.measure.events import Register
from secureboot import enrolled_vars, make_key, sbsign

pytestmark = [
    pytest.mark.integration,
    pytest.mark.boot,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 is not installed"),
    pytest.mark.skipif(shutil.which("swtpm") is None, reason="swtpm is not installed"),
    pytest.mark.skipif(not OVMF_VARS.exists(), reason="ovmf is not installed"),
]
DONE = "SEALBOX-DISK-PCRS-DONE"
INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
for p in 4 5 7; do echo "SEALBOX-PCR $p $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$p)"; done
/bin/busybox mount -t securityfs securityfs /sys/kernel/security
echo SEALBOX-EVENTLOG-BEGIN
/bin/busybox base64 /sys/kernel/security/tpm0/binary_bios_measurements
echo SEALBOX-EVENTLOG-END
echo {DONE}
/bin/busybox poweroff -f
"""
EV_NAMES = {0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x4: "EV_SEPARATOR",
            0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION"}


@pytest.fixture(scope="module")
def pcr_uki(tmp_path_factory: pytest.TempPathFactory, cloud_kernel: tuple[Path, str]) -> Path:
    if shutil.which("cpio") is None or not STUB.exists():
        pytest.skip("needs cpio and systemd-boot-efi")
    root = tmp_path_factory.mktemp("pcr-initrd")
    for d in ("bin", "dev", "proc", "sys"):
        (root / d).mkdir()
    shutil.copy(debian_package("busybox-static") / "bin" / "busybox", root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    r = subprocess.run(["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0"], cwd=root,
                       input=("\n".join(names) + "\n").encode(), capture_output=True, timeout=60, check=True)
    initrd = root.parent / "pcr-initrd.cpio"
    initrd.write_bytes(r.stdout)
    vmlinuz, release = cloud_kernel
    out = tmp_path_factory.mktemp("pcr-uki") / "pcr.efi"
    build_uki(STUB, vmlinuz, initrd, "console=ttyS0", b'ID=debian\nVERSION_ID="12"\n', release, out)
    return out


def _disk(uki: Path, tmp: Path, identity: DiskIdentity, verity: VerityRoot | None = None) -> Path:
    out = tmp / "disk"
    out.mkdir()
    write_disks(out, tmp / "work", uki, ["disk"], 1_735_689_600, identity=identity, verity=verity)
    return out / "disk.raw"


def _three_partitions(tmp: Path) -> VerityRoot:
    """Root and hash partitions (never read by this UKI): a GPT event with three used entries."""
    (tmp / "root").write_bytes(b"\x5a" * (2 << 20))
    (tmp / "tree").write_bytes(b"\xa5" * 8192)
    return VerityRoot(tmp / "root", tmp / "tree", "fe" * 32, "00" * 32, 512)


def _check(console: str, predicted: dict[int, Register]) -> None:
    assert DONE in console, console[-3000:]
    log = event_log(console)
    for pcr, reg in predicted.items():
        logged = [(EV_NAMES.get(t, hex(t)), d) for p, t, d, _ in log if p == pcr]
        assert logged == [(e.event_type, e.digest) for e in reg.events], f"PCR {pcr}: log {logged}"
    values = {int(ln.split()[1]): ln.split()[2].lower() for ln in console.replace("\r", "").splitlines()
              if ln.startswith("SEALBOX-PCR ") and len(ln.split()) == 3}
    assert values == {p: r.expected for p, r in predicted.items()}


def test_secure_boot_off(pcr_uki: Path, tmp_path: Path) -> None:
    disk = _disk(pcr_uki, tmp_path, DiskIdentity.of(pcr_uki), _three_partitions(tmp_path))
    assert len(gpt.read_gpt(disk).partitions) == 3
    b = boot_disk(disk, "raw", markers=(DONE,), tpm=True, timeout=300)
    info = read_uki(pcr_uki.read_bytes())
    variables = efivars.read_varstore(OVMF_VARS)
    predicted = {4: diskboot.pcr4(info, False), 5: diskboot.pcr5(gpt.read_gpt(disk), "disk.raw"),
                 7: diskboot.pcr7(variables, False, info.data, OVMF_VARS.name)}
    _check(b.console, predicted)
    print(f"busybox UKI disk, swtpm, Secure Boot off: {b.seconds:.1f} s")


@pytest.mark.skipif(not OVMF_SECBOOT_CODE.exists(), reason="ovmf has no Secure Boot build")
def test_secure_boot_on_with_own_db_key(pcr_uki: Path, tmp_path: Path) -> None:
    key, cert = make_key(tmp_path)
    vars_fd = enrolled_vars(cert, tmp_path / "vars.fd")
    signed = sbsign(key, cert, pcr_uki, tmp_path / "signed.efi")
    disk = _disk(signed, tmp_path, DiskIdentity.of(pcr_uki))  # the unsigned UKI fixes the layout
    b = boot_disk(disk, "raw", markers=(DONE,), tpm=True, secure_boot=True, vars_fd=vars_fd, timeout=400)
    info = read_uki(signed.read_bytes())
    variables = efivars.read_varstore(vars_fd)
    assert diskboot.secure_boot_state(variables, True)
    predicted = {4: diskboot.pcr4(info, True), 5: diskboot.pcr5(gpt.read_gpt(disk), "disk.raw"),
                 7: diskboot.pcr7(variables, True, info.data, vars_fd.name)}
    assert predicted[7].events[-1].event_type == "EV_EFI_VARIABLE_AUTHORITY"
    _check(b.console, predicted)
    print(f"busybox UKI disk, swtpm, Secure Boot on (SMM): {b.seconds:.1f} s")
