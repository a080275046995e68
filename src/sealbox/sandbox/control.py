"""Commands on existing sandboxes: ps, inspect, logs, stop, rm, and the SSH target of exec/ssh.

Mutating commands (stop, rm) hold the sandbox's lock; read-only ones (ps, inspect, logs, exec)
never wait for it, so they keep working while a long `run` holds it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sealbox.errors import NotFound, SandboxError, UsageError
from sealbox.sandbox import ssh, stepkinds
from sealbox.sandbox import status as st
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.state import SandboxRecord, StateDir, pid_alive
from sealbox.sandbox.steps import undo_steps
from sealbox.sandbox.vmm.base import VmmBackend
from sealbox.util.names import check_sandbox_name

log = logging.getLogger("sealbox.control")
SECRET_KEYS = ("client_key_openssh",)  # never printed by inspect


def check_access(root: Path, command: str) -> None:
    """Sandbox verbs run as root; say so in one line instead of failing deep inside on a root-only file.

    A state directory the caller owns (tests, `--dry-run` with `--state-dir`) is usable without root."""
    if os.geteuid() == 0:
        return
    probe = Path(root).absolute()
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        owner: int | None = probe.stat().st_uid
    except OSError:
        owner = None  # not even visible to this user
    if owner != os.geteuid():
        whose = f"belongs to uid {owner}" if owner is not None else f"is not accessible to uid {os.geteuid()}"
        raise UsageError(f"{command} needs root: the sandbox state directory {root} {whose}",
                         hint=f"run it as root, e.g. sudo {command}")


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


# ---- ps / inspect / logs ------------------------------------------------------------------------

def ps(state: StateDir, *, all_: bool = False) -> list[st.PsRow]:
    rows = []
    for name in state.names():
        try:
            rows.append(st.row(state.load(name)))
        except SandboxError as e:
            rows.append(st.corrupt_row(name, e.message))
    return rows if all_ else [r for r in rows if r.status in st.ACTIVE]


def _redact(obj: Any) -> Any:
    """Secrets never leave through inspect: the keys older records carried, and any private key text."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if k in SECRET_KEYS else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    if isinstance(obj, str) and "PRIVATE KEY" in obj:
        return "<redacted>"
    return obj


def inspect(state: StateDir, name: str) -> dict[str, Any]:
    record = load(state, name)
    status = st.derive(record)
    out: dict[str, Any] = _redact(record.model_dump(mode="json"))
    out["derived_status"] = status
    if status == "exited":
        out["exit_reason"] = st.exit_reason(record)
    out["sandbox_dir"] = str(state.sandbox_dir(name))
    if status == "running":
        try:
            out["vmm_view"] = _redact(backend_for(record).inspect(record))
        except Exception as e:  # noqa: BLE001 - the VMM's own view is best effort
            out["vmm_view"] = {"error": " ".join(str(e).split()) or type(e).__name__}
    return out


def console_path(state: StateDir, name: str) -> Path:
    from sealbox.sandbox.planning import CONSOLE_LOG  # here: planning pulls in the image spec, which `ps` never needs

    return state.sandbox_dir(name) / CONSOLE_LOG


def follow_logs(state: StateDir, name: str, *, follow: bool, poll: float = 0.25,
                max_seconds: float | None = None) -> Iterator[bytes]:
    """Console log chunks; with `follow`, keep going until the VMM exits (then drain), Ctrl-C, the
    sandbox is removed, or `max_seconds` (tests) passes. Each wait is one bounded sleep."""
    record = load(state, name)
    path = console_path(state, name)
    if not path.exists() and not follow:
        return
    offset = 0
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(64 * 1024):
                    offset += len(chunk)
                    yield chunk
        except FileNotFoundError:
            if not follow or not state.exists(name):
                return
        if not follow:
            return
        try:
            record = state.load(name)
        except SandboxError:
            return  # removed meanwhile
        if st.derive(record) not in st.ACTIVE:
            follow = False  # one more pass drains what the VMM wrote before it exited
            continue
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(poll)


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
