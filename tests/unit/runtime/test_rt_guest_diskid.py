"""The guest's disk identity library (guest/files/diskid.sh), run by /bin/sh against stand-in sysfs trees: every way
a disk says who it is (virtio-blk, SCSI VPD page 0x80, NVMe, Azure's data-disk LUN), padding, hostile values and
ambiguity. The boots in tests/integration/deploy cover the real devices (virtio-blk, SCSI, NVMe); Hyper-V's VMBus
cannot run here, so the Azure LUN rule is checked only against this stand-in of its sysfs layout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sealbox.guest import files as guest_files

AZURE_DATA = "{f8b3781b-1e82-4818-a1c3-63d806ec15bb}"
AZURE_OS = "{00000000-0000-8899-0000-000000000000}"


def _scsi(sys: Path, name: str, controller: str, lun: int, vpd_serial: bytes | None = None, host: int = 3) -> None:
    ctrl = sys / "devices/LNXSYSTM:00/VMBUS:00" / controller.strip("{}")
    dev = ctrl / f"host{host}/target{host}:0:0/{host}:0:0:{lun}"
    dev.mkdir(parents=True)
    (ctrl / "device_id").write_text(controller + "\n")
    if vpd_serial is not None:
        (dev / "vpd_pg80").write_bytes(b"\x00\x80\x00" + bytes([len(vpd_serial)]) + vpd_serial)
    (sys / "block" / name).mkdir(parents=True)
    (sys / "block" / name / "device").symlink_to(dev)


def _find(sys: Path, *ids: str) -> tuple[int, str]:
    lib = guest_files.read("diskid.sh").decode()
    script = f'{lib}\ndiskid_find "$@"\n'
    p = subprocess.run(["/bin/sh", "-c", script, "diskid", *ids], env={"DISKID_SYS": str(sys), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=30)
    return p.returncode, p.stdout.strip()


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    sys = tmp_path / "sys"
    for name, serial in (("vda", b"sealbox-instance"), ("vdb", b"persistent"), ("vdc", b"evil\nname"), ("vdd", b"per\xffsistent")):
        (sys / "block" / name).mkdir(parents=True)
        (sys / "block" / name / "serial").write_bytes(serial)
    _scsi(sys, "sda", AZURE_OS, 0, host=2)  # Azure's OS disk: LUN 0, but on the OS controller
    _scsi(sys, "sdb", AZURE_DATA, 0)  # an Azure data disk at LUN 0
    _scsi(sys, "sdc", AZURE_DATA, 3, vpd_serial=b"db      ")  # LUN 3, with a SCSI unit serial padded with spaces
    (sys / "block/nvme0n1/device").mkdir(parents=True)
    (sys / "block/nvme0n1/device/serial").write_text("cache               \n")  # NVMe pads its serial to 20 bytes
    (sys / "block/nvme0c0n1/device").mkdir(parents=True)  # a multipath path device, not a disk of its own
    (sys / "block/nvme0c0n1/device/serial").write_text("hidden\n")
    (sys / "block/loop0").mkdir(parents=True)
    return sys


def test_each_kind_of_identity(sysfs: Path) -> None:
    assert _find(sysfs, "serial=persistent") == (0, "/dev/vdb")
    assert _find(sysfs, "azure-lun=0") == (0, "/dev/sdb")  # not sda: LUN 0 of the OS disk's controller
    assert _find(sysfs, "azure-lun=3") == (0, "/dev/sdc")
    assert _find(sysfs, "serial=db") == (0, "/dev/sdc")
    assert _find(sysfs, "serial=cache") == (0, "/dev/nvme0n1")
    assert _find(sysfs, "serial=persistent", "azure-lun=9") == (0, "/dev/vdb")  # any identity names it


def test_nothing_or_two_disks_is_no_answer(sysfs: Path) -> None:
    assert _find(sysfs, "serial=nosuch")[0] == 1
    assert _find(sysfs, "serial=hidden")[0] == 1  # multipath path devices are skipped
    assert _find(sysfs, "serial=sealbox-instance") == (0, "/dev/vda")  # what the host labels is found as labelled
    assert _find(sysfs, "serial=persistent", "azure-lun=0") == (2, "sdb vdb")  # two disks: the caller touches neither


def test_hostile_serials_name_nothing(sysfs: Path) -> None:
    for bad in ("serial=evil", "serial=name", "serial=evil\nname", "serial=persistent\n", "serial=", "azure-lun=", "serial=*"):
        assert _find(sysfs, bad)[0] == 1, bad
    assert _find(sysfs, "serial=persistent")[1] == "/dev/vdb"  # vdd's serial has a byte outside the alphabet: not a match
