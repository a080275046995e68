"""Boot a disk image under QEMU TCG + OVMF (optionally Secure Boot with SMM, optionally a swtpm TPM) and
watch the serial console until one of the given markers appears; QEMU is killed then (no waiting for a
timeout once the outcome is known). Shared by the disk-format, Secure Boot and measurement tests."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_SECBOOT_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
READY = "SEALBOX-READY"
ACCESS_DENIED = "Access Denied"  # BdsDxe: failed to load Boot0001 ... : Access Denied


@dataclass
class Boot:
    console: str
    marker: str | None  # the marker that ended the boot, None on timeout/exit
    seconds: float


def _swtpm(tmp: Path) -> tuple[subprocess.Popen[bytes], list[str]]:
    sock = tmp / "swtpm.sock"
    (tmp / "tpmstate").mkdir()
    proc = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp / 'tpmstate'}", "--ctrl",
                             f"type=unixio,path={sock}", "--flags", "not-need-init"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(5)
            raise RuntimeError("swtpm did not create its control socket within 10 s")
        time.sleep(0.05)
    return proc, ["-chardev", f"socket,id=chrtpm,path={sock}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
                  "-device", "tpm-tis,tpmdev=tpm0"]


def boot_disk(disk: Path, fmt: str, *, markers: tuple[str, ...] = (READY,), timeout: float = 300, vars_fd: Path = OVMF_VARS,
              secure_boot: bool = False, tpm: bool = False, memory: int = 1024, stop_after: str | None = None) -> Boot:
    """Boot `disk` (format `fmt`: raw, qcow2, vpc) read-only as the first boot device; stop at the first
    of `markers` (or, with `stop_after`, at that string once a marker was seen) or after `timeout` s."""
    with tempfile.TemporaryDirectory(prefix="sealbox-ovmf-") as td:
        tmp = Path(td)
        vars_copy = tmp / "vars.fd"
        shutil.copyfile(vars_fd, vars_copy)
        code = OVMF_SECBOOT_CODE if secure_boot else OVMF_CODE
        machine = "q35,smm=on" if secure_boot else "q35"
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-M", machine, "-m", str(memory), "-smp", "2", "-nographic",
                "-no-reboot", "-nodefaults", "-no-user-config", "-serial", "stdio", "-monitor", "none"]
        if secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                 "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
                 "-drive", f"if=none,id=boot,file={disk},format={fmt},readonly=on",
                 "-device", "virtio-blk-pci,drive=boot,bootindex=0",
                 "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0"]
        swtpm = None
        if tpm:
            swtpm, tpm_args = _swtpm(tmp)
            argv += tpm_args
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        buf, found = b"", None
        try:
            while time.monotonic() - t0 < timeout:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    buf += chunk
                    text = buf.decode(errors="replace")
                    if found is None:
                        found = next((m for m in markers if m in text), None)
                    if found is not None and (stop_after is None or stop_after in text.split(found, 1)[1]):
                        break
                elif proc.poll() is not None:
                    break
        finally:
            seconds = time.monotonic() - t0
            proc.kill()
            proc.wait(10)
            if swtpm is not None:
                swtpm.send_signal(signal.SIGTERM)
                try:
                    swtpm.wait(10)
                except subprocess.TimeoutExpired:
                    swtpm.kill()
                    swtpm.wait(5)
        return Boot(buf.decode(errors="replace"), found, seconds)


def event_log(console: str, begin: str = "SEALBOX-EVENTLOG-BEGIN", end: str = "SEALBOX-EVENTLOG-END") -> list[tuple[int, int, str, bytes]]:
    """(pcr, event type, sha256 digest hex, event data) of the base64 TCG2 crypto-agile log a guest printed."""
    import base64
    import struct

    text = console.replace("\r", "")
    if begin + "\n" not in text:
        return []
    raw = base64.b64decode(text.split(begin + "\n", 1)[1].split(end, 1)[0])
    _, _, _, size = struct.unpack_from("<II20sI", raw, 0)  # the SHA-1 format Spec ID header event
    spec = raw[32:32 + size]
    sizes = {}
    for i in range(struct.unpack_from("<I", spec, 24)[0]):
        alg, dsize = struct.unpack_from("<HH", spec, 28 + 4 * i)
        sizes[alg] = dsize
    off, events = 32 + size, []
    while off + 12 <= len(raw):
        pcr, etype, count = struct.unpack_from("<III", raw, off)
        off += 12
        digests = {}
        for _ in range(count):
            alg = struct.unpack_from("<H", raw, off)[0]
            digests[alg] = raw[off + 2:off + 2 + sizes[alg]].hex()
            off += 2 + sizes[alg]
        esize = struct.unpack_from("<I", raw, off)[0]
        events.append((pcr, etype, digests.get(0x000B, ""), raw[off + 4:off + 4 + esize]))
        off += 4 + esize
    return events
