"""Helpers for measure/UKI integration tests: Debian packages from a cache, constants, the test /init.

Debian packages are fetched with `apt-get download` into a cache (SEALBOX_TEST_CACHE, default
/var/cache/sealbox-test) and unpacked with `dpkg-deb -x`; nothing is installed on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

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
