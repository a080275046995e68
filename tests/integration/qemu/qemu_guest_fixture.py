"""A tiny test guest: Debian's 6.1 cloud kernel + a busybox-static initramfs (built here, cached).

The packages come from the Debian archive via `apt-get download` into SEALBOX_TEST_CACHE
(default /var/cache/sealbox-test/qemu) and are unpacked with `dpkg-deb -x`. The initramfs /init
loads the virtio modules (order from FACTS.md), configures eth0 from the kernel `ip=` argument
(Debian kernels ignore it themselves), prints MARKER, prints the instance disk's first line, serves
HTTP on port 8080 and powers off on an ACPI power-button press.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MARKER = "SEALBOX-TEST-GUEST-UP"
HTTP_BODY = "sealbox-guest-http-ok"
HTTP_PORT = 8080
RW_MAGIC = b"SEALBOX-RW-DISK"  # a disk starting with this gets GUEST_WROTE written at offset 512
GUEST_WROTE = b"WRITTEN-BY-GUEST"
MODULES = [  # virtio needs virtio_ring's symbols; net_failover needs failover
    "kernel/drivers/virtio/virtio_ring.ko",
    "kernel/drivers/virtio/virtio.ko",
    "kernel/drivers/virtio/virtio_mmio.ko",
    "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
    "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
    "kernel/drivers/virtio/virtio_pci.ko",
    "kernel/net/core/failover.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/input/evdev.ko",
    "kernel/drivers/acpi/button.ko",
]

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /www /etc
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in {' '.join(Path(m).name for m in MODULES)}; do insmod /lib/modules/$m 2>/dev/null || echo "insmod $m failed"; done
ipa=$(sed -n 's/.*[[:space:]]ip=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
gip=$(echo "$ipa" | cut -d: -f1)
gmask=$(echo "$ipa" | cut -d: -f4)
ip link set lo up
ifconfig eth0 "$gip" netmask "$gmask" up
echo "{HTTP_BODY}" > /www/index.html
httpd -p {HTTP_PORT} -h /www
for ev in /sys/class/input/event*; do
  if grep -q "Power Button" $ev/device/name 2>/dev/null; then
    (head -c 1 /dev/input/$(basename $ev) >/dev/null && echo "POWER BUTTON" && poweroff -f) &
  fi
done
sleep 0.2
for d in /dev/vd?; do
  echo "DISK $d $(head -c 19 $d)"
  if [ "$(head -c {len(RW_MAGIC)} $d)" = "{RW_MAGIC.decode()}" ]; then
    printf '{GUEST_WROTE.decode()}' | dd of=$d bs=512 seek=1 conv=notrunc 2>/dev/null && sync && echo "WROTE $d"
  fi
done
echo "{MARKER} $gip"
while true; do sleep 3600; done
"""


@dataclass(frozen=True)
class Guest:
    kernel: Path
    initrd: Path

    def uki(self, cmdline: str, out: Path) -> Path:
        return build_uki(self.kernel, self.initrd, cmdline, out)


def cache_dir() -> Path:
    return Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "qemu"


def _sh(argv: list[str], cwd: Path | None = None) -> str:
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True, timeout=300).stdout


def _kernel_package() -> str:
    """The real image package behind Debian's linux-image-cloud-amd64 metapackage (6.1.x)."""
    for line in _sh(["apt-cache", "depends", "linux-image-cloud-amd64"]).splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-6.1"):
            return line.split()[1]
    raise RuntimeError("apt-cache does not know linux-image-cloud-amd64 (run apt-get update)")


def _download(pkg: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    found = sorted(into.glob(f"{pkg}_*.deb"))
    if not found:
        _sh(["apt-get", "download", pkg], cwd=into)
        found = sorted(into.glob(f"{pkg}_*.deb"))
    return found[-1]


def build_guest() -> Guest:
    """Build (or reuse) the cached test guest; skips the test when the archive is unreachable."""
    for tool in ("apt-get", "dpkg-deb", "cpio"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    root = cache_dir()
    out = root / "guest"
    if (out / "initrd.cpio").is_file() and (out / "vmlinuz").is_file():
        return Guest(out / "vmlinuz", out / "initrd.cpio")
    try:
        kpkg = _kernel_package()
        kdeb = _download(kpkg, root / "debs")
        bdeb = _download("busybox-static", root / "debs")
    except (subprocess.CalledProcessError, RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot fetch the test guest packages from the Debian archive: {e}")
    ex = root / "extract"
    shutil.rmtree(ex, ignore_errors=True)
    ex.mkdir(parents=True)
    _sh(["dpkg-deb", "-x", str(kdeb), str(ex / "kernel")])
    _sh(["dpkg-deb", "-x", str(bdeb), str(ex / "busybox")])
    (vmlinuz,) = (ex / "kernel" / "boot").glob("vmlinuz-*")
    (moddir,) = (ex / "kernel" / "lib" / "modules").iterdir()
    tree = root / "initrd-tree"
    shutil.rmtree(tree, ignore_errors=True)
    (tree / "bin").mkdir(parents=True)
    (tree / "lib" / "modules").mkdir(parents=True)
    shutil.copy2(ex / "busybox" / "bin" / "busybox", tree / "bin" / "busybox")
    for m in MODULES:
        shutil.copy2(moddir / m, tree / "lib" / "modules" / Path(m).name)
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    tmp = out.with_name("guest.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    names = subprocess.run(["find", ".", "-mindepth", "1"], cwd=tree, check=True, capture_output=True).stdout
    names = b"\n".join(sorted(names.split())) + b"\n"
    with open(tmp / "initrd.cpio", "wb") as f:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=tree, input=names, stdout=f, check=True)
    shutil.copy2(vmlinuz, tmp / "vmlinuz")
    for p in (tmp / "initrd.cpio", tmp / "vmlinuz"):
        p.chmod(0o644)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return Guest(out / "vmlinuz", out / "initrd.cpio")


STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def build_uki(kernel: Path, initrd: Path, cmdline: str, out: Path) -> Path:
    """A UKI: systemd's EFI stub + .cmdline/.linux/.initrd sections placed after the stub's last one."""
    if not STUB.is_file() or shutil.which("objcopy") is None or shutil.which("objdump") is None:
        pytest.skip("systemd-boot-efi (linuxx64.efi.stub) and binutils are needed to build a UKI")
    headers = _sh(["objdump", "-h", str(STUB)]).splitlines()
    align = int(next(line.split()[1] for line in _sh(["objdump", "-p", str(STUB)]).splitlines() if line.startswith("SectionAlignment")), 16)
    rows = [line.split() for line in headers if line.strip()[:1].isdigit()]
    end = max(int(r[3], 16) + int(r[2], 16) for r in rows)  # VMA + size
    cmd_file = out.with_suffix(".cmdline")
    cmd_file.write_text(cmdline)
    argv = ["objcopy"]
    for name, path in ((".cmdline", cmd_file), (".linux", kernel), (".initrd", initrd)):
        end = (end + align - 1) // align * align
        argv += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={end:#x}"]
        end += path.stat().st_size
    _sh([*argv, str(STUB), str(out)])
    out.chmod(0o644)
    return out
