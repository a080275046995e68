"""loader.cpio.zst: a tiny initramfs for rootfs=disk boots.

The Debian kernel has ext4 built in but virtio as modules, so something must load virtio_blk before
the root disk can be mounted. This loader is busybox-static (from the archive, pinned in the lock),
the virtio modules, and a /init that mounts the root disk read-only and switches to its systemd.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from sealbox.builder.kernel import KernelFiles, load_order, read_module
from sealbox.formats.compress import zstd_writer
from sealbox.formats.cpio import write_cpio
from sealbox.util.run import run

LOADER_MODULES = ["virtio_mmio", "virtio_pci", "virtio_blk"]
APPLETS = ["sh", "mount", "umount", "mkdir", "insmod", "switch_root", "sleep", "cat", "echo"]

INIT = """#!/bin/sh
# sealbox loader: load virtio, mount the read-only root disk, hand over to its init.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
root=/dev/vda
for arg in $(cat /proc/cmdline); do
	case $arg in root=/dev/*) root=${arg#root=} ;; esac
done
for m in $(cat /etc/modules.order); do insmod "/modules/$m" 2>/dev/null; done
i=0
while [ ! -b "$root" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
if ! mount -t ext4 -o ro "$root" /newroot; then
	echo "sealbox loader: cannot mount $root read-only" > /dev/console
	sleep 2
	echo o > /proc/sysrq-trigger
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
"""


def build_loader(busybox_deb: Path, kernel: KernelFiles, work: Path, out: Path, epoch: int, level: int) -> None:
    root = work / "loader"
    bb = work / "busybox-deb"
    run(["dpkg-deb", "-x", busybox_deb, bb])
    for d in ("bin", "proc", "sys", "dev", "newroot", "modules", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bb / "bin/busybox", root / "bin/busybox")
    os.chmod(root / "bin/busybox", 0o755)
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    names = []
    for mod in load_order(LOADER_MODULES, kernel.modules_root):
        # busybox insmod takes plain .ko only; newer kernels ship .ko.xz / .ko.zst
        name = mod.name.split(".ko")[0] + ".ko"
        (root / "modules" / name).write_bytes(read_module(mod))
        names.append(name)
    (root / "etc/modules.order").write_text("\n".join(names) + "\n")
    os.mknod(root / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))  # init's stdio before devtmpfs
    (root / "init").write_text(INIT)
    os.chmod(root / "init", 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            os.utime(os.path.join(dirpath, n), (epoch, epoch), follow_symlinks=False)
    with zstd_writer(out, level) as w:
        write_cpio(root, w, epoch)
