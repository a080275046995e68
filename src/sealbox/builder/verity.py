"""`output.disk_root = "verity"`: the disk boots from a read-only root partition verified by dm-verity.

The disk then carries, besides the ESP, the image's rootfs.ext4 as an x86-64 root partition and its
dm-verity hash tree as the matching verity partition (Discoverable Partitions types; partition GUIDs
are the first and last 128 bits of the root hash, as systemd-repart makes them). The ESP's UKI is not
<name>.efi but <name>.disk.efi: the same stub and kernel with a small initramfs (busybox, the image's
own dmsetup and its libraries, the virtio and dm-verity modules) and the command line
`... roothash=<hex> sealbox.verity=<data blocks>:<salt>` — measured, so the root hash is part of the
boot measurements. The initramfs maps the root through dm-verity and switches to it; any block whose
hash does not match reads as an I/O error.

The tree is made by `veritysetup format` (cryptsetup-bin) with a salt and superblock UUID derived from
rootfs.ext4's digest: two runs give the same bytes. dmsetup comes from the image (packages.include =
["dmsetup"]), so it is pinned in the lock like every other package.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from sealbox.builder.kernel import KernelFiles, load_order, read_module
from sealbox.builder.strip import elf_needed, in_image
from sealbox.errors import BuildError
from sealbox.formats.compress import zstd_writer
from sealbox.formats.cpio import write_cpio
from sealbox.formats.uki import build_uki
from sealbox.util.digest import sha256_file
from sealbox.util.run import run

BLOCK = 4096
ROOT_LABEL = "root-x86-64"
VERITY_LABEL = "root-x86-64-verity"
HASH_FILE = "rootfs.verity"
MODULES = ["virtio_pci", "virtio_blk", "dm_mod", "dm_verity"]
APPLETS = ["sh", "mount", "umount", "mkdir", "insmod", "switch_root", "sleep", "cat", "echo", "grep", "ls"]
DMSETUP = "/usr/sbin/dmsetup"
LIB_SEARCH = ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib", "/lib"]

INIT = f"""#!/bin/sh
# sealbox verity loader: map the root partition through dm-verity (root hash from the measured command
# line), mount it read-only, hand over to its init. Any failure powers the VM off.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu
fail() {{ echo "sealbox verity loader: $1" > /dev/console; sleep 2; echo o > /proc/sysrq-trigger; sleep 10; }}
roothash=; params=
for arg in $(cat /proc/cmdline); do
	case $arg in roothash=*) roothash=${{arg#roothash=}} ;; sealbox.verity=*) params=${{arg#sealbox.verity=}} ;; esac
done
[ -n "$roothash" ] && [ -n "$params" ] || fail "no roothash= / sealbox.verity= on the command line"
for m in $(cat /etc/modules.order); do insmod "/modules/$m" 2>/dev/null; done
part() {{ for u in /sys/class/block/*/uevent; do grep -qx "PARTNAME=$1" "$u" && {{ d=${{u%/uevent}}; echo "${{d##*/}}"; return; }}; done; }}
i=0
while [ -z "$(part {VERITY_LABEL})" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
data=$(part {ROOT_LABEL}); hash=$(part {VERITY_LABEL})
[ -n "$data" ] && [ -n "$hash" ] || fail "no partitions named {ROOT_LABEL} and {VERITY_LABEL}"
blocks=${{params%%:*}}; salt=${{params#*:}}
/sbin/dmsetup --noudevsync --noudevrules create root --readonly \\
	--table "0 $((blocks * 8)) verity 1 /dev/$data /dev/$hash {BLOCK} {BLOCK} $blocks 1 sha256 $roothash $salt" \\
	|| fail "dm-verity setup of /dev/$data with /dev/$hash failed"
dm=; for n in /sys/block/dm-*; do [ "$(cat $n/dm/name)" = root ] && dm=${{n##*/}}; done
mount -t ext4 -o ro "/dev/$dm" /newroot || fail "cannot mount the verified root /dev/$dm"
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


@dataclass(frozen=True)
class VerityRoot:
    data: Path  # rootfs.ext4
    hash_tree: Path  # veritysetup's hash device image (superblock + tree)
    roothash: str
    salt: str
    data_blocks: int

    @property
    def cmdline_args(self) -> list[str]:
        return [f"roothash={self.roothash}", f"sealbox.verity={self.data_blocks}:{self.salt}"]

    @property
    def root_guid(self) -> uuid.UUID:
        return uuid.UUID(self.roothash[:32])

    @property
    def verity_guid(self) -> uuid.UUID:
        return uuid.UUID(self.roothash[32:64])


def hash_tree(rootfs: Path, out: Path) -> VerityRoot:
    """veritysetup format with a salt and UUID derived from the data: the same rootfs, the same tree."""
    size = rootfs.stat().st_size
    if size % BLOCK:
        raise BuildError(f"{rootfs.name} is not a multiple of {BLOCK} bytes")
    digest = sha256_file(rootfs)
    salt = hashlib.sha256(f"sealbox-verity-salt:{digest}".encode()).hexdigest()
    sb_uuid = uuid.UUID(bytes=hashlib.sha256(f"sealbox-verity-uuid:{digest}".encode()).digest()[:16], version=4)
    proc = run(["veritysetup", "format", f"--salt={salt}", f"--uuid={sb_uuid}", f"--data-block-size={BLOCK}",
                f"--hash-block-size={BLOCK}", "--hash=sha256", "--format=1", rootfs, out], what="veritysetup format")
    m = re.search(r"Root hash:\s*([0-9a-f]{64})", proc.stdout.decode(errors="replace"))
    if m is None:
        raise BuildError("veritysetup format printed no root hash")
    os.chmod(out, 0o644)
    return VerityRoot(rootfs, out, m.group(1), salt, size // BLOCK)


def _elf_closure(tree: Path, binary: str) -> dict[str, Path]:
    """{path in the image: file} for `binary`, its program interpreter and every DT_NEEDED library."""
    out: dict[str, Path] = {}
    todo = [binary, "/lib64/ld-linux-x86-64.so.2"]
    while todo:
        path = todo.pop()
        if path in out:
            continue
        real = in_image(tree, path)
        if real is None or not real.is_file():
            raise BuildError(f"the image has no {path}, which the verity root's initramfs needs",
                             hint='add "dmsetup" to packages.include (and keep its libraries: see strip.keep)')
        out[path] = real
        info = elf_needed(real.read_bytes())
        for lib in info[0] if info else []:
            found = next((f"{d}/{lib}" for d in LIB_SEARCH if (p := in_image(tree, f"{d}/{lib}")) is not None and p.is_file()), None)
            if found is None:
                raise BuildError(f"{path} needs {lib}, which the image does not have")
            todo.append(found)
    return out


def build_loader(tree: Path, busybox_deb: Path, kernel: KernelFiles, work: Path, out: Path, epoch: int, level: int) -> None:
    root = work / "verity-loader"
    bb = work / "verity-busybox"
    run(["dpkg-deb", "-x", busybox_deb, bb])
    for d in ("bin", "sbin", "proc", "sys", "dev", "newroot", "modules", "etc", "lib64", "lib/x86_64-linux-gnu"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bb / "bin/busybox", root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    for path, src in sorted(_elf_closure(tree, DMSETUP).items()):
        dest = root / "sbin/dmsetup" if path == DMSETUP else (
            root / "lib64" / Path(path).name if path.startswith("/lib64/") else root / "lib/x86_64-linux-gnu" / Path(path).name)
        shutil.copyfile(src, dest)
        os.chmod(dest, 0o755)
    names = []
    for mod in load_order(MODULES, kernel.modules_root):
        name = mod.name.split(".ko")[0] + ".ko"  # busybox insmod takes plain .ko
        (root / "modules" / name).write_bytes(read_module(mod))
        names.append(name)
    (root / "etc/modules.order").write_text("\n".join(names) + "\n")
    os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    (root / "init").write_text(INIT)
    os.chmod(root / "init", 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (epoch, epoch), follow_symlinks=False)
    with zstd_writer(out, level) as w:
        write_cpio(root, w, epoch)


def disk_uki(stub: Path, vmlinuz: Path, loader: Path, cmdline: list[str], verity: VerityRoot, osrel: bytes, uname: str,
             out: Path) -> None:
    """<name>.disk.efi: stub + kernel + the verity loader; the root hash on its measured command line."""
    args = [a for a in cmdline if not a.startswith(("root=", "roothash=", "sealbox.verity=")) and a not in ("ro", "rw")]
    build_uki(stub, vmlinuz, loader, " ".join([*args, *verity.cmdline_args]), osrel, uname, out)
