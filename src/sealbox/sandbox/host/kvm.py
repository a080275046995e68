"""Is KVM usable here? Opening /dev/kvm is not enough: on some hosts a vCPU never makes progress.

The probe runs a 5-byte real-mode guest (`mov al,0x5a; out 0xe9,al; hlt`) in a forked child. The
child only reports success if KVM_RUN returns KVM_EXIT_IO with that port and value. A child that is
still spinning inside KVM_RUN at the deadline is SIGKILLed and the answer is "not functional", so
callers can fall back to TCG with a warning instead of starting a VM that never boots.

The answer is cached per boot (boot_id + whether /dev/kvm exists), because the probe costs up to
`timeout` seconds when KVM is broken and `sealbox run` should not pay it every time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from sealbox.errors import SandboxError
from sealbox.util import atomic
from sealbox.util.pipes import read_until_eof

KVM_DEV = Path("/dev/kvm")
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
CACHE_NAME = "kvm-probe.json"

# ioctl numbers from <linux/kvm.h> (KVMIO = 0xAE); checked against the header with a C program.
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46  # _IOW(KVMIO, 0x46, struct kvm_userspace_memory_region /*32*/)
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82  # struct kvm_regs: 18 x u64 = 144 bytes
KVM_GET_SREGS = 0x8138AE83  # struct kvm_sregs: 312 bytes
KVM_SET_SREGS = 0x4138AE84
KVM_API_VERSION = 12
KVM_EXIT_IO = 2
KVM_EXIT_IO_OUT = 1

# Guest memory layout (guest-physical): real-mode code, long-mode page tables and code.
GUEST_MEM = 0x200000
REAL_CODE = 0x1000
PML4, PDPT, PD = 0x2000, 0x3000, 0x4000
LONG_CODE = 0x6000
RATE_CODE, SPEED_CODE = 0x7000, 0x8000
RATE_LOOPS = 100_000  # measured for the report only
SPEED_LOOPS = 20_000_000  # ~10-40 ms on working KVM; minutes on hosts where every instruction traps


def loop_code(iterations: int) -> bytes:
    """64-bit: mov ecx, N; 1: dec ecx; jnz 1b; then the probe's port write and hlt."""
    return b"\xb9" + struct.pack("<I", iterations) + b"\xff\xc9\x75\xfc" + GUEST_CODE
PROBE_PORT = 0xE9
PROBE_VALUE = 0x5A
GUEST_CODE = bytes([0xB0, PROBE_VALUE, 0xE6, PROBE_PORT, 0xF4])  # mov al,imm8; out imm8,al; hlt

# struct kvm_run offsets: exit_reason (u32) at 8; the io exit union member starts at 32:
# u8 direction, u8 size, u16 port, u32 count, u64 data_offset.
RUN_EXIT_REASON = 8
RUN_IO = 32
# struct kvm_sregs: 8 x kvm_segment (24 bytes; cs first), gdt, idt (16 each), then cr0, cr2, cr3, cr4, cr8, efer.
SREGS_CS = 0
SREGS_CR0 = 224
SREGS_CR3 = 240
SREGS_EFER = 264


class KvmStatus(BaseModel):
    present: bool  # /dev/kvm exists
    functional: bool  # a vCPU ran guest code and exited to userspace as expected
    api_version: int | None = None
    detail: str  # one line: what was found
    elapsed_s: float = 0.0
    cached: bool = False

    @property
    def accel(self) -> Literal["kvm", "tcg"]:
        return "kvm" if self.functional else "tcg"

    @property
    def summary(self) -> str:
        if self.functional:
            return f"KVM functional (API {self.api_version})"
        if not self.present:
            return "KVM not available (/dev/kvm missing), TCG will be used"
        return f"KVM not functional, TCG will be used: {self.detail}"


def _ioctl(fd: int, req: int, arg: int | bytes | bytearray = 0) -> int:
    if isinstance(arg, bytearray):  # filled in place; the result is the ioctl's own return value
        return int(fcntl.ioctl(fd, req, arg, True))
    if isinstance(arg, bytes):  # the kernel only reads it; Python hands back a copy, not a status (failure raises)
        fcntl.ioctl(fd, req, arg)
        return 0
    return fcntl.ioctl(fd, req, arg)


def _seg(selector: int, type_: int, long: int, db: int) -> bytes:
    # struct kvm_segment: base, limit, selector, type, present, dpl, db, s, l, g, avl, unusable, padding
    return struct.pack("=QIHBBBBBBBBBB", 0, 0xFFFFFFFF, selector, type_, 1, 0, db, 1, long, 1, 0, 0, 0)


def _setup_long_mode(mem: mmap.mmap, sregs: bytearray) -> None:
    """Identity-map the first 2 MiB with one large page and enter 64-bit mode directly via sregs."""
    struct.pack_into("=Q", mem, PML4, PDPT | 0x3)  # present | writable
    struct.pack_into("=Q", mem, PDPT, PD | 0x3)
    struct.pack_into("=Q", mem, PD, 0x83)  # present | writable | 2 MiB page at 0
    code = _seg(8, 11, 1, 0)  # execute/read, accessed, 64-bit
    data = _seg(16, 3, 0, 1)  # read/write, accessed
    for i, seg in enumerate((code, data, data, data, data, data)):  # cs ds es fs gs ss
        sregs[i * 24 : (i + 1) * 24] = seg
    struct.pack_into("=Q", sregs, SREGS_CR0, 0x80050033)  # PG | AM | WP | NE | ET | MP | PE
    struct.pack_into("=QQ", sregs, SREGS_CR3, PML4, 1 << 5)  # cr3, cr4 = PAE
    struct.pack_into("=Q", sregs, SREGS_EFER, 0x500)  # LMA | LME


def _run_vcpu(kvm: int, vm: int, index: int, mem: mmap.mmap, rip: int, long_mode: bool) -> str | None:
    """Run one vCPU until its first exit; None if it did the expected port write, else why not."""
    vcpu = _ioctl(vm, KVM_CREATE_VCPU, index)
    run_size = _ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE)
    run = mmap.mmap(vcpu, run_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    sregs = bytearray(312)
    _ioctl(vcpu, KVM_GET_SREGS, sregs)
    if long_mode:
        _setup_long_mode(mem, sregs)
    else:
        struct.pack_into("=QIH", sregs, SREGS_CS, 0, 0xFFFF, 0)  # real mode: cs.base = 0, selector 0
    _ioctl(vcpu, KVM_SET_SREGS, bytes(sregs))
    regs = bytearray(144)
    struct.pack_into("=QQ", regs, 128, rip, 0x2)  # rip, rflags (bit 1 is reserved-set)
    _ioctl(vcpu, KVM_SET_REGS, bytes(regs))
    _ioctl(vcpu, KVM_RUN, 0)
    reason = struct.unpack_from("=I", run, RUN_EXIT_REASON)[0]
    if reason != KVM_EXIT_IO:
        return f"vCPU exited with reason {reason}, expected KVM_EXIT_IO"
    direction, size, port, count, off = struct.unpack_from("=BBHIQ", run, RUN_IO)
    value = run[off] if off < run_size else -1
    if (direction, size, port, count, value) != (KVM_EXIT_IO_OUT, 1, PROBE_PORT, 1, PROBE_VALUE):
        return f"unexpected I/O exit port={port:#x} value={value:#x}"
    return None


def _child_probe(dev: str, report: Callable[[dict[str, object]], None]) -> None:
    """Runs in the forked child; reports each stage. May block forever inside KVM_RUN."""
    kvm = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
    api = _ioctl(kvm, KVM_GET_API_VERSION)
    if api != KVM_API_VERSION:
        return report({"stage": "api", "ok": False, "api": api, "detail": f"unexpected KVM API version {api}"})
    vm = _ioctl(kvm, KVM_CREATE_VM, 0)
    mem = mmap.mmap(-1, GUEST_MEM, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    mem[REAL_CODE : REAL_CODE + len(GUEST_CODE)] = GUEST_CODE
    mem[LONG_CODE : LONG_CODE + len(GUEST_CODE)] = GUEST_CODE  # same bytes decode the same in 64-bit mode
    for at, loops in ((RATE_CODE, RATE_LOOPS), (SPEED_CODE, SPEED_LOOPS)):
        mem[at : at + len(loop_code(loops))] = loop_code(loops)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    region = struct.pack("=IIQQQ", 0, 0, 0, GUEST_MEM, addr)  # slot, flags, gpa, size, uaddr
    _ioctl(vm, KVM_SET_USER_MEMORY_REGION, region)
    # Opening /dev/kvm and running a few instructions is not enough: on some nested hosts every guest
    # instruction traps (~1M instructions/s), which is slower than TCG. So the last stage is a loop that
    # working KVM finishes in tens of milliseconds and such hosts cannot finish before the deadline.
    stages = (("real", REAL_CODE, False), ("long", LONG_CODE, True), ("rate", RATE_CODE, True), ("speed", SPEED_CODE, True))
    for index, (stage, rip, long_mode) in enumerate(stages):
        t0 = time.monotonic()
        err = _run_vcpu(kvm, vm, index, mem, rip, long_mode)
        took = time.monotonic() - t0
        report({"stage": stage, "ok": err is None, "api": api, "took": took, "detail": err or f"{stage} stage ran"})
        if err:
            return None
    return None


def _run_probe(dev: Path, timeout: float) -> KvmStatus:
    start = time.monotonic()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's stack
        try:
            os.close(rfd)

            def report(msg: dict[str, object]) -> None:
                os.write(wfd, json.dumps(msg).encode() + b"\n")

            try:
                _child_probe(str(dev), report)
            except OSError as e:
                report({"stage": "setup", "ok": False, "api": None, "detail": f"{e.strerror or e} during KVM setup"})
        finally:
            os._exit(0)
    os.close(wfd)
    try:
        data = read_until_eof(rfd, start + timeout)
    finally:
        os.close(rfd)
        _reap(pid)
    elapsed = round(time.monotonic() - start, 3)
    stages = [json.loads(line) for line in data.splitlines() if line.strip()]
    api = next((s["api"] for s in stages if s.get("api") is not None), None)
    failed = next((s for s in stages if not s["ok"]), None)
    if failed:
        return KvmStatus(present=True, functional=False, api_version=api, detail=str(failed["detail"]), elapsed_s=elapsed)
    rate = next((RATE_LOOPS / max(s["took"], 1e-9) for s in stages if s["stage"] == "rate"), None)
    rate_txt = f"; guest loop rate {rate / 1e6:.1f}M iterations/s" if rate else ""
    if [s["stage"] for s in stages] == ["real", "long", "rate", "speed"]:
        return KvmStatus(present=True, functional=True, api_version=api, elapsed_s=elapsed,
                         detail=f"vCPUs ran real- and 64-bit-mode guest code{rate_txt}")
    ran = [s["stage"] for s in stages]
    if "long" in ran:
        what = f"vCPUs run but far too slowly: a {SPEED_LOOPS // 1_000_000}M-iteration guest loop did not finish in {timeout:g}s{rate_txt}"
    else:
        what = f"no vCPU exit within {timeout:g}s after stages {ran or 'none'} (KVM_RUN never returned)"
    return KvmStatus(present=True, functional=False, api_version=api, elapsed_s=elapsed, detail=what)


def _reap(pid: int) -> None:
    """Kill the probe child (harmless if it already exited) and reap it, bounded in time."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(200):  # a vCPU thread leaves KVM_RUN on a fatal signal quickly; bound it anyway
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.01)


def _cache_key(dev: Path) -> str:
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        boot = "unknown"
    return f"{boot}:{'kvm' if dev.exists() else 'nokvm'}"


def probe_kvm(
    timeout: float = 2.0,
    *,
    cache_dir: Path | None = None,
    refresh: bool = False,
    dev: Path = KVM_DEV,
) -> KvmStatus:
    """Tell "KVM present and functional" from "present but vCPUs never run" (see module doc).

    With `cache_dir`, a result from the same boot is reused unless `refresh`.
    """
    key = _cache_key(dev)
    cache = cache_dir / CACHE_NAME if cache_dir else None
    if cache and not refresh:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key:
                return KvmStatus.model_validate({**saved["status"], "cached": True})
        except (OSError, ValueError, KeyError, ValidationError):
            pass  # missing or stale cache: probe again
    if not dev.exists():
        status = KvmStatus(present=False, functional=False, detail=f"{dev} does not exist")
    else:
        try:
            os.close(os.open(dev, os.O_RDWR | os.O_CLOEXEC))
        except OSError as e:
            status = KvmStatus(present=True, functional=False, detail=f"cannot open {dev}: {e.strerror}")
        else:
            status = _run_probe(dev, timeout)
    if cache:
        try:
            atomic.write_json(cache, {"key": key, "status": status.model_dump(exclude={"cached"})}, mode=0o600)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
    return status


def kvm_status(state_dir: Path, timeout: float = 2.0, *, refresh: bool = False) -> KvmStatus:
    """The probe as `run` and `doctor` use it: cached under <state_dir>/cache for this boot."""
    return probe_kvm(timeout, cache_dir=state_dir / "cache", refresh=refresh)


def choose_accel(requested: Literal["auto", "kvm", "tcg"], status: KvmStatus) -> tuple[Literal["kvm", "tcg"], str | None]:
    """Accelerator for `run`, plus a warning to show when auto falls back to TCG."""
    if requested == "tcg":
        return "tcg", None
    if requested == "kvm":
        if not status.functional:
            raise SandboxError(f"--accel kvm was requested but {status.summary}", hint="use --accel tcg or --accel auto")
        return "kvm", None
    if status.functional:
        return "kvm", None
    return "tcg", f"{status.summary} (guests run much slower under TCG)"
