"""Where a state directory keeps what, and who may read it — without pydantic, so `ps`, `inspect` and `logs` start
fast (state.StateDir adds locking and the record's writer on top of this layout).

    sandboxes/<name>/record.json            the SandboxRecord (spec, status, host steps, pids)
    sandboxes/<name>/console/console.log    the serial console, on a size-capped tmpfs (host/consolefs.py)
    sandboxes/<name>/...                    other per-sandbox files (keys, sockets, instance disk)
    locks/<name>.lock                       flock target; outside the sandbox dir so `rm` can delete that dir
"""

from __future__ import annotations

import os
from pathlib import Path

from sealbox.errors import UsageError
from sealbox.util.names import NAME_RE, check_sandbox_name

DEFAULT_STATE_DIR = Path("/var/lib/sealbox")
CONSOLE_DIR = "console"  # a size-capped tmpfs (host/consolefs.py)
CONSOLE_LOG = f"{CONSOLE_DIR}/console.log"


def state_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get("SEALBOX_STATE_DIR") or DEFAULT_STATE_DIR)


def check_access(root: Path, command: str) -> None:
    """Sandbox verbs run as root; say so in one line instead of failing deep inside on a root-only file.

    A state directory the caller owns (tests, `--dry-run` with `--state-dir`) is usable without root."""
    if os.geteuid() == 0:
        return
    probe = Path(root).absolute()
    try:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        uid: int | None = probe.stat().st_uid
    except OSError:
        uid = None  # not even visible to this user
    if uid != os.geteuid():
        whose = f"belongs to uid {uid}" if uid is not None else f"is not accessible to uid {os.geteuid()}"
        raise UsageError(f"{command} needs root: the sandbox state directory {root} {whose}",
                         hint=f"run it as root, e.g. sudo {command}")


class StateLayout:
    """The paths of one state directory; every name is checked before it becomes a path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()  # marks and Firecracker's jail owner files name it

    @property
    def id(self) -> str:
        """The state dir's part of every ownership mark (host/owner.py)."""
        from sealbox.sandbox.host import owner  # here: it imports hashlib (OpenSSL), which the read verbs never need

        return owner.state_id(self.root)

    def mark(self, name: str) -> str:
        """The ownership mark of sandbox `name` of this state dir on host objects."""
        from sealbox.sandbox.host import owner

        return owner.mark(self.root, check_sandbox_name(name))

    @property
    def sandboxes(self) -> Path:
        return self.root / "sandboxes"

    def sandbox_dir(self, name: str) -> Path:
        return self.sandboxes / check_sandbox_name(name)

    def record_path(self, name: str) -> Path:
        return self.sandbox_dir(name) / "record.json"

    def console_log(self, name: str) -> Path:
        return self.sandbox_dir(name) / CONSOLE_LOG

    def exists(self, name: str) -> bool:
        return self.sandbox_dir(name).is_dir()

    def names(self) -> list[str]:
        """The sandboxes: directories with a sandbox name (reserve() makes no other; anything else is not ours)."""
        if not self.sandboxes.is_dir():
            return []
        return sorted(p.name for p in self.sandboxes.iterdir() if NAME_RE.fullmatch(p.name) and p.is_dir())
