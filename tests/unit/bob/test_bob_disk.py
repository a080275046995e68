"""bob-disk's parts that need no real disk: finding the disk by serial, the cost rule, the HMAC record, the socket
protocol. The LUKS2 flows themselves run against the real cryptsetup in tests/integration/bob/test_bob_disk_luks.py."""

from __future__ import annotations

import fcntl
import io
import json
import os
import struct
from pathlib import Path

import pytest

from bobguest import load

bd = load("bob_disk")


def _sysfs(base: Path, disks: dict[str, bytes]) -> Path:
    """A stand-in of /sys/block as the kernel lays it out for virtio-blk (vdX/serial), SCSI (sdX/device/vpd_pg80) and
    NVMe (nvmeXnY/device/serial) disks; value: the raw attribute bytes."""
    for name, raw in disks.items():
        if name.startswith("vd"):
            f = base / "block" / name / "serial"
        elif name.startswith("sd"):
            f = base / "block" / name / "device/vpd_pg80"
        else:
            f = base / "block" / name / "device/serial"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(raw)
    (base / "block").mkdir(parents=True, exist_ok=True)
    return base


def _pg80(serial: bytes) -> bytes:
    return bytes([0, 0x80, 0, len(serial)]) + serial


@pytest.mark.parametrize("disks, want", [
    ({"vda": b"sealbox-rootfs", "vdb": b"persistent"}, "/dev/vdb"),
    ({"vda": b"persistent", "vdb": b"sealbox-disk1"}, "/dev/vda"),
    ({"sda": _pg80(b"sealbox-rootfs"), "sdb": _pg80(b"persistent          ")}, "/dev/sdb"),  # SCSI pads with spaces
    ({"vda": b"sealbox-rootfs", "nvme0n1": b"persistent    \n"}, "/dev/nvme0n1"),
])
def test_the_disk_is_found_by_its_serial_never_by_order(tmp_path: Path, disks: dict[str, bytes], want: str) -> None:
    assert bd.find_disk(_sysfs(tmp_path, disks)) == Path(want)


@pytest.mark.parametrize("disks, has", [
    ({}, "no data disk with serial 'persistent'"),
    ({"vda": b"sealbox-rootfs", "vdb": b"persistentX"}, "no data disk with serial 'persistent'"),
    ({"vda": b"persist\xffent"}, "no data disk"),  # a byte outside the alphabet names nothing
    ({"vdb": b"persistent", "sdc": _pg80(b"persistent")}, "two disks carry serial 'persistent' (sdc, vdb)"),
    ({"loop0": b"persistent", "dm-0": b"persistent"}, "no data disk"),  # not disks a serial can name
])
def test_no_disk_or_two_disks_is_a_refusal(tmp_path: Path, disks: dict[str, bytes], has: str) -> None:
    with pytest.raises(bd.Refused) as info:
        bd.find_disk(_sysfs(tmp_path, disks))
    assert has in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("mem_kib, argon, log2n", [
    (1024 * 1024, 256 * 1024, 17),  # a 1 GiB guest: a quarter is 256 MiB; scrypt at 128 MiB
    (16 * 1024 * 1024, 1024 * 1024, 17),  # capped at cryptsetup's own ceiling, 1 GiB
    (256 * 1024, 64 * 1024, 16),  # a small guest: scrypt shrinks to fit the same quarter
    (64 * 1024, 16 * 1024, 14),
])
def test_the_kdf_memory_is_at_most_a_quarter_of_memtotal(tmp_path: Path, mem_kib: int, argon: int, log2n: int) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(f"MemTotal:       {mem_kib} kB\nMemFree:        1000 kB\n")
    cost = bd.Cost.for_guest(tmp_path)
    assert (cost.pbkdf_memory_kib, cost.pbkdf_iterations, cost.scrypt_log2n) == (argon, None, log2n)
    assert 128 * 8 * 2**cost.scrypt_log2n <= cost.pbkdf_memory_kib * 1024 <= mem_kib * 1024 // 4


@pytest.mark.parametrize("meminfo", ["", "MemTotal: lots kB\n", "MemFree: 5 kB\n", "MemTotal: 1000 kB\n"])
def test_an_unreadable_or_tiny_memtotal_is_a_refusal(tmp_path: Path, meminfo: str) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text(meminfo)
    with pytest.raises(bd.Refused):
        bd.Cost.for_guest(tmp_path)


def test_the_record_round_trips_and_binds_its_own_fields() -> None:
    area = bytes(range(256)) * 64
    rec = bd.Record.new(10)
    rec.seal(b"pw", area)
    raw = rec.pack()
    assert len(raw) == bd.RECORD_SIZE and raw.startswith(bd.MAGIC)
    again = bd.Record.parse(raw)
    assert again == rec
    assert again.key(b"pw") is not None and again.key(b"wrong") is None
    k = again.key(b"pw")
    assert k is not None and again.mac_ok(k, area)
    assert not again.mac_ok(k, area[:-1] + b"\x00")
    # a record whose salt (or cost) was changed no longer matches, whatever the header
    other = bd.Record.parse(raw[:40] + bytes([raw[40] ^ 1]) + raw[41:])
    assert other is not None and other.key(b"pw") is None


@pytest.mark.parametrize("raw", [b"", b"\x00" * 4096, b"X" * 4096])
def test_no_record_reads_as_none(raw: bytes) -> None:
    assert bd.Record.parse(raw) is None


@pytest.mark.parametrize("raw", [bd.MAGIC + b"\x00" * (4096 - len(bd.MAGIC)), bd.MAGIC + b"\x01"])
def test_a_damaged_record_is_tampering(raw: bytes) -> None:
    with pytest.raises(bd.Refused) as info:
        bd.Record.parse(raw)
    assert "header tampered" in str(info.value)


def test_a_record_with_a_hostile_cost_is_refused_before_any_kdf_runs() -> None:
    rec = bd.Record.new(10)
    rec.seal(b"pw", b"area")
    raw = bytearray(rec.pack())
    struct.pack_into(">B", raw, bd.LOG2N_AT, 40)  # 2^40 * 1 KiB of memory: must never be attempted
    with pytest.raises(bd.Refused) as info:
        bd.Record.parse(bytes(raw))
    assert "header tampered" in str(info.value)


class FakeDisk:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def initialize(self, passphrase: bytes) -> str:
        self.got.append(passphrase)
        return "initialize: done"


def _serve(data: bytes) -> tuple[dict[str, object], list[bytes]]:
    disk, out = FakeDisk(), io.StringIO()
    bd.serve(disk, io.BytesIO(data), out)
    return json.loads(out.getvalue()), disk.got


def test_serve_hands_one_passphrase_line_to_initialize() -> None:
    assert _serve(b"initialize\ncorrect horse\n") == ({"rc": 0, "out": "initialize: done"}, [b"correct horse"])


@pytest.mark.parametrize("data, has", [
    (b"toggle\npw\n", "unknown request"),
    (b"initialize\n", "no passphrase"),
    (b"initialize\n\n", "no passphrase"),
    (b"initialize\n" + b"x" * 600 + b"\n", "longer than 512 bytes"),
    (b"initialize\npw", "not one line"),  # no newline: cut short
    (b"initialize\np\x00w\n", "control character"),
    (b"x" * 100, "request too long"),
])
def test_serve_refuses_anything_else_without_touching_the_disk(data: bytes, has: str) -> None:
    answer, got = _serve(data)
    assert answer["rc"] == 2 and has in str(answer["out"]) and got == []


def test_serve_passes_a_refusal_on() -> None:
    class Refusing(FakeDisk):
        def initialize(self, passphrase: bytes) -> str:
            raise bd.Refused("initialize: wrong passphrase: nothing was changed")

    out = io.StringIO()
    bd.serve(Refusing(), io.BytesIO(b"initialize\npw\n"), out)
    assert json.loads(out.getvalue()) == {"rc": 1, "out": "initialize: wrong passphrase: nothing was changed"}


def test_a_second_initialize_at_the_same_time_is_refused(tmp_path: Path) -> None:
    lock = tmp_path / bd.LOCK_FILE
    lock.parent.mkdir(parents=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # the first one, still working
        with pytest.raises(bd.Refused) as info:
            bd.Disk(tmp_path, device=tmp_path / "no-such-disk").initialize(b"pw")
        assert str(info.value) == "initialize: another initialize is running"
    finally:
        os.close(fd)


def test_boot_without_a_disk_leaves_registration_open(tmp_path: Path) -> None:
    msg = bd.Disk(tmp_path, sysfs=_sysfs(tmp_path / "sys", {"vda": b"sealbox-rootfs"})).boot(wait=0.3)
    assert msg.startswith("boot: no data disk with serial 'persistent'") and msg.endswith("key registration stays open")
    assert not (tmp_path / bd.KEY_FILE).exists()


def test_the_units_name_the_socket_and_the_program_the_shell_and_the_image_use() -> None:
    units = Path(bd.__file__).parent
    socket_unit = (units / "sealbox-bob-disk.socket").read_text()
    service = (units / "sealbox-bob-disk@.service").read_text()
    boot = (units / "sealbox-bob-disk-boot.service").read_text()
    shell = load("bob_shell")
    assert f"ListenStream=/{shell.DISK_SOCKET}\n" in socket_unit and "Accept=yes\n" in socket_unit
    assert "SocketMode=0660\n" in socket_unit and "SocketGroup=searcher\n" in socket_unit
    assert "ExecStart=/usr/lib/sealbox/bob/bob-disk serve\n" in service and "StandardInput=socket\n" in service
    assert "ExecStart=/usr/lib/sealbox/bob/bob-disk boot\n" in boot
    settings = "\n".join(ln for ln in service.splitlines() if not ln.startswith("#"))
    for bad in ("ProtectSystem", "PrivateTmp", "PrivateDevices", "PrivateMounts", "ProtectHome"):
        assert bad not in settings  # a private mount namespace: /persistent would be mounted where nobody sees it
    assert shell.DISK_TIMEOUT >= 900 and "RuntimeMaxSec=900\n" in service


def test_serve_answers_an_os_error_in_one_line(tmp_path: Path) -> None:
    """A device that cannot be read (here: none at all) is an answer, not a traceback."""
    out = io.StringIO()
    bd.serve(bd.Disk(tmp_path, device=tmp_path / "gone"), io.BytesIO(b"initialize\npw\n"), out)
    answer = json.loads(out.getvalue())
    assert answer["rc"] == 1 and answer["out"].startswith("initialize: failed: No such file or directory")
