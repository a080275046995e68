"""From `sealbox run` flags to a VmPlan: validated inputs, backend and accelerator choice, cgroup, cmdline.

Everything here runs *before* the sandbox name is reserved (so a bad flag, image or disk is a one-line
error with nothing created), except `make_plan`, which needs the allocated network.
"""

from __future__ import annotations

import ipaddress
import os
import stat as st_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox import image as image_mod
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.instance import DISK_NAME
from sealbox.sandbox.layout import CONSOLE_DIR as CONSOLE_DIR  # re-exported (lifecycle, tests)
from sealbox.sandbox.layout import CONSOLE_LOG as CONSOLE_LOG
from sealbox.sandbox.model import QCOW2_MAGIC, CgroupPlan, DiskSpec, EgressRule, GuestNet, Limits, NetMode, PortMap, SandboxSpec, VmPlan
from sealbox.sandbox.vmm.base import VmmBackend
from sealbox.util.names import check_sandbox_name

DEFAULT_MEMORY_MIB = 512  # unless the image needs more (its manifest's min_memory_mib)
FIRECRACKER_OVERHEAD_MIB = 128  # Firecracker's own RSS beyond guest RAM is small; room for page tables + buffers


def make_spec(**flags: Any) -> SandboxSpec:
    """SandboxSpec from CLI flags; --allow-egress/--disk strings are parsed here. One-line errors."""
    check_sandbox_name(flags.get("name", ""))
    egress = []
    for text in flags.pop("allow_egress", ()) or ():
        try:
            egress.append(EgressRule.parse(text))
        except (ValueError, ValidationError):
            raise UsageError(f"--allow-egress {text!r} is not CIDR or CIDR:PORT", hint="e.g. 10.0.0.0/8 or 192.0.2.10/32:443") from None
    disks = tuple(_parsed(DiskSpec.parse, "--disk", t, "FILE[:ro|rw][:raw|qcow2][,serial=NAME]") for t in flags.pop("disks", ()) or ())
    publish = tuple(_parsed(PortMap.parse, "--publish", t, "[HOST_IP:][HOST_PORT:]GUEST_PORT[/tcp|udp], e.g. 8080:80")
                    for t in flags.pop("publish", ()) or ())
    _check_publish(publish)
    limits = _limits(flags.pop("net_rate", None), flags.pop("disk_rate", None), flags.pop("disk_iops", None))
    dns = []
    for text in flags.pop("dns", ()) or ():
        try:
            dns.append(ipaddress.IPv4Address(text))
        except ValueError:
            raise UsageError(f"--dns {text!r} is not an IPv4 address", hint="e.g. --dns 192.0.2.53") from None
    memory = flags.pop("memory_mib", None)
    if flags.get("from_snapshot") is not None:
        memory = snapshot_shape(flags, memory)
    for key in ("cpus", "rootfs"):  # not given: the model's default
        if flags.get(key) is None:
            flags.pop(key, None)
    try:
        spec = SandboxSpec(allow_egress=tuple(egress), disks=disks, publish=publish, limits=limits, dns=tuple(dns),
                           memory_mib=DEFAULT_MEMORY_MIB if memory is None else memory, **flags)
    except ValidationError as e:
        err = e.errors()[0]
        key = "--" + str(err["loc"][0]).replace("_mib", "").replace("_", "-") if err["loc"] else "flags"
        raise UsageError(f"{key}={err.get('input')!r}: {err['msg']}") from None
    if spec.allow_egress and spec.net != NetMode.nat:  # with the other flags: before any host work (the KVM probe)
        raise UsageError("--allow-egress only applies to --net nat", hint="add --net nat or drop --allow-egress")
    return with_memory(spec, memory)


def snapshot_shape(flags: dict[str, Any], memory: int | None) -> int | None:
    """A QEMU snapshot fixes the machine: what the flags leave open (vCPUs, memory, root, accelerator) is taken from
    it, what they set differently is refused later (snapshot.check) with the snapshot's own values in the message."""
    from sealbox.sandbox import snapshot

    path = Path(flags["from_snapshot"])
    if snapshot.backend_of(path) != "qemu":
        return memory
    shape = snapshot.load(path).machine
    for key, value in (("cpus", shape.cpus), ("rootfs", shape.rootfs)):
        if flags.get(key) is None:
            flags[key] = value
    if flags.get("accel", "auto") == "auto":
        flags["accel"] = shape.accel
    return shape.memory_mib if memory is None else memory
def _parsed(parse: Callable[[str], Any], flag: str, text: str, form: str) -> Any:
    try:
        return parse(text)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UsageError(f"{flag} {text!r}: {where + ': ' if where else ''}{msg}", hint=f"expected {form}") from None
    except ValueError as e:
        raise UsageError(f"{flag} {text!r}: {e}", hint=f"expected {form}") from None


def _check_publish(ports: tuple[PortMap, ...]) -> None:
    """One listener per host address, port and protocol (a port given twice could never be bound twice)."""
    seen: set[tuple[str, int, str]] = set()
    for p in ports:
        if p.host_port == 0:
            continue
        key = (str(p.host_ip), p.host_port, p.proto)
        wild = [k for k in seen if k[1:] == key[1:] and "0.0.0.0" in (k[0], key[0])]
        if key in seen or wild:
            raise UsageError(f"--publish {p}: host port {p.host_port}/{p.proto} is published twice", hint="publish each host port once")
        seen.add(key)


def _limits(net: str | None, disk: str | None, iops: str | None) -> Limits:
    from sealbox.sandbox import rates

    net_rl = rates.parse_rate(net, "--net-rate") if net else None
    return Limits(net_rx_bytes=net_rl, net_tx_bytes=net_rl, disk_bytes=rates.parse_rate(disk, "--disk-rate") if disk else None,
                  disk_ops=rates.parse_iops(iops) if iops else None)


def with_memory(spec: SandboxSpec, memory: int | None) -> SandboxSpec:
    """--memory checked against the least RAM the image boots in (its initramfs is unpacked into RAM);
    without --memory, the larger of the default and that minimum."""
    img = image_mod.load(spec.image_dir)
    need = img.min_memory(spec.rootfs)
    if memory is None:
        return spec.model_copy(update={"memory_mib": max(DEFAULT_MEMORY_MIB, need)})
    if memory < need:
        raise UsageError(f"--memory {memory} is less than the {need} MiB image {img.dir} needs to boot with --rootfs {spec.rootfs}",
                         hint=f"use --memory {need} or more, or leave --memory out")
    return spec


def check_disks(spec: SandboxSpec, image_dir: Path) -> None:
    """Every --disk exists, is a regular file or block device, is attached once, and no writable disk
    lives in the image directory (the image is shared and measured; writes belong elsewhere)."""
    seen: set[Path] = set()
    serials = [d.serial for d in spec.disks if d.serial]
    if len(serials) != len(set(serials)):
        dup = next(x for x in serials if serials.count(x) > 1)
        raise UsageError(f"--disk ...,serial={dup} is given to two disks", hint="each serial names one disk")
    for d in spec.disks:
        p = d.path
        try:
            st = p.stat()
        except FileNotFoundError:
            hint = ("options follow a ':', e.g. FILE:rw,serial=NAME" if ",serial=" in str(p) or str(p).endswith((",ro", ",rw"))
                    else "create it first, e.g. sealbox disk create FILE --size 10G (or truncate -s 1G FILE)")
            raise UsageError(f"--disk {p}: no such file", hint=hint) from None
        except OSError as e:
            raise UsageError(f"--disk {p}: {e.strerror}") from None
        if not (st_mod.S_ISREG(st.st_mode) or st_mod.S_ISBLK(st.st_mode)):
            raise UsageError(f"--disk {p} is not a regular file or block device")
        real = p.resolve()
        if real in seen:
            raise UsageError(f"--disk {p} is attached twice", hint="attach each disk once")
        seen.add(real)
        if not d.readonly and image_dir.resolve() in real.parents:
            raise UsageError(f"--disk {p}:rw is inside the image directory {image_dir}",
                             hint="keep writable data outside the image (copy the file elsewhere)")
        if d.format == "raw" and not d.format_declared and _head(p, len(QCOW2_MAGIC)) == QCOW2_MAGIC:
            raise UsageError(f"--disk {p} is a qcow2 image, and a disk without a format is attached raw (the guest "
                             "would see the qcow2 container, not the disk in it)",
                             hint=f"declare it: --disk {d.flag('qcow2')} if `sealbox disk create` (or qemu-img) made it; "
                                  f"--disk {d.flag('raw')} if it is a raw disk whose guest wrote those bytes (declared "
                                  "qcow2, QEMU would read a header the guest wrote)")


def _head(path: Path, n: int) -> bytes:
    """The first `n` bytes of a disk (b"" if unreadable: opening it for the VMM then says why)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, n, 0)
    except OSError:
        return b""
    finally:
        os.close(fd)


@dataclass
class Choice:
    """Which VMM and accelerator a run uses, and why (warnings are shown to the user)."""

    backend: VmmBackend
    vmm: Literal["qemu", "firecracker"]
    accel: Literal["kvm", "tcg"]
    warnings: list[str] = field(default_factory=list)


def _kvm(state_root: Path, dry_run: bool) -> Any:
    from sealbox.sandbox.host import kvm

    if dry_run and not (state_root / "cache" / kvm.CACHE_NAME).exists():
        return kvm.probe_kvm()  # no cache file written: a dry run changes nothing
    return kvm.kvm_status(state_root)


def vmm_without_probe(spec: SandboxSpec) -> Literal["qemu", "firecracker"] | None:
    """The VMM if the flags alone decide it (None: --vmm auto without a flag that forces one)."""
    if spec.from_snapshot is not None:
        from sealbox.sandbox.snapshot import backend_of

        return backend_of(spec.from_snapshot)
    if spec.tdx or spec.firmware == "ovmf" or spec.boot == "disk-image":
        return "qemu"
    return None if spec.vmm == "auto" else spec.vmm


def choose(spec: SandboxSpec, state_root: Path, *, dry_run: bool = False) -> Choice:
    from sealbox.sandbox.host.kvm import choose_accel

    vmm = spec.vmm
    if spec.from_snapshot is not None:
        from sealbox.sandbox.snapshot import backend_of

        kind = backend_of(spec.from_snapshot)
        if vmm not in ("auto", kind):
            raise UsageError(f"--from-snapshot {spec.from_snapshot} is a {kind} snapshot", hint=f"use --vmm {kind} (or auto)")
        vmm = kind
    if spec.boot == "disk-image":
        check_disk_image_boot(spec)
    if spec.tdx or spec.firmware == "ovmf" or spec.boot == "disk-image":
        if vmm == "firecracker":
            raise UsageError("--tdx/--firmware ovmf/--boot disk-image need QEMU", hint="use --vmm qemu (or auto)")
        vmm = "qemu"
    if vmm == "firecracker" and spec.accel == "tcg":
        raise UsageError("Firecracker has no TCG fallback", hint="use --vmm qemu with --accel tcg")
    need_probe = not (spec.accel == "tcg" and vmm != "firecracker")
    status = _kvm(state_root, dry_run) if need_probe else None
    warnings: list[str] = []
    if vmm == "auto":
        vmm = "qemu"
        if status is not None and status.functional:
            from sealbox.sandbox.vmm.firecracker.doctor import auto_select_ok

            ok, _why = auto_select_ok(True)
            vmm = "firecracker" if ok else "qemu"
    if vmm == "firecracker":
        assert status is not None
        if not status.functional:
            if not dry_run:
                raise SandboxError(f"--vmm firecracker needs KVM, but {status.summary}", hint="use --vmm qemu (TCG works there)")
            warnings.append(f"{status.summary}: a real run with --vmm firecracker would fail")
        from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend

        return Choice(backend=FirecrackerBackend(), vmm="firecracker", accel="kvm", warnings=warnings)
    from sealbox.sandbox.vmm.qemu import QemuBackend

    if spec.tdx:
        return Choice(backend=QemuBackend(), vmm="qemu", accel="kvm")
    if status is None:
        return Choice(backend=QemuBackend(), vmm="qemu", accel="tcg")
    accel, warning = choose_accel(spec.accel, status)
    return Choice(backend=QemuBackend(), vmm="qemu", accel=accel, warnings=[warning] if warning else [])


def check_disk_image_boot(spec: SandboxSpec) -> None:
    """--boot disk-image: the firmware boots the image's own disk, so nothing else may choose the boot."""
    if spec.tdx:
        raise UsageError("--boot disk-image is not supported with --tdx", hint="TDX guests boot the UKI with --boot kernel")
    if spec.rootfs == "disk":
        raise UsageError("--boot disk-image boots what the disk carries; --rootfs disk attaches rootfs.ext4 for a kernel boot",
                         hint="drop --rootfs disk")
    if spec.from_snapshot is not None:
        raise UsageError("--boot disk-image cannot restore a snapshot", hint="drop --from-snapshot")


def cgroup_plan(spec: SandboxSpec, choice: Choice, state_id: str) -> CgroupPlan:
    layout = cgroups.detect()
    if choice.vmm == "qemu":
        from sealbox.sandbox.vmm.qemu import memory_limit_bytes

        mem = memory_limit_bytes(spec, choice.accel)
    else:
        mem = (spec.memory_mib + FIRECRACKER_OVERHEAD_MIB) << 20
    return cgroups.plan_for(spec.name, layout, state_id=state_id, memory_bytes=mem, cpus=spec.cpus, pids_max=spec.limits.pids_max)


def kernel_cmdline(boot: image_mod.BootFiles, net: GuestNet, hostname: str, firmware_boot: bool) -> str:
    """The image's baked arguments + `ip=` (the guest applies it; QEMU adds tsc_early_khz under TCG).
    A UKI's command line is baked and measured: nothing is added there."""
    args = list(boot.cmdline)
    if not firmware_boot:
        args = [a for a in args if not a.startswith("ip=")] + [net.kernel_ip_arg(hostname)]
    return " ".join(args)


def boot_initrd(img: image_mod.Image, initrd: Path | None, *, create: bool) -> Path | None:
    """For an initramfs boot, the decompressed copy of the image's initrd (sandbox/initrd_cache.py);
    `create=False` (dry run) only names it."""
    from sealbox.sandbox import initrd_cache

    rel = img.boot_file("initrd")
    art = img.manifest.artifacts.get(rel) if rel else None
    if initrd is None or art is None or initrd.name != rel or not rel.endswith(".zst"):
        return initrd  # a loader for a disk boot, or an image without a digest for it: as it is
    return initrd_cache.ensure_plain(initrd, art.sha256) if create else initrd_cache.plain_path(art.sha256)


def make_plan(spec: SandboxSpec, img: image_mod.Image, choice: Choice, net: GuestNet, sandbox_dir: Path,
              uid: int, gid: int, cgroup: CgroupPlan, *, create: bool = False, mrconfigid: str | None = None,
              incoming: Path | None = None) -> VmPlan:
    firmware_boot = spec.tdx or spec.firmware == "ovmf" or spec.boot == "disk-image"
    boot = img.boot_files(vmm=choice.vmm, rootfs=spec.rootfs, firmware=spec.firmware, tdx=spec.tdx, boot=spec.boot)
    initrd = boot.initrd if spec.rootfs == "disk" else boot_initrd(img, boot.initrd, create=create)
    return VmPlan(
        spec=spec, sandbox_dir=sandbox_dir, kernel=boot.kernel, initrd=initrd, rootfs=boot.rootfs,
        instance_disk=sandbox_dir / DISK_NAME, cmdline=kernel_cmdline(boot, net, spec.name, firmware_boot), net=net,
        uid=uid, gid=gid, cgroup=cgroup, accel=choice.accel, console_log=sandbox_dir / CONSOLE_LOG, mrconfigid=mrconfigid,
        incoming=incoming,
    )


def require_root() -> None:
    if os.geteuid() != 0:
        raise SandboxError("sealbox run must be started as root (it creates namespaces, TAPs and cgroups)",
                           hint="use sudo, or --dry-run to see what would happen")
