"""The contract between the sandbox manager and a VMM backend (qemu, firecracker).

The manager does the backend-independent host setup (state dir, user, cgroup, netns, TAP, nftables,
instance disk) as steps, then asks the backend for *its* steps (staging files into a jail, starting
the VMM process). The backend's last step starts the VMM; its undo kills it. All steps follow
sealbox.sandbox.steps: recorded before they run, idempotent undo, replayable by `gc`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Protocol

from sealbox.sandbox.model import VmPlan
from sealbox.sandbox.state import SandboxRecord
from sealbox.sandbox.steps import Step


class VmmBackend(Protocol):
    name: ClassVar[str]

    def check_host(self, plan: VmPlan) -> None:
        """Raise a SandboxError with a fix hint if this backend cannot run `plan` on this host."""

    def steps(self, plan: VmPlan) -> list[Step]:
        """Backend-specific host steps, in order; the last one starts the VMM."""

    def log_path(self, plan: VmPlan) -> Path:
        """The VMM's own output (stderr): quoted in errors, since a failed sandbox's files are deleted."""

    def describe(self, plan: VmPlan) -> dict[str, Any]:
        """For --dry-run/inspect: argv, config files, and anything else the backend would do."""

    def stop(self, record: SandboxRecord, timeout: float) -> str | None:
        """Ask the guest to shut down, wait up to `timeout`, then kill the VMM; how it ended, if the backend says."""

    def inspect(self, record: SandboxRecord) -> dict[str, Any]:
        """The VMM's own view of the running VM (QMP query / Firecracker GET /vm/config)."""
