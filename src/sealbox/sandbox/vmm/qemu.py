"""The QEMU backend: a VmPlan becomes a jailed `qemu-system-x86_64` command line and host steps.

Three machine types:
- direct (`-M microvm`): kernel + initrd (or a read-only root disk), virtio-mmio devices;
- `--firmware ovmf` (`-M q35`): OVMF pflash (read-only CODE + a per-sandbox VARS copy) booting the
  UKI with `-kernel <name>.efi`, virtio-pci devices, qcow2 disks on virtio-scsi;
- `--tdx`: q35 as a TDX guest (tdx-guest object, TDVF firmware), UKI as above; needs a TDX host.

Every host object reaches QEMU as an inherited file descriptor opened by the root launcher (see
host/jail.py): the QMP listening socket, the console log, the TAP, the drives (QEMU fdsets) and the
kernel/initrd/UKI (`/proc/self/fd/N`). Fd numbers are fixed by the plan, so --dry-run shows the real
command line and the launcher only has to place each fd at its number.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from sealbox.errors import SandboxError
from sealbox.guest.instance import mrconfigid_base64
from sealbox.guest.protocol import AGENT_PORT
from sealbox.sandbox.host import jail
from sealbox.sandbox.model import DiskSpec, RateLimit, SandboxSpec, VmPlan
from sealbox.sandbox.steps import Step
from sealbox.util import atomic

QEMU = "/usr/bin/qemu-system-x86_64"
SANDBOX_OPTS = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
FIRST_FD = 10  # fds 0-2 are stdio; leave room below for anything the runtime opens early
# QEMU's microvm has 24 virtio-mmio transports, but the interrupt of the 24th never reaches the guest (measured
# with QEMU 7.2 and Debian's 6.1 kernel: a disk there hangs the boot in its partition scan), so 23 are usable:
# net, rng, the restore agent's serial port, the instance disk, [the root disk] and the user disks
MICROVM_DEVICES = 23
MICROVM_FIXED = ("net", "rng", "agent")  # the devices before the disks
VD_NAMES = 26  # vda..vdz: past them names sort out of device order (vdaa < vdb), which the guest relies on
TDX_PARAM = Path("/sys/module/kvm_intel/parameters/tdx")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
TDVF_CANDIDATES = (Path("/usr/share/ovmf/OVMF.inteltdx.fd"), Path("/usr/share/OVMF/OVMF.inteltdx.fd"), Path("/usr/share/qemu/OVMF.inteltdx.fd"))
QEMU_OVERHEAD_MIB = 160  # QEMU's own RSS beyond guest RAM and TCG buffers (measured: see tests)
# --dry-run of a TD: its MRCONFIGID hashes instance data whose client key is only made at run time
PENDING_MRCONFIGID = "@INSTANCE-DATA-SHA384@"

Mode = Literal["microvm", "ovmf", "tdx"]


class FdFile(BaseModel):
    """One descriptor the launcher opens (as root) and places at number `fd` in the VMM."""

    fd: int
    kind: Literal["qmp", "agent", "console", "tap", "file"]
    path: str = ""  # host path (qmp/agent socket, console log, file); netns name for kind=tap
    ifname: str = ""  # TAP name inside the netns (kind=tap)
    access: Literal["r", "w", "rw"] = "r"  # QEMU matches an fdset member by access mode


@dataclass(frozen=True)
class HostFacts:
    """Host details the command line depends on; detected once, explicit in tests."""

    tsc_khz: int | None = None  # given to TCG guests: PIT calibration under a loaded TCG host can hang the boot
    ovmf_code: Path = OVMF_CODE
    ovmf_vars: Path = OVMF_VARS
    tdvf: Path = TDVF_CANDIDATES[0]
    kvm_gid: int | None = None
    root_links: dict[str, str] = field(default_factory=dict)

    @classmethod
    def detect(cls) -> HostFacts:
        from sealbox.sandbox.host.users import kvm_gid

        tdvf = (Path(os.environ["SEALBOX_TDVF"]) if os.environ.get("SEALBOX_TDVF")
                else next((p for p in TDVF_CANDIDATES if p.exists()), TDVF_CANDIDATES[0]))
        return cls(tsc_khz=host_tsc_khz(), tdvf=tdvf, kvm_gid=kvm_gid(), root_links=jail.host_root_links())


def host_tsc_khz(cpuinfo: Path = Path("/proc/cpuinfo")) -> int | None:
    """TCG guests read the host TSC, so the host's rate is the right `tsc_early_khz`."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("cpu MHz"):
                return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError, IndexError):
        pass
    return None


def mode_of(spec: SandboxSpec) -> Mode:
    return "tdx" if spec.tdx else ("ovmf" if spec.firmware == "ovmf" or spec.boot == "disk-image" else "microvm")


BOOT_DISK_FORMATS: dict[str, Literal["raw", "qcow2", "vpc"]] = {".raw": "raw", ".qcow2": "qcow2", ".vhd": "vpc"}


def boot_disk_format(path: Path) -> Literal["raw", "qcow2", "vpc"]:
    """The format of an image's boot disk, declared by the name the build gave it (builder/disk.py), never probed."""
    fmt = BOOT_DISK_FORMATS.get(path.suffix)
    if fmt is None:
        raise SandboxError(f"boot disk {path} is not one of the image's disk formats ({', '.join(sorted(BOOT_DISK_FORMATS))})")
    return fmt


def tb_size_mib(memory_mib: int) -> int:
    """TCG translation cache. QEMU's default (1 GiB) lets RSS grow far beyond guest RAM; 64 MiB made a
    systemd boot re-translate so often that boot-to-ready took 15.5 s instead of 11 s (-smp 1). 256 MiB
    is allocated on use and counted in the cgroup memory limit."""
    return 256


def memory_limit_bytes(spec: SandboxSpec, accel: Literal["kvm", "tcg"]) -> int:
    """The cgroup memory limit for a QEMU VM: guest RAM + TCG cache + QEMU's own needs."""
    tb = tb_size_mib(spec.memory_mib) if accel == "tcg" and not spec.tdx else 0
    return (spec.memory_mib + tb + QEMU_OVERHEAD_MIB) * 1024 * 1024


def uki_of(plan: VmPlan) -> Path:
    """The UKI booted by OVMF/TDVF: plan.kernel if it is a .efi, else the one .efi in the image dir."""
    if plan.kernel.suffix == ".efi":
        return plan.kernel
    found = sorted(plan.spec.image_dir.glob("*.efi"))
    if len(found) != 1:
        raise SandboxError(
            f"--firmware ovmf/--tdx boots a UKI, but {plan.spec.image_dir} has {len(found)} .efi files",
            hint="build the image with a UKI output (<name>.efi) or pass the image directory that has exactly one",
        )
    return found[0]


def _throttle(limit: RateLimit | None, what: str) -> str:
    """QEMU's leaky bucket for one RateLimit: the average `what`-total; a bucket larger than one second's worth
    (a burst, sandbox/rates.py) becomes `what`-total-max = size over a 1 s burst length, i.e. a bucket of `size`."""
    if limit is None:
        return ""
    avg = max(1, limit.size * 1000 // limit.refill_ms)
    out = f",throttling.{what}-total={avg}"
    if limit.size > avg:
        out += f",throttling.{what}-total-max={limit.size},throttling.{what}-total-max-length=1"
    return out


@dataclass
class _Fds:
    """Hands out fd numbers and fdset ids in argv order, so the layout is a pure function of the plan."""

    files: list[FdFile] = field(default_factory=list)
    next_fd: int = FIRST_FD
    next_set: int = 1

    def take(self, kind: Literal["qmp", "agent", "console", "tap", "file"], path: str, *,
             access: Literal["r", "w", "rw"] = "r", ifname: str = "") -> int:
        fd = self.next_fd
        self.next_fd += 1
        self.files.append(FdFile(fd=fd, kind=kind, path=path, access=access, ifname=ifname))
        return fd

    def fdset(self, path: Path, access: Literal["r", "w", "rw"], kind: Literal["console", "file"] = "file") -> tuple[list[str], str]:
        """An fdset for a drive or chardev. Read-write drives get an O_RDONLY twin: QEMU probes read-only first."""
        sid = self.next_set
        self.next_set += 1
        args = ["-add-fd", f"fd={self.take(kind, str(path), access=access)},set={sid}"]
        if access == "rw":
            args += ["-add-fd", f"fd={self.take(kind, str(path), access='r')},set={sid}"]
        return args, f"/dev/fdset/{sid}"


class QemuCommand(BaseModel):
    """The result of planning: what to open, and the command to run."""

    mode: str
    qemu_argv: list[str]
    argv: list[str]  # jail + qemu
    fds: list[FdFile]
    run_dir: str
    qmp_socket: str
    vmm_log: str
    agent_socket: str | None = None  # the restore agent's port (microvm), a listening socket like QMP's
    vars_copy: str | None = None  # per-sandbox OVMF VARS file created by RunDirStep ...
    vars_template: str | None = None  # ... from this template


VMM_LOG = "qemu.log"  # QEMU's stderr, in its run dir


def run_dir_of(plan: VmPlan) -> Path:
    return plan.sandbox_dir / "vmm"


def build_command(plan: VmPlan, host: HostFacts) -> QemuCommand:
    spec, mode = plan.spec, mode_of(plan.spec)
    run_dir = run_dir_of(plan)
    accel = "kvm" if mode == "tdx" else plan.accel
    fds = _Fds()
    qmp_fd = fds.take("qmp", str(run_dir / "qmp.sock"))
    tap_fd = fds.take("tap", plan.net.netns, ifname=plan.net.tap)

    # -no-reboot: a guest reboot ends the VM (ps: exited) instead of coming back with new, unpinned host keys
    argv = [QEMU, "-name", f"sealbox-{spec.name}", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-sandbox", SANDBOX_OPTS]
    if mode == "microvm":
        argv += ["-M", "microvm"]
    elif mode == "ovmf":
        argv += ["-M", "q35"]
    else:
        argv += ["-M", "q35,kernel_irqchip=split,confidential-guest-support=tdx0", "-object", tdx_object(plan)]
    if accel == "tcg":
        argv += ["-accel", f"tcg,tb-size={tb_size_mib(spec.memory_mib)}"]
    else:
        argv += ["-accel", "kvm", "-cpu", "host,-kvm-steal-time,-kvmclock" if mode == "tdx" else "host"]
    argv += ["-smp", str(spec.cpus), "-m", f"{spec.memory_mib}M"]
    argv += ["-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off", "-mon", "chardev=qmp,mode=control"]
    con_args, con_path = fds.fdset(plan.console_log, "w", kind="console")  # chardev file opens O_WRONLY
    argv += [*con_args, "-chardev", f"file,id=console,path={con_path}", "-serial", "chardev:console"]

    pci = mode != "microvm"
    boot_args, vars_copy = _boot_args(plan, host, fds, mode, accel)
    argv += boot_args
    net_dev = "virtio-net-pci" if pci else "virtio-net-device"
    # a disk-image boot loads no iPXE option ROM: the firmware boots the disk, not the network
    rom = ",romfile=" if spec.boot == "disk-image" else ""
    argv += ["-netdev", f"tap,id=net0,fd={tap_fd},vhost=off", "-device", f"{net_dev},netdev=net0,mac={plan.net.guest_mac}{rom}"]
    # an entropy device: without it the guest kernel's RNG takes ~10 s to initialise under TCG and
    # everything that needs getrandom() (ssh-keygen for the host key, sshd) waits for it
    rng_dev = "virtio-rng-pci" if pci else "virtio-rng-device"
    argv += ["-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", f"{rng_dev},rng=rng0"]
    agent = run_dir / "agent.sock" if mode == "microvm" else None
    if agent is not None:
        argv += agent_args(fds.take("agent", str(agent)))

    argv += _disk_args(plan, fds, pci)
    if plan.incoming is not None:  # a restore: QEMU loads the snapshot's state from this fd and stays paused
        argv += ["-incoming", f"fd:{fds.take('file', str(plan.incoming))}"]

    spec_j = jail.JailSpec(
        uid=plan.uid, gid=plan.gid,
        kvm_gid=host.kvm_gid if accel == "kvm" else None,
        devices=("/dev/kvm",) if accel == "kvm" else (),
        root_links=host.root_links,
    )
    return QemuCommand(
        mode=mode, qemu_argv=argv, argv=jail.jail_argv(spec_j, argv), fds=sorted(fds.files, key=lambda f: f.fd),
        run_dir=str(run_dir), qmp_socket=str(run_dir / "qmp.sock"), vmm_log=str(run_dir / VMM_LOG),
        agent_socket=str(agent) if agent else None,
        vars_copy=str(vars_copy) if vars_copy else None,
        vars_template=str(host.ovmf_vars) if vars_copy else None,
    )


def _boot_args(plan: VmPlan, host: HostFacts, fds: _Fds, mode: Mode, accel: str) -> tuple[list[str], Path | None]:
    """What the guest boots: microvm's kernel (+ initrd) and command line, OVMF's firmware and UKI or disk, TDVF.
    Returns the arguments and, for OVMF, the run dir's copy of the variable store."""
    spec = plan.spec
    argv: list[str] = []
    vars_copy = None
    if mode == "microvm":
        argv += ["-kernel", f"/proc/self/fd/{fds.take('file', str(plan.kernel))}"]
        if plan.initrd is not None:  # rootfs=disk: the manager passes the image's loader initramfs here
            argv += ["-initrd", f"/proc/self/fd/{fds.take('file', str(plan.initrd))}"]
        cmdline = plan.cmdline
        if accel == "tcg" and host.tsc_khz and "tsc_early_khz=" not in cmdline:
            cmdline += f" tsc_early_khz={host.tsc_khz}"
        # the kernel's default reboot order ends in a jump to the firmware, which reboots the guest in software:
        # -no-reboot never sees it (measured: 3 of 14 TCG guests came back). A triple fault is a reset QEMU sees.
        if not any(a.startswith("reboot=") for a in cmdline.split()):
            cmdline += " reboot=t"
        argv += ["-append", cmdline]
    elif mode == "ovmf":
        code_args, code = fds.fdset(host.ovmf_code, "r")
        vars_copy = run_dir_of(plan) / "OVMF_VARS.fd"
        vars_args, varsp = fds.fdset(vars_copy, "rw")
        argv += [*code_args, "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}"]
        argv += [*vars_args, "-drive", f"if=pflash,format=raw,unit=1,file={varsp}"]
        if spec.boot == "disk-image":  # the firmware finds \\EFI\\BOOT\\BOOTX64.EFI on the disk by itself
            boot_args, bootp = fds.fdset(plan.kernel, "r")
            argv += [*boot_args, "-drive", f"if=none,id=boot,file={bootp},format={boot_disk_format(plan.kernel)},readonly=on",
                     "-device", "virtio-blk-pci,drive=boot,bootindex=0"]
        else:
            argv += ["-kernel", f"/proc/self/fd/{fds.take('file', str(uki_of(plan)))}"]
    else:
        argv += ["-bios", f"/proc/self/fd/{fds.take('file', str(host.tdvf))}"]
        argv += ["-kernel", f"/proc/self/fd/{fds.take('file', str(uki_of(plan)))}"]

    return argv, vars_copy


def _disk_args(plan: VmPlan, fds: _Fds, pci: bool) -> list[str]:
    """The root disk (rootfs=disk), the instance disk, then the user's disks, in that order (guest-protocol.md)."""
    spec = plan.spec
    argv: list[str] = []
    disks: list[tuple[str, DiskSpec]] = []
    if spec.rootfs == "disk":
        if plan.rootfs is None:
            raise SandboxError("rootfs=disk needs a root disk image, but the image has none", hint="rebuild the image with an ext4 rootfs output")
        disks.append(("rootfs", DiskSpec(path=plan.rootfs, readonly=True)))
    disks.append(("instance", DiskSpec(path=plan.instance_disk, readonly=True)))
    disks += [(f"disk{i}", d) for i, d in enumerate(spec.disks)]
    fixed = len(disks) - len(spec.disks)  # the instance disk and the root disk come first (guest-protocol.md)
    if not pci and len(disks) + len(MICROVM_FIXED) > MICROVM_DEVICES:
        raise SandboxError(f"QEMU's microvm takes at most {MICROVM_DEVICES - len(MICROVM_FIXED) - fixed} extra disks ({len(spec.disks)} given)",
                           hint="attach fewer --disk files (or use --firmware ovmf, whose PCI bus takes more)")
    if pci and sum(d.format == "raw" for _i, d in disks) > VD_NAMES:
        raise SandboxError(f"at most {VD_NAMES - fixed} raw extra disks fit vda..vdz ({len(spec.disks)} given)",
                           hint="attach fewer raw --disk files; qcow2 disks (FILE:qcow2) go on the SCSI bus")
    scsi = False
    blk_dev = "virtio-blk-pci" if pci else "virtio-blk-device"
    lim = spec.limits
    for drive_id, disk in disks:
        fmt = disk.format
        set_args, path = fds.fdset(disk.path, "r" if disk.readonly else "rw")
        opts = f"if=none,id={drive_id},file={path},format={fmt},readonly={'on' if disk.readonly else 'off'}"
        opts += _throttle(lim.disk_bytes, "bps") + _throttle(lim.disk_ops, "iops")
        argv += [*set_args, "-drive", opts]
        if pci and fmt == "qcow2":  # persistent qcow2 disks as SCSI disks (discard/unmap, many LUNs)
            if not scsi:
                argv += ["-device", "virtio-scsi-pci,id=scsi0"]
                scsi = True
            argv += ["-device", f"scsi-hd,drive={drive_id},bus=scsi0.0,serial={disk.serial or 'sealbox-' + drive_id}"]
        else:  # the serial is the guest's proof of which disk is the instance disk (docs/guest-protocol.md)
            argv += ["-device", f"{blk_dev},drive={drive_id},serial={disk.serial or 'sealbox-' + drive_id}"]
    return argv


def agent_args(fd: int) -> list[str]:
    """The restore agent's port (microvm): a guest restored from a snapshot renews its secrets through it
    (docs/guest-protocol.md). Its host end is a listening socket root made, passed as `fd` like QMP's."""
    return ["-device", "virtio-serial-device,id=agent0", "-chardev", f"socket,id=agent,fd={fd},server=on,wait=off",
            "-device", f"virtserialport,bus=agent0.0,chardev=agent,name={AGENT_PORT}"]


def tdx_object(plan: VmPlan) -> str:
    """The TD is bound to its instance data: MRCONFIGID = SHA-384 of the canonical encoding (guest/instance.py).
    The guest applies no instance data that does not hash to it, and `attest quote --instance` checks it."""
    value = mrconfigid_base64(bytes.fromhex(plan.mrconfigid)) if plan.mrconfigid else PENDING_MRCONFIGID
    return f"tdx-guest,id=tdx0,mrconfigid={value}"


def qemu_objects(qemu: str | None = None) -> set[str]:
    try:
        out = subprocess.run([qemu or QEMU, "-object", "help"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {line.strip() for line in out.splitlines()[1:] if line.strip()}


def tdx_support(param: Path | None = None, qemu: str | None = None) -> tuple[bool, str]:
    """Can this host run TDX guests? (kvm_intel's tdx parameter and QEMU's tdx-guest object)."""
    param, qemu = param or TDX_PARAM, qemu or QEMU
    try:
        enabled = param.read_text().strip() in ("Y", "1")
    except OSError:
        return False, f"{param} is missing (no kvm_intel module with TDX support loaded)"
    if not enabled:
        return False, f"{param} is not Y (TDX is not enabled in kvm_intel / BIOS)"
    if "tdx-guest" not in qemu_objects(qemu):
        return False, f"{qemu} has no tdx-guest object (QEMU with TDX support is needed)"
    return True, "kvm_intel tdx=Y and QEMU supports tdx-guest"


class QemuBackend:
    """sealbox.sandbox.vmm.base.VmmBackend for QEMU (microvm, q35+OVMF, TDX)."""

    name: ClassVar[str] = "qemu"

    def __init__(self, host: HostFacts | None = None) -> None:
        self._host = host

    @property
    def host(self) -> HostFacts:
        if self._host is None:
            self._host = HostFacts.detect()
        return self._host

    def command(self, plan: VmPlan) -> QemuCommand:
        return build_command(plan, self.host)

    def check_host(self, plan: VmPlan) -> None:
        from sealbox.sandbox.vmm.qemu_launch import check_host

        check_host(plan, self.command(plan))

    def steps(self, plan: VmPlan) -> list[Step]:
        from sealbox.sandbox.vmm.qemu_launch import steps

        return steps(plan, self.command(plan))

    def log_path(self, plan: VmPlan) -> Path:
        return run_dir_of(plan) / VMM_LOG

    def describe(self, plan: VmPlan) -> dict[str, Any]:
        cmd = self.command(plan)
        return {
            "backend": self.name,
            "mode": cmd.mode,
            "accel": "kvm" if cmd.mode == "tdx" else plan.accel,
            "qemu_argv": cmd.qemu_argv,
            "argv": cmd.argv,
            "fds": [f.model_dump() for f in cmd.fds],
            "steps": [s.describe() for s in self.steps(plan)],
        }

    def stop(self, record: Any, timeout: float) -> str:
        from sealbox.sandbox.vmm.qemu_launch import stop

        return stop(record, timeout)

    def inspect(self, record: Any) -> dict[str, Any]:
        from sealbox.sandbox.vmm.qemu_launch import inspect

        return inspect(record)


QEMU_VERSION_CACHE = "qemu-version.json"


def qemu_version(qemu: str | None = None, cache_dir: Path | None = None) -> str:
    """The host's QEMU as `--version` names it (e.g. `7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)`): a snapshot records
    it and restores only under the same. Asked of the binary, not of a running VMM (whose answers are untrusted);
    with `cache_dir` (root's state dir), remembered for as long as the binary's inode, size and mtime stay."""
    binary = Path(qemu or QEMU)
    try:
        st = binary.stat()
        key = f"{binary}:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        key = None
    cache = cache_dir / QEMU_VERSION_CACHE if cache_dir is not None and key else None
    if cache is not None:
        try:
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and isinstance(saved.get("version"), str):
                return str(saved["version"])
        except (OSError, ValueError, AttributeError):
            pass
    version = _ask_version(str(binary))
    if cache is not None:
        cache.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_text(cache, json.dumps({"key": key, "version": version}), mode=0o600)
    return version


def _ask_version(qemu: str) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"cannot run {qemu} --version: {e}", hint="install qemu-system-x86") from None
    first = out.splitlines()[0] if out.strip() else ""
    prefix = "QEMU emulator version "
    if not first.startswith(prefix):
        raise SandboxError(f"{qemu} --version printed {first[:80]!r}, not a QEMU version")
    return first[len(prefix):].strip()
