"""Run the real guest/files/instance.sh inside the real default image, without booting it.

In a private mount and network namespace (unshare): the image's rootfs.ext4 is mounted read-only as the root, a
tmpfs goes over /run, and /proc, /sys and /dev are small STAND-IN trees made by the test (the kernel command
line, cpuinfo, a writable hostname file, the block device as a plain file, eth0's sysfs entry and, for the TD
cases, a configfs-tsm report entry or a tdx_guest measurements file). eth0 is one end of a veth pair in the private
network namespace, so the image's own `ip` really configures it and the test reads the result back with the
host's `ip`. The script runs with the image's /bin/sh, coreutils and iproute2: nothing in the script is copied.
"""

from __future__ import annotations

import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from sealbox.guest import files as guest_files

DEFAULT_CMDLINE = "console=ttyS0 quiet"
CPUINFO = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu vme de pse tsc msr pae{td}\n\n"


@dataclass
class Guest:
    """What the stand-in /proc, /sys and /dev hold."""

    disk: bytes | None = None  # the instance disk (/dev/vdb); None: no disk
    cmdline: str = DEFAULT_CMDLINE
    td: bool = False  # the tdx_guest CPU flag
    tsm_outblob: bytes | None = None  # a configfs-tsm report entry whose outblob is this quote
    sysfs_mrconfigid: bytes | None = None  # Linux >= 6.16: /sys/class/misc/tdx_guest/measurements/mrconfigid
    extra: dict[str, bytes] = field(default_factory=dict)
    restore_disk: bytes | None = None  # then run again as the restore agent does (SEALBOX_RESTORE=1): the instance disk
    # now holds this (a loop device, so the script's blockdev --flushbufs is real) and says so by its serial


@dataclass
class Result:
    rc: int
    stderr: str
    files: dict[str, str]  # /run/sealbox/... and hostname, as the script left them
    addresses: list[str]  # eth0's IPv4 addresses (cidr)
    routes: list[str]
    resolv_link: str  # readlink /etc/resolv.conf in the image
    shadow: str  # /etc/shadow as the guest sees it after the script (a runtime copy bound over the image's, or that)
    shadow_bound: bool  # something is mounted over /etc/shadow
    image_shadow: str  # the image's own /etc/shadow (under any bind mount)
    shadow_modes: tuple[str, str]  # `stat -c '%a %u:%g'` of what the guest sees and of the image's file


def _stand_in(work: Path, g: Guest) -> None:
    proc, sys_, dev = work / "proc", work / "sys", work / "dev"
    (proc / "sys/kernel").mkdir(parents=True)
    (proc / "cmdline").write_text(g.cmdline + "\n")
    (proc / "cpuinfo").write_text(CPUINFO.format(td=" tdx_guest" if g.td else ""))
    (proc / "sys/kernel/hostname").write_text("localhost\n")
    (sys_ / "class/net/eth0").mkdir(parents=True)
    dev.mkdir()
    (dev / "null").write_bytes(b"")
    (sys_ / "block/vda").mkdir(parents=True)  # a disk that is not the instance disk comes first
    (dev / "vda").write_bytes(b"\x7fELF not an instance disk\n" + bytes(4000))
    if g.disk is not None:
        (sys_ / "block/vdb").mkdir(parents=True)
        (dev / "vdb").write_bytes(g.disk)
    if g.tsm_outblob is not None:
        entry = sys_ / "kernel/config/tsm/report/sealbox-instance"
        entry.mkdir(parents=True)
        (entry / "outblob").write_bytes(g.tsm_outblob)
    if g.sysfs_mrconfigid is not None:
        (sys_ / "class/misc/tdx_guest/measurements").mkdir(parents=True)
        (sys_ / "class/misc/tdx_guest/measurements/mrconfigid").write_bytes(g.sysfs_mrconfigid)
    for rel, data in g.extra.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(data)


def _restore_run(work: Path, root: Path) -> str:
    """The shell lines of a second run in restore mode (after a first that succeeded): the disk is a loop device."""
    q = shlex.quote
    return f"""
[ "$rc" = 0 ] || exit 3
loop=$(losetup --find --show --read-only {q(str(work / 'restore.img'))})
trap 'losetup -d "$loop"' EXIT
mount --bind "$loop" {q(str(root))}/dev/vdb
echo sealbox-instance > {q(str(work))}/sys/block/vdb/serial
mount -t proc proc {q(str(root))}/proc  # a booted guest's: umount reads it (the host name lands in this UTS namespace)
chroot {q(str(root))} env SEALBOX_RESTORE=1 /bin/sh /run/test/instance 2> {q(str(work))}/stderr || rc=$?
echo $rc > {q(str(work))}/rc
cat {q(str(root))}/proc/sys/kernel/hostname > {q(str(work))}/proc/sys/kernel/hostname
umount {q(str(root))}/proc
"""


def run_instance_sh(image: Path, work: Path, g: Guest) -> Result:
    """Run instance.sh as the image would at boot; `work` is an empty scratch directory."""
    work.mkdir(parents=True, exist_ok=True)
    _stand_in(work, g)
    if g.restore_disk is not None:
        (work / "restore.img").write_bytes(g.restore_disk.ljust(4096, b"\0"))
    script = work / "instance"
    script.write_bytes(guest_files.read("instance.sh"))
    root = work / "root"
    root.mkdir()
    q = shlex.quote
    inner = f"""
set -eu
mount --make-rprivate /
mount -o loop,ro {q(str(image / 'rootfs.ext4'))} {q(str(root))}
for d in proc sys dev; do mount --bind {q(str(work))}/$d {q(str(root))}/$d; done
mount -t tmpfs -o mode=0755 run {q(str(root))}/run
mkdir -p {q(str(root))}/run/test && cp {q(str(script))} {q(str(root))}/run/test/instance
ip link add eth0 type veth peer name peer0 && ip link set peer0 up
rc=0
chroot {q(str(root))} /bin/sh /run/test/instance 2> {q(str(work))}/stderr || rc=$?
echo $rc > {q(str(work))}/rc
{_restore_run(work, root) if g.restore_disk is not None else ""}
ip -4 -o addr show dev eth0 > {q(str(work))}/addr
ip -4 route show > {q(str(work))}/route
readlink {q(str(root))}/etc/resolv.conf > {q(str(work))}/resolv_link || true
cat {q(str(root))}/etc/shadow > {q(str(work))}/shadow
stat -c '%a %u:%g' {q(str(root))}/etc/shadow > {q(str(work))}/shadow_modes
if umount {q(str(root))}/etc/shadow 2>/dev/null; then echo yes > {q(str(work))}/shadow_bound; fi
cat {q(str(root))}/etc/shadow > {q(str(work))}/image_shadow
stat -c '%a %u:%g' {q(str(root))}/etc/shadow >> {q(str(work))}/shadow_modes
[ ! -d {q(str(root))}/run/sealbox ] || cp -a {q(str(root))}/run/sealbox {q(str(work))}/run-sealbox
"""
    proc = subprocess.run(["unshare", "--mount", "--net", "--uts", "--fork", "sh", "-c", inner], timeout=120, capture_output=True, text=True)
    if proc.returncode == 3:
        raise AssertionError(f"the first run failed: {(work / 'stderr').read_text()}")
    if proc.returncode != 0:
        raise AssertionError(f"setting up the chroot failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    left = work / "run-sealbox"
    files = {str(p.relative_to(left)): p.read_bytes().decode(errors="replace") for p in sorted(left.rglob("*")) if p.is_file()}
    files["hostname"] = (work / "proc/sys/kernel/hostname").read_text()
    return Result(
        rc=int((work / "rc").read_text()),
        stderr=(work / "stderr").read_text(),
        files=files,
        addresses=[line.split()[3] for line in (work / "addr").read_text().splitlines() if " inet " in line],
        routes=[line.strip() for line in (work / "route").read_text().splitlines()],
        resolv_link=(work / "resolv_link").read_text().strip(),
        shadow=(work / "shadow").read_text(),
        shadow_bound=(work / "shadow_bound").exists(),
        image_shadow=(work / "image_shadow").read_text(),
        shadow_modes=tuple((work / "shadow_modes").read_text().split("\n")[:2]),  # type: ignore[arg-type]
    )
