"""Boot a built image directly under QEMU TCG (microvm, serial console on stdout) until console markers appear.

No sandbox, network or jail: this checks what the image itself does at boot. Bounded in time; QEMU is killed at
the end whatever happens.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest

from sealbox.sandbox.vmm.qemu import host_tsc_khz


def boot_until(image: Path, markers: tuple[str, ...], timeout: float = 300, initrd: str = "initrd.cpio.zst",
               memory_mib: int = 512) -> list[str]:
    """Console lines up to the moment every marker has been seen at the start of some line."""
    manifest = json.loads((image / "manifest.json").read_text())
    cmdline = " ".join(manifest["kernel"]["cmdline"])
    tsc = host_tsc_khz()  # as sealbox's QEMU backend does: TCG's TSC calibration is otherwise slow and unreliable
    if tsc:
        cmdline += f" tsc_early_khz={tsc}"
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", str(memory_mib), "-smp", "2", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", str(image / manifest["boot"]["vmlinuz"]),
            "-initrd", str(image / initrd), "-append", cmdline]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    lines: list[str] = []
    buf = b""
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [d.decode(errors="replace").strip() for d in done]
            if all(any(line.startswith(m) for line in lines) for m in markers):
                return lines
    finally:
        proc.kill()
        proc.wait(10)
    missing = [m for m in markers if not any(line.startswith(m) for line in lines)]
    pytest.fail(f"{image.name}: no {missing} on the console within {timeout:.0f}s; tail: {lines[-10:]}")
