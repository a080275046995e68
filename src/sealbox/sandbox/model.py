"""Typed inputs of the sandbox runtime.

SandboxSpec is what the user asked for (flags of `sealbox run`), validated with clear errors.
VmPlan is what a VMM backend needs after the manager resolved the image, the host resources and
the per-instance data; backends turn a VmPlan into host steps and a command line / config file.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sealbox.util.names import NAME_RE


class NetMode(str, Enum):
    isolated = "isolated"  # the guest reaches only the host side of its own link
    nat = "nat"  # plus masqueraded egress, optionally limited by allow_egress


class EgressRule(BaseModel):
    model_config = ConfigDict(frozen=True)
    cidr: ipaddress.IPv4Network
    port: int | None = Field(default=None, ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> EgressRule:
        """'CIDR' or 'CIDR:PORT' (e.g. 10.0.0.0/8:443)."""
        cidr, _, port = text.partition(":")
        return cls(cidr=ipaddress.IPv4Network(cidr, strict=False), port=int(port) if port else None)


class DiskSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: Path
    readonly: bool = False
    # declared, never probed: a guest can write any header into its own disk
    format: Literal["raw", "qcow2"] = "raw"

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        """'FILE[:ro|:rw][:raw|:qcow2]' (default rw: attached disks are where writable data lives; default raw)."""
        path, opts = text, {}
        for _ in range(2):
            head, sep, tail = path.rpartition(":")
            key = "mode" if tail in ("ro", "rw") else "format" if tail in ("raw", "qcow2") else None
            if not sep or key is None or key in opts:
                break
            path, opts[key] = head, tail
        return cls(path=Path(path), readonly=opts.get("mode") == "ro", format=opts.get("format", "raw"))


class RateLimit(BaseModel):
    """Token bucket: `size` units per `refill_ms` (Firecracker's model; QEMU gets the same average)."""

    model_config = ConfigDict(frozen=True)
    size: int = Field(gt=0)
    refill_ms: int = Field(default=1000, gt=0)
    one_time_burst: int | None = Field(default=None, ge=0)


class Limits(BaseModel):
    model_config = ConfigDict(frozen=True)
    pids_max: int = Field(default=256, ge=16)
    nofile: int = Field(default=4096, ge=64)
    net_rx_bytes: RateLimit | None = None
    net_tx_bytes: RateLimit | None = None
    disk_bytes: RateLimit | None = None
    disk_ops: RateLimit | None = None


class SandboxSpec(BaseModel):
    """The validated flags of `sealbox run`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(pattern=NAME_RE.pattern)
    image_dir: Path
    cpus: int = Field(default=2, ge=1, le=32)  # a guest boots ~30% faster with two vCPUs under TCG
    memory_mib: int = Field(default=512, ge=64, le=1024 * 1024)
    net: NetMode = NetMode.isolated
    allow_egress: tuple[EgressRule, ...] = ()
    dns: tuple[ipaddress.IPv4Address, ...] = ()  # resolvers the guest uses directly (nat); empty: sealbox's forwarder
    disks: tuple[DiskSpec, ...] = ()
    rootfs: Literal["initrd", "disk"] = "initrd"
    vmm: Literal["auto", "qemu", "firecracker"] = "auto"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    firmware: Literal["direct", "ovmf"] = "direct"
    boot: Literal["kernel", "disk-image"] = "kernel"  # disk-image: OVMF boots the image's GPT disk, no -kernel
    tdx: bool = False
    timeout: float = Field(default=180.0, gt=0, le=3600)
    console_max_mib: int = Field(default=16, ge=1, le=1024)  # the console log's tmpfs (host/consolefs.py)
    limits: Limits = Limits()
    from_snapshot: Path | None = None

    @field_validator("allow_egress")
    @classmethod
    def _egress_needs_nat(cls, v: tuple[EgressRule, ...]) -> tuple[EgressRule, ...]:
        return v


class GuestNet(BaseModel):
    """The sandbox's point-to-point /30: host side .1, guest side .2 (addresses allocated per sandbox)."""

    model_config = ConfigDict(frozen=True)
    subnet: ipaddress.IPv4Network
    host_ip: ipaddress.IPv4Address
    guest_ip: ipaddress.IPv4Address
    guest_mac: str
    tap: str  # TAP device name inside the sandbox's netns
    netns: str  # network namespace name (/var/run/netns/<netns>)
    dns: tuple[ipaddress.IPv4Address, ...] = ()  # resolvers announced to the guest (host/dns.py)

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def netmask(self) -> str:
        return str(self.subnet.netmask)

    def kernel_ip_arg(self, hostname: str) -> str:
        """Kernel `ip=` syntax; Debian kernels ignore it (no CONFIG_IP_PNP), a guest unit applies it."""
        return f"ip={self.guest_ip}::{self.host_ip}:{self.netmask}:{hostname}:eth0:off"


class CgroupPlan(BaseModel):
    model_config = ConfigDict(frozen=True)
    version: Literal[1, 2]
    name: str  # relative path below each hierarchy, e.g. sealbox/<name> (systemd: sealbox.slice/sealbox-<name>.scope)
    memory_bytes: int
    cpu_quota_us: int
    cpu_period_us: int = 100_000
    pids_max: int
    manager: Literal["cgroupfs", "systemd"] = "cgroupfs"  # who creates it (host/systemd_scope.py)


class VmPlan(BaseModel):
    """Everything a VMM backend needs; produced by the manager, consumed by vmm/*."""

    model_config = ConfigDict(frozen=True)
    spec: SandboxSpec
    sandbox_dir: Path  # per-sandbox state dir (console log, sockets, keys)
    kernel: Path  # bzImage (QEMU) or ELF vmlinux (Firecracker)
    initrd: Path | None
    rootfs: Path | None  # read-only root disk in rootfs=disk mode
    instance_disk: Path  # small read-only disk carrying per-instance data (docs/guest-protocol.md)
    cmdline: str
    net: GuestNet
    uid: int  # the unprivileged sandbox user the VMM runs as
    gid: int
    cgroup: CgroupPlan
    accel: Literal["kvm", "tcg"]
    console_log: Path
    mrconfigid: str | None = None  # TDX: hex SHA-384 of the instance data (guest/instance.py); known once it is written
    incoming: Path | None = None  # QEMU restore: the snapshot's state file (sandbox/snapshot.py)
