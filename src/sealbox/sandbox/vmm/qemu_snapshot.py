"""QEMU's side of snapshots: save a running guest's state into a file descriptor, and finish loading one.

QEMU 7.2 migrates into and out of file descriptors only (`file:` came later; `exec:` needs a shell, which its seccomp
sandbox refuses). Saving: root opens the snapshot's state file and hands it over QMP (`getfd`, SCM_RIGHTS), stops the
vCPUs and runs `migrate fd:NAME`; the state is written by the jailed VMM through that one descriptor. Loading: the
restoring QEMU is started with `-incoming fd:N` (the launcher places root's read-only descriptor of the state file at
N) and ends up paused, because the guest was paused when it was saved: the host finishes its checks, then `cont`.
The VMM is hostile once its guest may own it: nothing it reports is trusted beyond "done" or "failed" here, and the
state file it writes is only copied and hashed by the host, never parsed.
"""

from __future__ import annotations

import time
from typing import Any

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.qmp import QmpClient, QmpError

FD_NAME = "sealbox-snapshot"
MAX_BANDWIDTH = 1 << 40  # bytes/s: the default (128 MiB/s) throttles a save into a local file for nothing
POLL = 0.02


def _wait_migration(q: QmpClient, deadline: float, what: str) -> dict[str, Any]:
    while True:
        info = q.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return dict(info)
        if status in ("failed", "cancelled"):
            raise SandboxError(f"QEMU could not {what}: {str(info.get('error-desc', status))[:200]}")
        if time.monotonic() >= deadline:
            raise SandboxError(f"QEMU did not {what} in time (migration status {status!r})")
        time.sleep(POLL)


def save(qmp_socket: str, fd: int, *, resume: bool, timeout: float) -> bool:
    """Write the guest's memory and device state into `fd` (vCPUs stopped meanwhile). Returns whether the guest was
    running; it runs again afterwards if it was and `resume`. Raises SandboxError if QEMU could not."""
    deadline = time.monotonic() + timeout
    with QmpClient(qmp_socket, timeout=min(10.0, timeout)) as q:
        status = q.execute("query-status")
        was_running = isinstance(status, dict) and status.get("status") == "running"
        if not was_running and not (isinstance(status, dict) and status.get("status") == "paused"):
            raise SandboxError(f"QEMU's guest is {status.get('status') if isinstance(status, dict) else status!r}: not running or paused")
        q.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
        q.execute("stop")
        try:
            q.execute("getfd", {"fdname": FD_NAME}, fds=[fd])
            q.execute("migrate", {"uri": f"fd:{FD_NAME}"})
            _wait_migration(q, deadline, "save the guest's state")
        finally:
            if was_running and resume:
                try:
                    q.execute("cont")  # from postmigrate (or paused, after a failure): the source runs on
                except QmpError as e:
                    raise SandboxError(f"the snapshot's source could not be resumed: {e}", hint="'sealbox stop' it") from None
    return was_running


def finish_incoming(qmp_socket: str, deadline: float) -> None:
    """Wait until a restoring QEMU has loaded the whole state (it stays paused); raise if the load failed."""
    with QmpClient(qmp_socket, timeout=max(1.0, min(10.0, deadline - time.monotonic()))) as q:
        while True:
            status = q.execute("query-status")
            state = status.get("status") if isinstance(status, dict) else None
            if state == "paused":
                _wait_migration(q, deadline, "load the snapshot's state")
                return
            if state not in ("inmigrate", "prelaunch"):
                raise SandboxError(f"the restoring QEMU is {state!r}, not paused after loading the snapshot")
            if time.monotonic() >= deadline:
                raise SandboxError("QEMU did not load the snapshot's state in time")
            time.sleep(POLL)


def cont(qmp_socket: str) -> None:
    with QmpClient(qmp_socket, timeout=10.0) as q:
        q.execute("cont")
