"""Typed inputs of the sandbox runtime.

SandboxSpec is what the user asked for (flags of `sealbox run`), validated with clear errors.
VmPlan is what a VMM backend needs after the manager resolved the image, the host resources and
the per-instance data; backends turn a VmPlan into host steps and a command line / config file.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sealbox.sandbox.labels import LABEL_KEY_RE as LABEL_KEY_RE  # the labels' rules: re-exported from labels.py
from sealbox.sandbox.labels import LABEL_VALUE_MAX as LABEL_VALUE_MAX
from sealbox.sandbox.labels import LABELS_MAX as LABELS_MAX
from sealbox.sandbox.labels import check_labels as check_labels
from sealbox.sandbox.labels import parse_labels as parse_labels
from sealbox.util.names import NAME_RE


class NetMode(StrEnum):
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


DISK_SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,19}$")  # virtio-blk IDs hold 20 bytes
QCOW2_MAGIC = b"QFI\xfb"  # the first bytes of every qcow2 image (QEMU's qcow2 format spec)
HOST_SERIAL_PREFIX = "sealbox-"  # serials only the host sets (sealbox-instance, sealbox-disk0...)
_DISK_WORDS = {"ro": ("mode", "ro"), "rw": ("mode", "rw"), "raw": ("format", "raw"), "qcow2": ("format", "qcow2")}


def _disk_opts(tail: str) -> dict[str, str] | None:
    """The options of one ':' group of --disk (comma-separated), or None if the group is not options (a path part)."""
    found: dict[str, str] = {}
    for item in tail.split(","):
        key, sep, value = item.partition("=")
        if not sep and item in _DISK_WORDS:
            key, value = _DISK_WORDS[item]
        elif key != "serial" or not sep:
            return None
        if key in found:
            raise ValueError(f"{key} is given twice")
        found[key] = value
    return found


class DiskSpec(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: Path
    readonly: bool = False
    # declared, never probed: a guest can write any header into its own disk
    format: Literal["raw", "qcow2"] = "raw"
    format_declared: bool = False  # False: raw by default (a qcow2 file attached so is refused, planning.check_disks)
    # the guest's stable name for the disk (QEMU: the drive's serial); None: the host's own label sealbox-diskN
    serial: str | None = None

    @field_validator("serial")
    @classmethod
    def _serial(cls, v: str | None) -> str | None:
        if v is not None and (not DISK_SERIAL_RE.fullmatch(v) or v.startswith(HOST_SERIAL_PREFIX)):
            raise ValueError(f"serial {v!r} must be 1-20 letters, digits, '.', '_', '-' and not start with {HOST_SERIAL_PREFIX!r}")
        return v

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        """'FILE[:OPTS]...' with OPTS a comma-separated list of ro|rw, raw|qcow2, serial=NAME, e.g. 'd.qcow2:rw,serial=db:qcow2'
        (default rw: attached disks are where writable data lives; default raw). Raises ValueError on a bad option."""
        path, opts = text, dict[str, str]()
        for _ in range(3):
            head, sep, tail = path.rpartition(":")
            group = _disk_opts(tail) if sep and tail else None
            if group is None:
                break
            if set(group) & set(opts):
                raise ValueError(f"{sorted(set(group) & set(opts))[0]} is given twice")
            path, opts = head, {**opts, **group}
        if not path:
            raise ValueError("no file name")
        return cls(path=Path(path), readonly=opts.get("mode") == "ro", format=opts.get("format", "raw"),
                   format_declared="format" in opts, serial=opts.get("serial"))

    def flag(self, *extra: str) -> str:
        """This disk as a --disk value, with `extra` options added (for hints)."""
        opts = ["ro" if self.readonly else "rw", *([f"serial={self.serial}"] if self.serial else []), *extra]
        return f"{self.path}:{','.join(opts)}"


class PortMap(BaseModel):
    """One `--publish [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]` (docker's syntax); host port 0: the kernel picks one."""

    model_config = ConfigDict(frozen=True)
    host_ip: ipaddress.IPv4Address = ipaddress.IPv4Address("127.0.0.1")
    host_port: int = Field(default=0, ge=0, le=65535)
    guest_port: int = Field(ge=1, le=65535)
    proto: Literal["tcp", "udp"] = "tcp"

    @field_validator("host_ip")
    @classmethod
    def _unicast(cls, v: ipaddress.IPv4Address) -> ipaddress.IPv4Address:
        if v.is_multicast or v == ipaddress.IPv4Address("255.255.255.255"):
            raise ValueError(f"host address {v} is not a unicast address")
        return v

    @classmethod
    def parse(cls, text: str) -> PortMap:
        """Raises ValueError (with the reason) on anything but the documented forms."""
        body, _, proto = text.partition("/")
        if proto not in ("", "tcp", "udp"):
            raise ValueError(f"protocol {proto!r} is not tcp or udp")
        parts = body.split(":")
        if len(parts) > 3:
            raise ValueError("expected [HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp]")
        ip = parts[0] if len(parts) == 3 else None
        host = parts[-2] if len(parts) >= 2 else ""
        guest = parts[-1]
        for what, value in (("host port", host), ("guest port", guest)):
            if value and not value.isdigit():
                raise ValueError(f"{what} {value!r} is not a number")
        if not guest:
            raise ValueError("the guest port is missing")
        kw: dict[str, object] = {"guest_port": int(guest), "host_port": int(host or 0), "proto": proto or "tcp"}
        if ip is not None:
            if not ip:
                raise ValueError("the host address is empty (leave it out for 127.0.0.1)")
            kw["host_ip"] = ipaddress.IPv4Address(ip)
        return cls.model_validate(kw)

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port or '*'}->{self.guest_port}/{self.proto}"


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
    publish: tuple[PortMap, ...] = ()  # host ports forwarded to the guest (host/publish.py)
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
    labels: dict[str, str] = Field(default_factory=dict)  # metadata only: never reaches the guest or a host object

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return check_labels(v)

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
