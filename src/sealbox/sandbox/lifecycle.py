"""`sealbox run`: create a sandbox and return once its guest is ready — or undo everything.

Order (each host change is a recorded step; see steps.py):
    check inputs (image, disks, name, backend) -> lock NAME -> reserve the record
    -> network steps (host lease: name, addresses, the sandbox's own uid/gid; netns, nft, tap[, nat])
    -> console tmpfs -> instance files (client key, instance disk)
    -> backend steps (cgroup, run dir/jail, start VMM) -> wait: SEALBOX-READY on the console, host
    keys pinned, SSH banner through the netns -> status running.
Any failure, Ctrl-C or SIGTERM undoes every recorded step in reverse and deletes the sandbox dir;
if an undo fails the record stays (status failed) for `sealbox gc`. A SIGKILLed `run` leaves a record
with status creating and a dead owner, which `gc` replays.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sealbox.errors import SandboxError, SandboxTimeout, SealboxError, UsageError
from sealbox.guest import console as con
from sealbox.sandbox import image as image_mod
from sealbox.sandbox import planning, ssh, stepkinds
from sealbox.sandbox import snapshot as snapshot_mod
from sealbox.sandbox.host.network import lease_of, network_steps
from sealbox.sandbox.instance import KEY_NAME, InstanceFilesStep, discard_prestarted, prestart_client_key
from sealbox.sandbox.model import GuestNet, SandboxSpec
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive, process_start_time
from sealbox.sandbox.steps import Step, apply_steps, undo_steps
from sealbox.util import atomic
from sealbox.util.signals import handled

log = logging.getLogger("sealbox.run")
Say = Callable[[str], None]
POLL = 0.1
TAIL_LINES = 12


class Interrupted(SandboxError):
    """SIGTERM/SIGHUP during run: raised in the main thread so the normal undo path runs."""


@contextlib.contextmanager
def signals_as_errors() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    me = os.getpid()

    def handler(signum: int, _frame: Any) -> None:
        if os.getpid() != me:  # a forked helper (pyroute2 netns worker) inherited this handler: die as usual
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; the sandbox was removed")

    with handled((signal.SIGTERM, signal.SIGHUP), handler):
        yield


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block is done, then deliver them.

    Not by blocking or ignoring them: a signal mask or SIG_IGN would be inherited by the helpers the
    cleanup forks (pyroute2 stops its netns workers with SIGTERM). A forked child that inherits this
    Python handler dies as usual instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    me, pending = os.getpid(), []

    def hold(signum: int, _frame: Any) -> None:
        if os.getpid() != me:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        pending.append(signum)

    old = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in dict.fromkeys(pending):
            os.kill(me, signum)


# ---- inputs -----------------------------------------------------------------------------------

class Inputs:
    """Everything checked before the name is reserved."""

    def __init__(self, spec: SandboxSpec, state: StateDir, *, dry_run: bool, before_probe: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.image = image_mod.load(spec.image_dir)
        self.users = self.image.declared_users()  # `exec -u USER` works for them with the sandbox's key
        self.password_users = self.image.password_users()  # each gets a fresh password (the gui module's desktop)
        planning.check_disks(spec, self.image.dir)
        if state.exists(spec.name):
            raise SandboxError(f"a sandbox named {spec.name!r} already exists",
                               hint=f"choose another --name, or remove it with 'sealbox rm {spec.name}'")
        self.snapshot = None  # a Firecracker snapshot's manifest
        self.qsnap: snapshot_mod.SnapshotManifest | None = None  # a QEMU snapshot's
        if spec.from_snapshot is not None and snapshot_mod.backend_of(spec.from_snapshot) == "qemu":
            self.qsnap = snapshot_mod.load(spec.from_snapshot)
        elif spec.from_snapshot is not None:
            from sealbox.sandbox.vmm.firecracker.snapshot import read_manifest

            self.snapshot = read_manifest(spec.from_snapshot, verify=False)
        known = planning.vmm_without_probe(spec)
        if known is not None:  # the boot files can be checked before the probe (one-line UsageError)
            self.image.boot_files(vmm=known, rootfs=spec.rootfs, firmware=spec.firmware, tdx=spec.tdx, boot=spec.boot)
        if before_probe is not None:
            before_probe()
        self.choice = planning.choose(spec, state.root, dry_run=dry_run)
        # the boot files must exist for the chosen backend/mode (raises a one-line UsageError)
        self.image.boot_files(vmm=self.choice.vmm, rootfs=spec.rootfs, firmware=spec.firmware, tdx=spec.tdx, boot=spec.boot)
        if self.qsnap is not None:
            self._check_qemu_snapshot(self.qsnap, state)

    def _check_qemu_snapshot(self, m: snapshot_mod.SnapshotManifest, state: StateDir) -> None:
        """Another image, QEMU version or machine shape: refused before anything is created."""
        from sealbox.sandbox.vmm.qemu import mode_of, qemu_version

        spec = self.spec
        assert spec.from_snapshot is not None
        if mode_of(spec) != "microvm" or spec.boot != "kernel":
            raise UsageError("--from-snapshot restores microvm sandboxes", hint="drop --firmware/--tdx/--boot")
        shape = snapshot_mod.shape_of(spec, self.choice.accel, guest_mac=m.machine.guest_mac,
                                      instance_disk_size=m.machine.instance_disk_size)
        cache = state.root / "cache" if state.root.is_dir() else None  # a dry run creates nothing
        snapshot_mod.check(m, spec.from_snapshot, image_dir=self.image.dir, shape=shape, vmm_version=qemu_version(cache_dir=cache))

    def fixed_link(self) -> Any:
        """A restored guest keeps the address in its memory: reuse the snapshot's link."""
        if self.snapshot is None:
            return None
        try:
            return GuestNet.model_validate(self.snapshot.network).subnet
        except ValidationError:
            raise UsageError(f"snapshot {self.spec.from_snapshot} records no usable network",
                             hint="take the snapshot with this sealbox version") from None


def _record(spec: SandboxSpec, inp: Inputs, holder: int | None = None) -> SandboxRecord:
    pid = os.getpid()
    return SandboxRecord(
        name=spec.name, status="creating", created_at=time.time(), spec=spec.model_dump(mode="json"),
        image={"dir": str(inp.image.dir), "name": inp.image.name, "kernel_version": inp.image.kernel_version},
        vmm={"backend": inp.choice.vmm, "accel": inp.choice.accel},
        owner_pid=pid, owner_start=process_start_time(pid),
        holder_pid=holder, holder_start=process_start_time(holder) if holder else None,
    )


def _console_step(spec: SandboxSpec, state: StateDir) -> Step:
    from sealbox.sandbox.host.consolefs import ConsoleFsStep

    return ConsoleFsStep(path=str(state.sandboxes / spec.name / planning.CONSOLE_DIR), size_mib=spec.console_max_mib,
                         mark=state.mark(spec.name))


def _disk_claims(spec: SandboxSpec, state: StateDir) -> list[Step]:
    from sealbox.sandbox.host.disklock import claim_steps

    return claim_steps(spec.disks, state.mark(spec.name), str(state.root), spec.name)


def _step_entry(step: Step) -> dict[str, Any]:
    return {"kind": step.kind, "describe": step.describe(), "params": step.model_dump(mode="json")}


# ---- dry run ----------------------------------------------------------------------------------

def dry_run(spec: SandboxSpec, state: StateDir) -> dict[str, Any]:
    """Every host step, the VMM command line and config — computed, nothing created."""
    inp = Inputs(spec, state, dry_run=True)
    net, steps = network_steps(state, spec, dry_run=True, link=inp.fixed_link())
    uid, gid = lease_of(steps).uid, lease_of(steps).gid
    sandbox_dir = state.sandboxes / spec.name
    net = _restored_net(inp, net)
    inst = _instance_step(inp, sandbox_dir, net)
    console = _console_step(spec, state)
    plan = planning.make_plan(spec, inp.image, inp.choice, net, sandbox_dir, uid, gid, planning.cgroup_plan(spec, inp.choice, state.id),
                              incoming=_incoming(inp))
    desc = inp.choice.backend.describe(plan)
    if inp.choice.vmm == "qemu":
        backend_steps = [_step_entry(s) for s in inp.choice.backend.steps(plan)]
    else:
        backend_steps = list(desc.pop("steps"))
    tdx_note = ("--tdx: the TD's MRCONFIGID is the SHA-384 of its instance data, which holds the client key made at run time; "
                "shown as @INSTANCE-DATA-SHA384@")  # fmt: skip
    out: dict[str, Any] = {
        "name": spec.name, "vmm": inp.choice.vmm, "accel": inp.choice.accel,
        "warnings": inp.choice.warnings + ([tdx_note] if spec.tdx else []),
        "image": {"dir": str(inp.image.dir), "name": inp.image.name, "kernel_version": inp.image.kernel_version},
        "network": net.model_dump(mode="json"), "cmdline": plan.cmdline,
        "steps": [_step_entry(s) for s in [*_disk_claims(spec, state), *steps, console, inst]] + backend_steps,
    }
    out.update({k: v for k, v in desc.items() if k not in ("steps", "backend", "accel")})
    return out


# ---- run --------------------------------------------------------------------------------------

def run(spec: SandboxSpec, state: StateDir, *, warn: Say | None = None, progress: Say | None = None,
        holder: int | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Create the sandbox; return a summary once the guest is ready. Raises SealboxError otherwise.

    `holder`: a pid whose death orphans the running sandbox (gc then removes it). `cancel`: polled while
    waiting for the guest; once true, the run is undone as after Ctrl-C (raises Interrupted)."""
    t0 = time.monotonic()
    inp = Inputs(spec, state, dry_run=False, before_probe=planning.require_root)  # the probe caches its result in the state dir
    for w in inp.choice.warnings:
        (warn or log.warning)(w)
    _check_host_name(state, spec.name)
    cgroup = planning.cgroup_plan(spec, inp.choice, state.id)
    with state.lock(spec.name, timeout=10.0):
        record = _record(spec, inp, holder)
        state.reserve(record)  # atomic: a concurrent run of the same name fails here

        def save() -> None:
            state.save(record)

        try:
            with signals_as_errors():
                result = _create(record, save, inp, state, cgroup, t0, progress, cancel)
        except BaseException as e:
            _undo_failed(record, state, save, e)
            raise
    return result


def _check_host_name(state: StateDir, name: str) -> None:
    """Fail early, before anything is reserved, if another state dir holds the name on this host
    (the lease itself re-checks under the registry's lock)."""
    from sealbox.sandbox.host.netnames import netns_name
    from sealbox.sandbox.host.netns import netns_exists
    from sealbox.sandbox.host.registry import Registry

    held = Registry().leases().get(name)
    if held is not None and held.owner != state.mark(name):
        raise SandboxError(f"sandbox name {name!r} is in use on this host by the state dir {held.state_dir}",
                           hint="choose another --name: namespace, table, interface and jail names are host-wide")
    if netns_exists(netns_name(name)):
        raise SandboxError(f"network namespace {netns_name(name)!r} already exists",
                           hint="another state directory or tool uses this name, or one was not cleaned up: 'sealbox gc'")


def _create(record: SandboxRecord, save: Callable[[], None], inp: Inputs, state: StateDir,
            cgroup: Any, t0: float, progress: Say | None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
    spec = inp.spec
    sandbox_dir = state.sandbox_dir(spec.name)
    if inp.snapshot is None:
        prestart_client_key(sandbox_dir / KEY_NAME, f"sealbox-{spec.name}")  # overlaps with the network setup
    apply_steps(_disk_claims(spec, state), record.steps, save, progress)  # a disk in use: refused before anything else
    net, steps = network_steps(state, spec, link=inp.fixed_link())
    net = _restored_net(inp, net)
    uid, gid = lease_of(steps).uid, lease_of(steps).gid  # the sandbox's own VMM identity
    record.network = net.model_dump(mode="json")
    save()
    apply_steps([*steps, _console_step(spec, state)], record.steps, save, progress)
    if inp.snapshot is None:
        inst = _instance_step(inp, sandbox_dir, net)
        apply_steps([inst], record.steps, save, progress)
        key, binding = inst.key_path, record.steps.entries[-1].outputs.get("mrconfigid")
    else:
        assert inp.snapshot is not None and spec.from_snapshot is not None
        key, binding = restore_client_key(spec.from_snapshot, inp.snapshot, sandbox_dir), None
    plan = planning.make_plan(spec, inp.image, inp.choice, net, sandbox_dir, uid, gid, cgroup, create=True, mrconfigid=binding,
                              incoming=_incoming(inp))
    if plan.initrd is not None:
        record.image["boot_initrd"] = str(plan.initrd)  # gc keeps cached initrds that a record names
        save()
    backend = inp.choice.backend
    backend.check_host(plan)
    t_backend = time.monotonic()
    apply_steps(backend.steps(plan), record.steps, save, progress)
    t_vmm = time.monotonic()
    last = record.steps.entries[-1].outputs
    record.vmm.update(pid=last.get("pid"), start_time=last.get("start_time"))
    save()
    known = sandbox_dir / ssh.KNOWN_HOSTS
    if inp.qsnap is not None:
        ready = _finish_restore(inp.qsnap, record, net, known, t0 + spec.timeout)
    else:
        ready = wait_ready(net, plan.console_log, record.vmm.get("pid"), record.vmm.get("start_time"),
                           known_hosts=known, alias=ssh.host_alias(spec.name), deadline=t0 + spec.timeout,
                           timeout=spec.timeout, pinned=_snapshot_hostkeys(inp), vmm_log=backend.log_path(plan), cancel=cancel,
                           port=inp.image.manifest.access.ssh_port)
    record.guest = {
        "boot_id": ready["boot_id"], "hostkeys": ready["hostkeys"], "ssh_banner": ready["banner"],
        "known_hosts": str(known), "client_key": str(key), "user": "root",
        "ready_s": round(time.monotonic() - t_vmm, 3), "run_s": round(time.monotonic() - t0, 3),
        # host-side cost: sealbox's own setup, then the backend's steps up to a VMM that answers
        "setup_s": round(t_backend - t0, 3), "vmm_start_s": round(t_vmm - t_backend, 3),
    }
    if not inp.image.manifest.access.root_ssh:  # a bob image: exec/ssh refuse it (control.ssh_target), stop uses ACPI
        record.guest.update(root_ssh=False, root_ssh_off=inp.image.manifest.access.why or "the image has no root SSH")
    if inp.qsnap is not None:
        record.guest.update(restored_from=str(spec.from_snapshot), renewed_s=ready["renewed_s"], ssh_s=ready["ssh_s"])
    record.status = "running"
    record.owner_pid = record.owner_start = None
    save()
    return {"name": spec.name, "status": "running", "vmm": inp.choice.vmm, "accel": inp.choice.accel,
            "address": str(net.guest_ip), "ready_s": record.guest["ready_s"], "run_s": record.guest["run_s"],
            **({"root_ssh": False} if record.guest.get("root_ssh") is False else {})}


def _restored_net(inp: Inputs, net: GuestNet) -> GuestNet:
    """A restored guest keeps its virtio-net device's MAC (device state): the command line says so too."""
    return net if inp.qsnap is None else net.model_copy(update={"guest_mac": inp.qsnap.machine.guest_mac})


def _instance_step(inp: Inputs, sandbox_dir: Path, net: GuestNet) -> InstanceFilesStep:
    """This sandbox's client key and instance disk; a restore's disk keeps the size the guest's kernel knows."""
    return InstanceFilesStep(sandbox_dir=str(sandbox_dir), hostname=inp.spec.name, address=f"{net.guest_ip}/{net.prefixlen}",
                             gateway=net.host_ip, dns=net.dns, users=tuple(inp.users), password_users=tuple(inp.password_users),
                             disk_size=inp.qsnap.machine.instance_disk_size if inp.qsnap else None)


def _incoming(inp: Inputs) -> Path | None:
    return None if inp.qsnap is None or inp.spec.from_snapshot is None else inp.spec.from_snapshot / snapshot_mod.STATE_FILE


def _finish_restore(m: snapshot_mod.SnapshotManifest, record: SandboxRecord, net: GuestNet, known: Path,
                    deadline: float) -> dict[str, Any]:
    from sealbox.sandbox import restore

    rundir = next(e.params for e in record.steps.entries if e.kind == "qemu-rundir")
    start = next(e.params for e in record.steps.entries if e.kind == "qemu-start")
    return restore.finish(m, qmp_socket=start["qmp_socket"], agent_socket=rundir["agent_socket"],
                          net=net, known_hosts=known, alias=ssh.host_alias(record.name), deadline=deadline)


def restore_client_key(snapshot_dir: Path, manifest: Any, sandbox_dir: Path) -> Path:
    """The restored guest trusts the source sandbox's client key: copy it from the snapshot's own 0600
    file (a snapshot never carries it in its manifest) into this sandbox's key file."""
    name = manifest.client_key
    if not name:
        raise UsageError(f"snapshot {snapshot_dir} carries no client key for its guest", hint="take the snapshot with this sealbox version")
    try:
        fd = os.open(Path(snapshot_dir) / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"snapshot {snapshot_dir}: cannot read its client key file {name}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(64 * 1024)
    if b"PRIVATE KEY" not in data:
        raise UsageError(f"snapshot {snapshot_dir}: {name} is not an OpenSSH private key")
    key = sandbox_dir / KEY_NAME
    atomic.write_bytes(key, data, mode=0o600)
    return key


def _snapshot_hostkeys(inp: Inputs) -> list[con.HostKey] | None:
    if inp.snapshot is None:
        return None
    keys = [k for k in (con.parse_hostkey(f"{con.HOSTKEY} {line}") for line in inp.snapshot.guest.get("hostkeys", [])) if k]
    if not keys:
        raise UsageError(f"snapshot {inp.spec.from_snapshot} records no guest host keys to pin", hint="take the snapshot with this sealbox version")
    return keys


def wait_ready(net: GuestNet, console_log: Path, pid: int | None, start: int | None, *, known_hosts: Path, alias: str,
               deadline: float, timeout: float, pinned: list[con.HostKey] | None = None,
               vmm_log: Path | None = None, cancel: Callable[[], bool] | None = None, port: int = 22) -> dict[str, Any]:
    """Bounded wait for SEALBOX-READY (host keys before it are pinned) and then an SSH banner in the netns (on
    `port`: the image's sshd, e.g. a bob image's control plane port; no login, so it needs no root access).

    `pinned` (snapshot restore): the guest booted long ago and prints nothing; pin these instead."""
    follower = con.ConsoleFollower(console_log)
    wrote_keys = False
    scan = follower.parser.scan
    while True:
        scan = follower.poll()
        if pinned is not None or scan.ready:
            keys = pinned if pinned is not None else scan.hostkeys
            if not keys:
                raise SandboxError(f"the guest printed {con.READY} without any {con.HOSTKEY} line before it",
                                   hint="the image's sealbox-ready unit is broken; rebuild the image")
            if not wrote_keys:
                ssh.write_known_hosts(known_hosts, alias, keys)
                wrote_keys = True
            banner = ssh.probe_ssh(net.netns, str(net.guest_ip), port, timeout=max(0.2, min(2.0, deadline - time.monotonic())))
            if banner:
                return {"boot_id": scan.boot_id, "hostkeys": [k.line() for k in keys], "banner": banner}
        if scan.fatal and not scan.ready and pinned is None:
            raise boot_failure(scan.fatal)
        if pid is not None and not pid_alive(pid, start):
            scan = follower.poll()  # what it wrote just before it exited (a panic reboot ends QEMU at once)
            if scan.fatal and not scan.ready and pinned is None:
                raise boot_failure(scan.fatal)
            own = f"its log: {_tail(vmm_log, 5)}; " if vmm_log is not None else ""  # the log goes with the failed sandbox
            raise SandboxError(f"the VMM exited before the guest was ready; {own}console: {_tail(console_log)}")
        if cancel is not None and cancel():
            raise Interrupted("cancelled while waiting for the guest; the sandbox was removed")
        if time.monotonic() >= deadline:
            what = "SSH did not answer after SEALBOX-READY" if scan.ready or pinned else f"no {con.READY} on the console"
            raise SandboxTimeout(f"the guest was not ready within {timeout:g}s ({what}); console: {_tail(console_log)}",
                               hint="raise --timeout on slow (TCG) hosts")
        time.sleep(POLL)


def boot_failure(fatal: list[str]) -> SandboxError:
    """The guest kernel said it cannot boot: fail now instead of waiting out a reboot loop."""
    if any(line.startswith("Initramfs unpacking failed") for line in fatal):
        hint = "the image's initramfs did not fit in the guest's RAM (it is unpacked into half of it): raise --memory"
    else:
        hint = "the guest kernel panicked or restarted before it was ready; its message above says why"
    return SandboxError(f"the guest did not boot: {'; '.join(fatal)}", hint=hint)


def _tail(path: Path, lines_max: int = TAIL_LINES) -> str:
    lines = con.tail(path, lines_max)
    return " | ".join(lines) if lines else "(empty)"


def _undo_failed(record: SandboxRecord, state: StateDir, save: Callable[[], None], err: BaseException) -> None:
    """Undo everything recorded; delete the sandbox if that worked, else keep it (status failed) for gc."""
    record.error = str(err) or type(err).__name__
    record.status = "failed"
    with contextlib.suppress(OSError):
        save()
    stepkinds.load_all()
    with deferred_signals():  # a second Ctrl-C must not strand half of the cleanup
        problems = undo_steps(record.steps, save)
        discard_prestarted(state.sandbox_dir(record.name))
    if not problems:
        state.delete(record.name)
        return
    save()
    if isinstance(err, SealboxError) and "cleanup left" not in err.message:
        err.message += f" (and cleanup left: {'; '.join(problems)}; run 'sealbox gc')"
