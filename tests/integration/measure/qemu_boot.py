"""Boot an EFI image under QEMU TCG + OVMF (optionally with a swtpm TPM 2.0) and capture the serial console."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def _wait_for(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def boot_uki(uki: Path | None, *, timeout: float = 180, tpm: bool = False, memory: int = 512,
             extra_args: list[str] | None = None) -> str:
    """Run `qemu -kernel uki` (or, with uki=None, boot from `extra_args` disks) until the guest powers
    off or `timeout` passes; return the console text."""
    with tempfile.TemporaryDirectory(prefix="sealbox-boot-") as td:
        tmp = Path(td)
        vars_copy = tmp / "vars.fd"
        shutil.copy(OVMF_VARS, vars_copy)
        argv = [
            "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", str(memory), "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-monitor", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
        ]
        argv += ["-kernel", str(uki)] if uki is not None else []
        argv += extra_args or []
        swtpm = None
        if tpm:
            sock = tmp / "swtpm.sock"
            (tmp / "tpmstate").mkdir()
            swtpm = subprocess.Popen(
                ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp / 'tpmstate'}",
                 "--ctrl", f"type=unixio,path={sock}", "--flags", "not-need-init"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if not _wait_for(sock, 10):
                swtpm.kill()
                swtpm.wait(5)
                raise RuntimeError("swtpm did not create its control socket within 10 s")
            argv += ["-chardev", f"socket,id=chrtpm,path={sock}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                     "-device", "tpm-tis,tpmdev=tpm0"]
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
            out = proc.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace") + "\n[sealbox test: QEMU timed out]\n"
        finally:
            if swtpm is not None:
                swtpm.send_signal(signal.SIGTERM)
                try:
                    swtpm.wait(10)
                except subprocess.TimeoutExpired:
                    swtpm.kill()
                    swtpm.wait(5)
        return out


def console_pcrs(console: str) -> dict[int, str]:
    pcrs = {}
    for line in console.splitlines():
        parts = line.strip().split()
        if len(parts) == 3 and parts[0] == "SEALBOX-PCR":
            pcrs[int(parts[1])] = parts[2].lower()
    return pcrs
