"""The Firecracker `--config-file` for a VmPlan (keys as in Firecracker's FullVmConfiguration).

Paths in the file are paths *inside the jail*. Every limit is checked here with a one-line error
before anything runs; the contract tests prove the result validates against the v1.16.1 swagger
definitions for many plans, and at run time it is validated again when a spec file is configured.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.model import RateLimit, VmPlan
from sealbox.sandbox.vmm.firecracker import jailer as J

IFACE_ID = "eth0"
DRIVE_ROOT = "rootfs"
DRIVE_INSTANCE = "instance"
MAX_VCPUS = 32  # MachineConfiguration.vcpu_count maximum
CMDLINE_MAX = 2048  # x86_64 CMDLINE_MAX_SIZE, including the "root=/dev/vda ro" Firecracker appends
_ROOT_SUFFIX = len(" root=/dev/vda ro")
_I64 = 2**63 - 1
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
# Firecracker on x86 reboots by exiting; the guest must panic -> reboot -> exit, on ttyS0.
_REQUIRED_ARGS = (("console=", "console=ttyS0"), ("reboot=", "reboot=k"), ("panic=", "panic=1"))


@dataclass(frozen=True)
class StagedFile:
    """One host file placed into the jail."""

    source: Path
    in_jail: str
    writable: bool  # the VMM writes it (an rw disk): must be the same inode, never a copy


def drive_id(index: int) -> str:
    return f"disk{index}"


def staged_files(plan: VmPlan) -> list[StagedFile]:
    """Kernel, initrd or root disk, instance disk and extra disks, at their fixed jail paths."""
    files = [StagedFile(plan.kernel, J.KERNEL, False)]
    if plan.spec.rootfs == "disk":
        if plan.rootfs is None:
            raise SandboxError("rootfs=disk needs the image's rootfs.ext4 but the plan has none", hint="rebuild the image with the ext4 format")
        files.append(StagedFile(plan.rootfs, J.ROOTFS, False))
    else:
        if plan.initrd is None:
            raise SandboxError("rootfs=initrd needs the image's initrd but the plan has none", hint="rebuild the image or use --rootfs disk")
        files.append(StagedFile(plan.initrd, J.INITRD, False))
    files.append(StagedFile(plan.instance_disk, J.INSTANCE_DISK, False))
    for i, disk in enumerate(plan.spec.disks):
        files.append(StagedFile(disk.path, J.extra_disk(i), not disk.readonly))
    return files


def token_bucket(rl: RateLimit, what: str) -> dict[str, int]:
    # RateLimit validates on construction, but plans can be built without validation (model_construct):
    # the config is the last gate before Firecracker, so check again with a message naming the limit.
    if not isinstance(rl.size, int) or not 0 < rl.size <= _I64:
        raise SandboxError(f"rate limit {what}: size {rl.size!r} must be a positive integer (bytes or ops per refill)")
    if not isinstance(rl.refill_ms, int) or not 0 < rl.refill_ms <= _I64:
        raise SandboxError(f"rate limit {what}: refill_ms {rl.refill_ms!r} must be a positive number of milliseconds")
    bucket = {"size": rl.size, "refill_time": rl.refill_ms}
    if rl.one_time_burst is not None:
        if not isinstance(rl.one_time_burst, int) or not 0 <= rl.one_time_burst <= _I64:
            raise SandboxError(f"rate limit {what}: one_time_burst {rl.one_time_burst!r} must be >= 0")
        bucket["one_time_burst"] = rl.one_time_burst
    return bucket


def rate_limiter(bandwidth: RateLimit | None, ops: RateLimit | None, what: str) -> dict[str, Any] | None:
    rl: dict[str, Any] = {}
    if bandwidth is not None:
        rl["bandwidth"] = token_bucket(bandwidth, f"{what} bytes")
    if ops is not None:
        rl["ops"] = token_bucket(ops, f"{what} ops")
    return rl or None


def boot_args(plan: VmPlan) -> str:
    """The plan's command line (it carries `ip=`) plus what a Firecracker guest needs, if absent."""
    cmdline = plan.cmdline.strip()
    if any(c in cmdline for c in "\n\r\0"):
        raise SandboxError("the kernel command line contains a newline or NUL byte")
    tokens = cmdline.split()
    for prefix, arg in _REQUIRED_ARGS:
        if not any(t.startswith(prefix) for t in tokens):
            tokens.append(arg)
    args = " ".join(tokens)
    if len(args.encode()) + _ROOT_SUFFIX >= CMDLINE_MAX:
        raise SandboxError(f"the kernel command line is {len(args.encode())} bytes; Firecracker allows {CMDLINE_MAX - _ROOT_SUFFIX - 1}")
    return args


def check_plan(plan: VmPlan) -> None:
    """Firecracker's own limits, as clear errors before anything is created."""
    spec = plan.spec
    J.check_jail_id(spec.name)
    if not isinstance(spec.cpus, int) or not 1 <= spec.cpus <= MAX_VCPUS:
        raise SandboxError(f"--cpus {spec.cpus!r}: Firecracker supports 1 to {MAX_VCPUS} vCPUs")
    if not isinstance(spec.memory_mib, int) or spec.memory_mib <= 0:
        raise SandboxError(f"--memory {spec.memory_mib!r} MiB: the guest memory size must be a positive number of MiB")
    if spec.tdx:
        raise SandboxError("Firecracker cannot run TDX guests", hint="use --vmm qemu --tdx")
    if spec.firmware != "direct":
        raise SandboxError(f"Firecracker boots kernels directly; --firmware {spec.firmware} is not supported", hint="use --vmm qemu")
    if not _MAC_RE.fullmatch(plan.net.guest_mac):
        raise SandboxError(f"guest MAC {plan.net.guest_mac!r} is not six lower-case hex bytes separated by ':'")
    if not 1 <= len(plan.net.tap) <= 15:
        raise SandboxError(f"TAP device name {plan.net.tap!r} must be 1-15 characters")
    if plan.uid <= 0 or plan.gid <= 0:
        raise SandboxError("refusing to run Firecracker as root (uid/gid 0)",
                           hint="every sandbox VMM runs as an unprivileged uid of its own (SEALBOX_UID_RANGE)")
    qcow = [d.path for d in spec.disks if d.format != "raw"]
    if qcow:
        raise SandboxError(f"--disk {qcow[0]} is declared qcow2, but Firecracker attaches raw disks only",
                           hint="convert it (qemu-img convert -O raw) or use --vmm qemu")
    named = [d for d in spec.disks if d.serial]
    if named:  # its virtio-blk ID is derived from the host file's device and inode; nothing else can be set
        raise SandboxError(f"--disk {named[0].path}: Firecracker cannot give a disk a serial (serial={named[0].serial})",
                           hint="use --vmm qemu for disks the guest finds by name (the persistent module)")
    boot_args(plan)
    limits = spec.limits
    rate_limiter(limits.disk_bytes, limits.disk_ops, "disk")
    rate_limiter(limits.net_rx_bytes, None, "net rx")
    rate_limiter(limits.net_tx_bytes, None, "net tx")
    if len({str(f.source) for f in staged_files(plan) if f.writable}) != sum(f.writable for f in staged_files(plan)):
        raise SandboxError("the same writable disk is attached twice", hint="attach each --disk FILE:rw once")


def _drive(did: str, path: str, *, root: bool, read_only: bool, limiter: dict[str, Any] | None) -> dict[str, Any]:
    # Writeback: Firecracker advertises flush and fsyncs on the guest's flush, so what the guest synced
    # survives a host crash; Unsafe (the default) ignores flushes, harmless only for read-only drives
    d: dict[str, Any] = {"drive_id": did, "path_on_host": path, "is_root_device": root, "is_read_only": read_only,
                         "cache_type": "Unsafe" if read_only else "Writeback", "io_engine": "Sync"}
    if limiter:
        d["rate_limiter"] = limiter
    return d


def build_config(plan: VmPlan, log_level: str = "Warning") -> dict[str, Any]:
    """The --config-file document; Firecracker boots the guest as soon as it has read it."""
    check_plan(plan)
    limits = plan.spec.limits
    disk_rl = rate_limiter(limits.disk_bytes, limits.disk_ops, "disk")
    boot: dict[str, Any] = {"kernel_image_path": J.KERNEL, "boot_args": boot_args(plan)}
    drives = []
    if plan.spec.rootfs == "disk":
        drives.append(_drive(DRIVE_ROOT, J.ROOTFS, root=True, read_only=True, limiter=disk_rl))
    else:
        boot["initrd_path"] = J.INITRD
    drives.append(_drive(DRIVE_INSTANCE, J.INSTANCE_DISK, root=False, read_only=True, limiter=None))
    for i, disk in enumerate(plan.spec.disks):
        drives.append(_drive(drive_id(i), J.extra_disk(i), root=False, read_only=disk.readonly, limiter=disk_rl))
    iface: dict[str, Any] = {"iface_id": IFACE_ID, "host_dev_name": plan.net.tap, "guest_mac": plan.net.guest_mac}
    rx = rate_limiter(limits.net_rx_bytes, None, "net rx")
    tx = rate_limiter(limits.net_tx_bytes, None, "net tx")
    if rx:
        iface["rx_rate_limiter"] = rx
    if tx:
        iface["tx_rate_limiter"] = tx
    return {
        "boot-source": boot,
        "drives": drives,
        "machine-config": {"vcpu_count": plan.spec.cpus, "mem_size_mib": plan.spec.memory_mib, "smt": False},
        "network-interfaces": [iface],
        # virtio-rng: the guest's RNG is ready at once instead of after seconds of jitter entropy
        "entropy": {},
        "logger": {"log_path": J.LOG_FILE, "level": log_level, "show_level": True, "show_log_origin": False},
        "metrics": {"metrics_path": J.METRICS_FILE},
    }


# Firecracker's config-file loader (VmmConfig) has no serde default for these two: they must be present.
CONFIG_FILE_REQUIRED = ("boot-source", "drives")


def validate_config(config: dict[str, Any], spec_path: str | Path | None) -> None:
    """Validate against FullVmConfiguration of the given swagger file (no-op without one)."""
    missing = [k for k in CONFIG_FILE_REQUIRED if k not in config]
    if missing:
        raise SandboxError(f"Firecracker config file lacks required key {missing[0]!r}")
    if spec_path is None:
        return
    from sealbox.sandbox.vmm.firecracker.schema import load_spec

    load_spec(str(spec_path)).validate("FullVmConfiguration", config, what="generated Firecracker config")
