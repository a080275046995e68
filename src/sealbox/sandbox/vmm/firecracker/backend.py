"""FirecrackerBackend: a VmPlan -> jail staging + jailer start steps; stop/inspect/pause/resume/snapshot.

The manager has already created the sandbox's netns (`sealbox-<name>`) with `tap0`; the jailer joins
that netns and creates the cgroups (`<hierarchy>/<exec_file_name>/<id>`); the id is the sandbox name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.host import cgroups
from sealbox.sandbox.model import Limits, VmPlan
from sealbox.sandbox.state import SandboxRecord, pid_alive
from sealbox.sandbox.steps import Step
from sealbox.sandbox.vmm.firecracker import config as C
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker import snapshot as S
from sealbox.sandbox.vmm.firecracker.api import FirecrackerClient
from sealbox.sandbox.vmm.firecracker.launch import FirecrackerJailerStep, stop_vm
from sealbox.sandbox.vmm.firecracker.settings import ENV, FirecrackerSettings
from sealbox.sandbox.vmm.firecracker.staging import FirecrackerStageStep, StageDrive, StageFile, check_chroot_base, writable_stage_file
from sealbox.util.digest import sha256_file

ELF_MAGIC = b"\x7fELF"


class FirecrackerBackend:
    name: ClassVar[str] = "firecracker"

    def __init__(self, settings: FirecrackerSettings | None = None) -> None:
        self.settings = settings or FirecrackerSettings.from_env()

    def log_path(self, plan: VmPlan) -> Path:
        return plan.sandbox_dir / "firecracker.stderr"

    # building blocks ---------------------------------------------------------------------------
    def layout(self, plan: VmPlan) -> J.JailLayout:
        return J.JailLayout(chroot_base=self.settings.chroot_base, exec_name=self.settings.exec_name(),
                            jail_id=J.check_jail_id(plan.spec.name))

    def _binaries(self) -> tuple[Path, Path]:
        s = self.settings
        fc = s.firecracker_path() or s.firecracker or Path("firecracker")
        jl = s.jailer_path() or s.jailer or Path("jailer")
        return fc, jl

    def firecracker_args(self, restoring: bool) -> tuple[str, ...]:
        args = ["--api-sock", J.API_SOCK]
        if restoring:  # a config file would boot a fresh guest; logger and metrics go on the command line
            args += ["--log-path", J.LOG_FILE, "--level", self.settings.log_level, "--show-level",
                     "--metrics-path", J.METRICS_FILE]
        else:
            args += ["--config-file", J.CONFIG_FILE]
        return tuple(args)

    def jailer_args(self, plan: VmPlan) -> J.JailerArgs:
        fc, jl = self._binaries()
        return J.JailerArgs(
            jailer=jl, exec_file=fc, jail_id=J.check_jail_id(plan.spec.name), uid=plan.uid, gid=plan.gid,
            chroot_base=self.settings.chroot_base, netns=J.netns_path(plan.net.netns),
            cgroup_version=plan.cgroup.version, parent_cgroup=cgroups.jailer_parent(plan.cgroup),
            # systemd: the scope carries the limits and the jailer just moves into it (no --cgroup values)
            cgroups=() if plan.cgroup.manager == "systemd" else tuple(J.cgroup_properties(plan.cgroup)),
            no_file=plan.spec.limits.nofile, daemonize=False, new_pid_ns=True,
            firecracker_args=self.firecracker_args(plan.spec.from_snapshot is not None))

    def config(self, plan: VmPlan) -> dict[str, Any] | None:
        if plan.spec.from_snapshot is not None:
            return None
        cfg = C.build_config(plan, self.settings.log_level)
        C.validate_config(cfg, self.settings.api_spec)
        return cfg

    def _stage_files(self, plan: VmPlan, probe: bool) -> list[StageFile]:
        if plan.spec.from_snapshot is not None:
            manifest = S.read_manifest(plan.spec.from_snapshot, verify=probe)
            return S.restore_files(plan.spec.from_snapshot, manifest)
        out = []
        for f in C.staged_files(plan):
            if f.writable and probe:
                out.append(writable_stage_file(f.source, f.in_jail))
            else:
                out.append(StageFile(source=f.source, in_jail=f.in_jail, writable=f.writable))
        return out

    @staticmethod
    def _drives(plan: VmPlan, config: dict[str, Any] | None) -> tuple[StageDrive, ...]:
        """The guest's drives as sealbox configured them: what a snapshot copies (never the VMM's account)."""
        if config is not None:
            return tuple(StageDrive(drive_id=d["drive_id"], in_jail=d["path_on_host"], read_only=d["is_read_only"],
                                    is_root_device=d["is_root_device"]) for d in config["drives"])
        assert plan.spec.from_snapshot is not None
        m = S.read_manifest(plan.spec.from_snapshot, verify=False)
        return tuple(StageDrive(drive_id=d.drive_id, in_jail=d.in_jail, read_only=d.read_only, is_root_device=d.is_root_device)
                     for d in m.drives)

    def _steps(self, plan: VmPlan, probe: bool) -> list[Step]:
        C.check_plan(plan)
        lay = self.layout(plan)
        args = self.jailer_args(plan)
        restoring = plan.spec.from_snapshot is not None
        owner = str(plan.sandbox_dir)
        config = self.config(plan)
        stage = FirecrackerStageStep(
            layout=lay, owner=owner, uid=plan.uid, gid=plan.gid, files=tuple(self._stage_files(plan, probe)),
            config=config, config_in_jail=J.CONFIG_FILE, empty_files=(J.LOG_FILE, J.METRICS_FILE),
            empty_dirs=(J.SNAPSHOT_DIR,), drives=self._drives(plan, config))
        restore = None
        if restoring:
            restore = {"snapshot_path": S.IN_JAIL_VMSTATE, "mem_file_path": S.IN_JAIL_MEMORY,
                       "iface_id": C.IFACE_ID, "host_dev_name": plan.net.tap}
        scope = cgroups.CgroupStep.from_plan(plan.cgroup, cgroups.detect()) if plan.cgroup.manager == "systemd" else None
        start = FirecrackerJailerStep(
            argv=tuple(J.jailer_argv(args)), layout=lay, owner=owner, netns=args.netns, console_log=plan.console_log,
            stderr_log=self.log_path(plan), cgroup_version=plan.cgroup.version,
            cgroup_controllers=tuple(J.controllers(list(args.cgroups))), cgroup_parent=args.parent_cgroup,
            launcher=tuple(scope.launch_prefix()) if scope else (), start_timeout=self.settings.start_timeout,
            api_timeout=self.settings.api_timeout, restore=restore)
        return [*([scope] if scope else []), stage, start]

    # VmmBackend ----------------------------------------------------------------------------------
    def check_host(self, plan: VmPlan) -> None:
        C.check_plan(plan)
        s = self.settings
        for name, path, explicit, pinned, var, sha_var in (
            ("firecracker", s.firecracker_path(), s.firecracker, s.firecracker_sha256, ENV["firecracker"], ENV["firecracker_sha256"]),
            ("jailer", s.jailer_path(), s.jailer, s.jailer_sha256, ENV["jailer"], ENV["jailer_sha256"]),
        ):
            if path is None:
                where = f"{var}={explicit} does not exist" if explicit else "it is not on PATH"
                raise SandboxError(f"--vmm firecracker needs the {name} binary, but {where}",
                                   hint=f"install Firecracker v1.16 and set {var}, or use --vmm qemu")
            if pinned is not None and sha256_file(path) != pinned:
                raise SandboxError(f"{name} at {path} does not match {sha_var}",
                                   hint="reinstall the pinned release or update the pin after verifying it")
        if plan.accel != "kvm":
            raise SandboxError("Firecracker needs KVM, but this sandbox was planned for TCG", hint="use --vmm qemu on hosts without working KVM")
        if not Path("/dev/kvm").exists():
            raise SandboxError("/dev/kvm does not exist", hint="load kvm_intel/kvm_amd or use --vmm qemu")
        check_chroot_base(s.chroot_base)
        if plan.spec.from_snapshot is None:
            try:
                with open(plan.kernel, "rb") as f:
                    magic = f.read(4)
            except OSError as e:
                raise SandboxError(f"kernel {plan.kernel}: {e.strerror}") from None
            if magic != ELF_MAGIC:
                raise SandboxError(f"kernel {plan.kernel} is not an ELF vmlinux",
                                   hint="Firecracker on x86_64 boots the uncompressed vmlinux of the image build")
        else:
            S.read_manifest(plan.spec.from_snapshot, verify=False)

    def steps(self, plan: VmPlan) -> list[Step]:
        return self._steps(plan, probe=True)

    def describe(self, plan: VmPlan) -> dict[str, Any]:
        """What would run: no binaries and no image files are needed to answer."""
        steps = self._steps(plan, probe=False)
        stage = next(s for s in steps if isinstance(s, FirecrackerStageStep))
        start = next(s for s in steps if isinstance(s, FirecrackerJailerStep))
        out: dict[str, Any] = {
            "jailer_argv": [*start.launcher, *start.argv],
            "config": stage.config,
            "steps": [{"kind": st.kind, "describe": st.describe(), "params": st.model_dump(mode="json")} for st in steps],
            "jail": str(self.layout(plan).root),
            "api_sock": str(self.layout(plan).api_sock),
        }
        if plan.spec.from_snapshot is not None:
            out["restore"] = start.restore
        return out

    def stop(self, record: SandboxRecord, timeout: float) -> None:
        r = running(record)
        if r is not None:
            stop_vm(r.api_sock, r.pid, r.start_time, timeout, jail_root=r.jail_root)

    def inspect(self, record: SandboxRecord) -> dict[str, Any]:
        r = running(record)
        if r is None:
            return {"state": "not running"}
        client = r.client(self.settings.api_timeout)
        return {"instance": client.describe_instance(), "vm_config": client.vm_config(), "machine_config": client.machine_config()}

    # extras for the CLI --------------------------------------------------------------------------
    def client(self, record: SandboxRecord) -> FirecrackerClient:
        r = running(record)
        if r is None:
            raise SandboxError(f"sandbox {record.name!r} is not running")
        return r.client(self.settings.api_timeout)

    def pause(self, record: SandboxRecord) -> None:
        self.client(record).pause()

    def resume(self, record: SandboxRecord) -> None:
        self.client(record).resume()

    def set_rate_limits(self, record: SandboxRecord, limits: Limits) -> None:
        """Live rate-limit change: PATCH every rate-limited drive and the network interface."""
        client = self.client(record)
        disk = C.rate_limiter(limits.disk_bytes, limits.disk_ops, "disk")
        stage_entry, _ = firecracker_entries(record)
        drives = FirecrackerStageStep.model_validate(stage_entry.params).drives if stage_entry else ()
        for d in drives:  # the drives sealbox configured, not the VMM's account of them
            if d.drive_id != C.DRIVE_INSTANCE and disk:
                client.patch_drive(d.drive_id, rate_limiter=disk)
        rx = C.rate_limiter(limits.net_rx_bytes, None, "net rx")
        tx = C.rate_limiter(limits.net_tx_bytes, None, "net tx")
        if rx or tx:
            client.patch_network_interface(C.IFACE_ID, rx_rate_limiter=rx, tx_rate_limiter=tx)

    def snapshot(self, record: SandboxRecord, dest: Path, resume: bool = True) -> S.SnapshotManifest:
        r = running(record)
        if r is None:
            raise SandboxError(f"sandbox {record.name!r} is not running; only a running sandbox can be snapshotted")
        stage_entry, _ = firecracker_entries(record)
        if stage_entry is None:
            raise SandboxError(f"sandbox {record.name!r} has no Firecracker staging step in its record")
        stage = FirecrackerStageStep.model_validate(stage_entry.params)
        methods = stage_entry.outputs.get("staged") or {}
        sources = {f.in_jail: f.source for f in stage.files}
        drives = []
        for d in stage.drives:
            if d.in_jail not in sources or methods.get(d.in_jail) not in ("link", "copy"):
                raise SandboxError(f"sandbox {record.name!r}: the record does not say how drive {d.drive_id} was staged")
            drives.append(S.JailDrive(drive_id=d.drive_id, in_jail=d.in_jail, read_only=d.read_only, is_root_device=d.is_root_device,
                                      staged=methods[d.in_jail], source=sources[d.in_jail]))
        key = record.guest.get("client_key")
        client = r.client(self.settings.api_timeout)
        return S.create_snapshot(client, r.layout, dest, source=record.name, uid=stage.uid, drives=drives,
                                 client_key=Path(key) if key else None, resume=resume,
                                 network=record.network, guest=record.guest, spec=record.spec)


class Running:
    def __init__(self, layout: J.JailLayout, api_sock: Path, pid: int, start_time: int | None) -> None:
        self.layout, self.api_sock, self.pid, self.start_time = layout, api_sock, pid, start_time

    @property
    def jail_root(self) -> Path | None:
        """Set when the API socket lies in the jail (always, for sockets sealbox recorded): its path is
        then resolved without following the VMM's symlinks."""
        return self.layout.root if self.api_sock.is_relative_to(self.layout.root) else None

    def client(self, timeout: float) -> FirecrackerClient:
        return FirecrackerClient(self.api_sock, timeout, jail_root=self.jail_root)


def firecracker_entries(record: SandboxRecord) -> tuple[Any, Any]:
    stage = next((e for e in record.steps.entries if e.kind == FirecrackerStageStep.kind), None)
    start = next((e for e in record.steps.entries if e.kind == FirecrackerJailerStep.kind), None)
    return stage, start


def running(record: SandboxRecord) -> Running | None:
    """The live Firecracker of a record, or None; a record without Firecracker steps is a usage error."""
    stage, start = firecracker_entries(record)
    if start is None:
        raise UsageError(f"sandbox {record.name!r} does not run under Firecracker",
                         hint="pause/resume/snapshot need a sandbox started with --vmm firecracker")
    if start.state != "done" or not start.outputs.get("pid"):
        return None
    pid, st = int(start.outputs["pid"]), start.outputs.get("start_time")
    if not pid_alive(pid, st):
        return None
    lay = J.JailLayout.model_validate(start.params["layout"])
    return Running(lay, Path(start.outputs.get("api_sock") or lay.api_sock), pid, st)
