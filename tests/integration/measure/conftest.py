"""Fixtures for measure/UKI integration tests: real Debian kernel, busybox initrd, OVMF, QEMU.

Debian packages are fetched with `apt-get download` into a cache (SEALBOX_TEST_CACHE, default
/var/cache/sealbox-test) and unpacked with `dpkg-deb -x`; nothing is installed on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sealbox.build.formats.uki import build_uki

CACHE = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test"))
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
MARKER = "SEALBOX-UKI-BOOT-OK"
CMDLINE = "console=ttyS0"

INIT = f"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
echo "SEALBOX-CMDLINE $(/bin/busybox cat /proc/cmdline)"
for p in 4 9 11 12; do
  echo "SEALBOX-PCR $p $(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$p 2>/dev/null)"
done
/bin/busybox mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
if [ -r /sys/kernel/security/tpm0/binary_bios_measurements ]; then
  echo SEALBOX-EVENTLOG-BEGIN
  /bin/busybox base64 /sys/kernel/security/tpm0/binary_bios_measurements
  echo SEALBOX-EVENTLOG-END
fi
echo {MARKER}
/bin/busybox poweroff -f
"""


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def debian_package(name: str) -> Path:
    """Unpacked contents of Debian package `name` (downloaded once into the cache)."""
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        if shutil.which("apt-get") is None:
            pytest.skip("apt-get not available to download test packages")
        r = subprocess.run(["apt-get", "download", name], cwd=debs, capture_output=True, text=True, timeout=300)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if r.returncode != 0 or not found:
            pytest.skip(f"cannot download Debian package {name}: {r.stderr.strip()[-200:]}")
    deb = found[-1]
    dest = CACHE / "extract" / deb.stem
    if not (dest / ".done").exists():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        r = _run(["dpkg-deb", "-x", str(deb), str(dest)])
        if r.returncode != 0:
            pytest.fail(f"dpkg-deb -x {deb} failed: {r.stderr}")
        (dest / ".done").touch()
    return dest


@pytest.fixture(scope="session")
def cloud_kernel() -> tuple[Path, str]:
    """(vmlinuz, kernel release) of the package linux-image-cloud-amd64 depends on."""
    r = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
    deps = [ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines() if ln.strip().startswith("Depends:")]
    images = [d for d in deps if d.startswith("linux-image-")]
    if not images:
        pytest.skip("apt-cache does not know linux-image-cloud-amd64 (run apt-get update)")
    root = debian_package(images[0])
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    assert vmlinuz, f"no vmlinuz in {images[0]}"
    return vmlinuz[-1], vmlinuz[-1].name.removeprefix("vmlinuz-")


@pytest.fixture(scope="session")
def busybox_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uncompressed newc cpio with static busybox and an /init that prints markers and powers off."""
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    bb = debian_package("busybox-static") / "bin" / "busybox"
    root = tmp_path_factory.mktemp("initrd-root")
    for d in ("bin", "dev", "proc", "sys"):
        (root / d).mkdir()
    shutil.copy(bb, root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    out = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    r = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
        cwd=root, input=("\n".join(names) + "\n").encode(), capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out.write_bytes(r.stdout)
    return out


@pytest.fixture(scope="session")
def test_uki(tmp_path_factory: pytest.TempPathFactory, cloud_kernel: tuple[Path, str], busybox_initrd: Path) -> tuple[Path, dict]:
    if not STUB.exists():
        pytest.skip(f"{STUB} missing (apt-get install systemd-boot-efi)")
    vmlinuz, release = cloud_kernel
    out = tmp_path_factory.mktemp("uki") / "test.efi"
    osrel = b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="sealbox test"\n'
    facts = build_uki(STUB, vmlinuz, busybox_initrd, CMDLINE, osrel, release, out)
    return out, facts
