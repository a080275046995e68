"""Every built-in module and profile builds and boots (tests/builtin_images.py), each at the least memory its
manifest records: that figure is what `sealbox run` defaults to and refuses to go below."""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from builtin_images import CASES, image
from sealbox.formats.compress import zstd_decompress

pytestmark = pytest.mark.integration
KEYS = ["default", *CASES]


def _boot_at_min(img: Path, tmp_path: Path, timeout: float = 300) -> tuple[int, float]:
    """QEMU microvm/TCG, 2 vCPUs, the decompressed initramfs (as `sealbox run` boots it), -m at the recorded
    minimum; returns (MiB, seconds to SEALBOX-READY)."""
    m = json.loads((img / "manifest.json").read_text())
    mib = m["min_memory_mib"]["initrd"]
    plain = tmp_path / "initrd.cpio"
    plain.write_bytes(zstd_decompress(img / m["boot"]["initrd"]))
    khz = next((int(float(line.split(":")[1]) * 1000) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("cpu MHz")), 2000000)
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", f"{mib}M", "-smp", "2", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot", "-kernel", str(img / m["boot"]["vmlinuz"]),
            "-initrd", str(plain), "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-device,rng=rng0",
            "-append", " ".join(m["kernel"]["cmdline"]) + f" tsc_early_khz={khz}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = b""
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            if select.select([proc.stdout], [], [], 1.0)[0]:
                out += os.read(proc.stdout.fileno(), 65536)
                if b"SEALBOX-READY" in out or b"Initramfs unpacking failed" in out or b"Kernel panic" in out:
                    break
    finally:
        proc.kill()
        proc.wait(10)
    tail = [line for line in out.decode(errors="replace").splitlines() if line.strip()][-6:]
    assert b"SEALBOX-READY" in out, f"{img.name} did not boot in its recorded minimum of {mib} MiB: {tail}"
    return mib, time.monotonic() - t0


@pytest.mark.boot
@pytest.mark.parametrize("key", KEYS)
def test_builds_and_boots_in_its_recorded_minimum(key: str, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    img = image(key)
    m = json.loads((img / "manifest.json").read_text())
    assert set(m["min_memory_mib"]) == {"initrd", "disk"} and 64 < m["min_memory_mib"]["disk"] < m["min_memory_mib"]["initrd"]
    mib, seconds = _boot_at_min(img, tmp_path)
    print(f"{key}: ready in {mib} MiB after {seconds:.1f}s")


def test_profiles_did_what_they_say() -> None:
    dev = json.loads((image("profile-devtools") / "manifest.json").read_text())
    assert "dev" in dev["spec"]["users"] and {"git", "curl", "apt"} <= {p["name"] for p in dev["packages"]}
    assert dev["fragments"][-1] == "built-in profile devtools"
    tdx = json.loads((image("profile-tdx") / "manifest.json").read_text())
    assert tdx["kernel"]["version"].startswith("6.12") and "tdx_guest" in tdx["kernel"]["modules"]
    assert "p-tdx.efi" in tdx["artifacts"]
    bob = json.loads((image("readme-azure-devtools") / "manifest.json").read_text())
    assert bob["profiles"] == ["edge", "azure", "devtools"] and bob["kernel"]["version"].startswith("6.12")
    assert {"hv_netvsc", "hv_storvsc"} <= set(bob["kernel"]["modules"]) and bob["spec"]["cloud"]["providers"] == ["azure"]
    assert "dev" in bob["spec"]["users"] and 8080 in bob["spec"]["hardening"]["firewall_allow_tcp"]
