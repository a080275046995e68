"""Commands on existing sandboxes: stop, rm, snapshot, and the SSH target of exec/ssh (ps, inspect and logs are
query.py's, re-exported here: they must start without this module's imports).

Mutating commands (stop, rm) hold the sandbox's lock; read-only ones (ps, inspect, logs, exec)
never wait for it, so they keep working while a long `run` holds it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from sealbox.errors import NotFound, SandboxError
from sealbox.sandbox import ssh, stepkinds
from sealbox.sandbox import status as st
from sealbox.sandbox.layout import check_access as check_access  # re-exported: its home was here
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.query import console_path as console_path  # ps, inspect and logs: re-exported from query.py
from sealbox.sandbox.query import follow_logs as follow_logs
from sealbox.sandbox.query import inspect as inspect
from sealbox.sandbox.query import ps as ps
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive
from sealbox.sandbox.steps import undo_steps
from sealbox.sandbox.vmm.base import VmmBackend
from sealbox.util.names import check_sandbox_name

log = logging.getLogger("sealbox.control")


def backend_for(record: SandboxRecord) -> VmmBackend:
    name = record.vmm.get("backend")
    if name == "qemu":
        from sealbox.sandbox.vmm.qemu import QemuBackend

        return QemuBackend()
    if name == "firecracker":
        from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend

        return FirecrackerBackend()
    raise SandboxError(f"sandbox {record.name!r} records no known VMM backend ({name!r})", hint="'sealbox rm --force' removes it")


def load(state: StateDir, name: str) -> SandboxRecord:
    check_sandbox_name(name)
    return state.load(name)


# ---- stop / rm --------------------------------------------------------------------------------

def _guest_poweroff(state: StateDir, record: SandboxRecord, deadline: float) -> bool:
    """Ask systemd in the guest to power off (over the sandbox's own SSH) and wait for the VMM to exit.

    The image runs no logind (it would need D-Bus), so nothing in the guest acts on an ACPI power
    button; `systemctl poweroff` over SSH is the graceful path, the backend's own stop the fallback."""
    try:
        t = ssh_target(state, record.name)
    except SandboxError:
        return False
    if ssh.run_in_guest(t, ["systemctl", "poweroff", "--no-block"], timeout=max(1.0, min(10.0, deadline - time.monotonic()))) != 0:
        return False
    pid, start = st.vmm_pid(record)
    while time.monotonic() < deadline:
        if not pid_alive(pid, start):
            return True
        time.sleep(0.2)
    return False


def stop(state: StateDir, name: str, timeout: float = 30.0) -> str:
    """Graceful shutdown (systemctl poweroff over SSH, else ACPI power button / Ctrl-Alt-Del), then kill."""
    with state.lock(name):
        record = load(state, name)
        status = st.derive(record)
        if status in ("stopped", "exited"):
            record.status = "stopped"
            state.save(record)
            return "not running"
        if status != "running":
            raise SandboxError(f"sandbox {name!r} is {status}, not running", hint="remove it with 'sealbox rm' (or 'sealbox gc')")
        deadline = time.monotonic() + timeout
        if _guest_poweroff(state, record, deadline):
            how: str | None = "poweroff"
            backend_for(record).stop(record, 0.5)  # reap/clean the VMM's own leftovers, if any
        else:
            how = backend_for(record).stop(record, max(0.5, deadline - time.monotonic()))
        record.status = "stopped"
        state.save(record)
        return str(how or "stopped")


def remove(state: StateDir, name: str, *, force: bool = False, progress: Callable[[str], None] | None = None) -> list[str]:
    """Undo every recorded step (the VMM first: it is the last step) and delete the state dir.

    A running sandbox is refused unless `force`. Its snapshots stay (remove_snapshots). Returns what was undone."""
    check_sandbox_name(name)
    if not state.exists(name):
        raise NotFound(f"no such sandbox: {name!r}", hint="see 'sealbox ps --all'")
    with state.lock(name):
        try:
            record = state.load(name)
        except SandboxError:
            if not force:
                raise
            return _remove_unreadable(state, name)
        status = st.derive(record)
        if status in st.ACTIVE and not force:
            what = "is running" if status in ("running", "orphaned") else "is being created by a live sealbox process"
            raise SandboxError(f"sandbox {name!r} {what}", hint=f"stop it first ('sealbox stop {name}') or use 'sealbox rm --force {name}'")
        done = [e.kind for e in record.steps.pending_undo()]
        record.status = "removing"
        state.save(record)

        def save() -> None:
            state.save(record)

        stepkinds.load_all()
        problems = undo_steps(record.steps, save)
        if problems:
            record.error = "; ".join(problems)
            save()
            raise SandboxError(f"could not remove everything of {name!r}: {record.error}", hint="retry 'sealbox rm' or run 'sealbox gc'")
        state.delete(name)
        if progress:
            for kind in done:
                progress(f"undid {kind}")
        return done


def remove_snapshots(state: StateDir, name: str) -> list[Path]:
    """Delete the snapshots sandbox `name` of this state dir left in its snapshot directory (it may be gone)."""
    from sealbox.sandbox import snapshot as snap

    check_sandbox_name(name)
    with state.lock(name):
        paths = snap.owned(state, name)
        for p in paths:
            snap.remove(p)
    return paths


def _remove_unreadable(state: StateDir, name: str) -> list[str]:
    """rm --force of a sandbox whose record is unreadable: remove the host objects carrying its mark."""
    from sealbox.sandbox import gc

    removed = gc.remove_by_name(state, name)
    return removed + [f"mount {m}" for m in state.delete(name)]


# ---- snapshot ---------------------------------------------------------------------------------

def snapshot(state: StateDir, name: str, dest: Path | None = None, *, resume: bool = True) -> Path:
    """A snapshot of a running sandbox (QEMU microvm or Firecracker) into `dest` (a new directory; default
    <state>/snapshots/NAME-<UTC time>), by sandbox/snapshot.py. Restore: `run --from-snapshot DIR`."""
    from sealbox.sandbox import snapshot as snap

    return snap.take(state, name, dest, resume=resume).path


# ---- exec / ssh -------------------------------------------------------------------------------

def ssh_target(state: StateDir, name: str, user: str | None = None) -> ssh.SshTarget:
    """The connection facts of a *running* sandbox (clear error otherwise)."""
    record = load(state, name)
    status = st.derive(record)
    if status != "running":
        raise SandboxError(f"sandbox {name!r} is {status}, not running", hint="see 'sealbox ps --all' and 'sealbox logs'")
    if record.guest.get("root_ssh") is False:  # a bob image: its sshd admits no one sealbox holds a key for
        why = str(record.guest.get("root_ssh_off") or "the image has no root SSH")[:300]
        raise SandboxError(f"sandbox {name!r}: no exec/ssh: {why}", hint="stop, rm and logs still work")
    try:
        net = GuestNet.model_validate(record.network)
    except ValidationError:
        raise SandboxError(f"sandbox {name!r} has no network recorded") from None
    key = Path(record.guest.get("client_key") or state.sandbox_dir(name) / "id_ed25519")
    known = Path(record.guest.get("known_hosts") or state.sandbox_dir(name) / ssh.KNOWN_HOSTS)
    for p in (key, known):
        if not p.is_file():
            raise SandboxError(f"{p} is missing", hint=f"the sandbox's state is damaged; recreate it ('sealbox rm --force {name}')")
    return ssh.SshTarget(name=name, netns=net.netns, guest_ip=str(net.guest_ip), key=key, known_hosts=known,
                         state_root=state.root, user=user or str(record.guest.get("user", "root")))


def exec_command(state: StateDir, name: str, command: list[str], *, user: str | None, tty: bool) -> None:
    """Replace this process by ssh running `command` in the guest (exit status = the command's)."""
    t = ssh_target(state, name, user)
    argv = ssh.exec_argv(t, command, user=user, tty=tty, stdin_is_tty=os.isatty(0))
    ssh.exec_in_netns(t.netns, argv)


def interactive(state: StateDir, name: str, *, user: str | None, extra: list[str]) -> None:
    t = ssh_target(state, name, user)
    ssh.exec_in_netns(t.netns, ssh.shell_argv(t, user=user, extra=extra))
