"""Ray's experimental sandbox backend interface (`ray.experimental.sandbox.backend.base.BaseSandboxBackend`,
Ray 2.60.0, stability "alpha") over a sealbox fleet: each Ray "sandbox" is a sealbox microVM placed by Ray's
placement groups through sealbox.Fleet, reached through its host's agent.

    backend = FleetSandboxBackend(Fleet("10.0.0.1:6380"))
    sid = backend.create_sandbox(SandboxConfig(image="/srv/images/default", cpu=1, memory="1Gi"))
    backend.exec_command(sid, ["uname", "-r"]).stdout

What Ray's SandboxConfig means here (a VM, not a gVisor container):
    image       a sealbox image directory on the hosts (`sealbox build` output), not an OCI reference
    cpu, memory  the VM's vCPUs (rounded up) and RAM (MiB, rounded up); 0: sealbox's defaults
    env, workdir, shell  applied to every command (as Ray's gVisor backend does); shell runs string commands
    network     "none" only (an isolated sandbox); anything else is refused: sealbox's NAT with an egress
                allow-list has no counterpart in Ray's modes, and "host"/"sandbox" make no sense for a VM
    timeout_seconds  the guest's boot deadline
    rootless, readonly, capabilities  container notions without a counterpart: the guest is a VM in its own
                jail; a non-default capabilities list is refused rather than silently ignored
    ttl_seconds is Ray's SandboxRuntime's (a timer calling delete), not a backend's.
The sandbox id is the sealbox sandbox's name; the adapter keeps each config (env, workdir, shell) in this
process, as the gVisor backend does, so it serves the process that created the sandbox.

Ray 2.60 does not select backends: SandboxRuntime constructs GVisorSandboxBackend itself and pulls an OCI
image before calling it (docs/fleet.md says what Ray would still need).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ray.experimental.sandbox.backend.base import BaseSandboxBackend, ExecResult, SandboxStatus
from ray.experimental.sandbox.exceptions import (
    SandboxCreationError,
    SandboxExecError,
    SandboxNotFoundError,
    SandboxTimeoutError,
)

from sealbox.errors import NotFound, SandboxTimeout, SealboxError
from sealbox.sdk.sandbox import Sandbox, new_name

if TYPE_CHECKING:
    from ray.experimental.sandbox.config import SandboxConfig

    from sealbox.sdk.host import Host

LABEL = "ray-sandbox-backend"  # every sandbox this adapter made carries LABEL=1
STATUS = {"creating": SandboxStatus.PENDING, "running": SandboxStatus.RUNNING, "failed": SandboxStatus.ERROR,
          "corrupt": SandboxStatus.ERROR, "orphaned": SandboxStatus.ERROR}  # others (exited, stopped, lost, ...) ended


@dataclass(frozen=True)
class _Made:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    shell: str = "/bin/bash"


class FleetSandboxBackend(BaseSandboxBackend):  # type: ignore[misc]  # Ray is untyped (Any) here
    """BaseSandboxBackend (Ray 2.60.0) over a sealbox.Fleet (any SDK Host: this machine's LocalHost works the same)."""

    def __init__(self, fleet: Host, image_manager: Any | None = None) -> None:
        super().__init__(image_manager=image_manager)  # Ray's OCI image manager: unused, sealbox images are directories
        self.fleet = fleet
        self._made: dict[str, _Made] = {}
        self._lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def create_sandbox(self, config: SandboxConfig) -> str:
        from ray.experimental.sandbox.config import parse_memory_bytes

        if config.network != "none":
            raise SandboxCreationError(f"network={config.network!r}: a sealbox sandbox here is isolated; only network='none' is supported")
        if config.capabilities is not None:
            raise SandboxCreationError("capabilities: a sealbox guest is a VM; Linux capabilities of a container process do not apply")
        kw: dict[str, Any] = {"timeout_s": float(config.timeout_seconds), "labels": {LABEL: "1"}}
        if config.cpu and config.cpu > 0:
            kw["cpus"] = max(1, math.ceil(config.cpu))
        try:
            mem = parse_memory_bytes(config.memory)
        except (TypeError, ValueError) as e:
            raise SandboxCreationError(f"memory={config.memory!r}: {e}") from None
        if mem:
            kw["memory_mib"] = max(1, math.ceil(mem / (1 << 20)))
        name = new_name("ray")
        try:
            sb = Sandbox.create(config.image, name=name, host=self.fleet, **kw)
        except SandboxTimeout as e:
            raise SandboxCreationError(f"sandbox {name} was not ready within {config.timeout_seconds}s: {e}") from None
        except SealboxError as e:  # ResourceExhausted (no host with room), a bad image, a failed boot
            raise SandboxCreationError(str(e)) from None
        with self._lock:
            self._made[sb.name] = _Made(dict(config.env or {}), config.workdir, config.shell or "/bin/bash")
        return sb.name

    def delete_sandbox(self, sandbox_id: str) -> None:
        try:
            self.fleet.remove(sandbox_id, force=True)
        except NotFound:
            raise SandboxNotFoundError(f"Sandbox ID {sandbox_id!r} not found.") from None
        except SealboxError as e:
            raise SandboxExecError(f"deleting {sandbox_id}: {e}") from None
        finally:
            with self._lock:
                self._made.pop(sandbox_id, None)

    def get_status(self, sandbox_id: str) -> SandboxStatus:
        try:
            status = self.fleet.info(sandbox_id).status
        except NotFound:
            return SandboxStatus.TERMINATED  # as Ray's gVisor backend answers for an unknown id
        except SealboxError:
            return SandboxStatus.ERROR
        return STATUS.get(status, SandboxStatus.TERMINATED)

    # ---- commands and files ------------------------------------------------------------------------
    def _sandbox(self, sandbox_id: str) -> tuple[Sandbox, _Made]:
        with self._lock:
            made = self._made.get(sandbox_id)
        return Sandbox(sandbox_id, self.fleet), made or _Made()

    def exec_command(self, sandbox_id: str, command: str | list[str], timeout: float | None = None, cwd: str | None = None,
                     env: dict[str, str] | None = None, shell: str | None = None, user: str | None = None) -> ExecResult:
        sb, made = self._sandbox(sandbox_id)
        argv = [shell or made.shell, "-c", command] if isinstance(command, str) else list(command)
        try:
            res = sb.commands.run(argv, timeout=timeout, cwd=cwd or made.workdir, env={**made.env, **(env or {})}, user=user)
        except NotFound:
            raise SandboxNotFoundError(f"Sandbox ID {sandbox_id!r} not found.") from None
        except SandboxTimeout:
            raise SandboxTimeoutError(f"command timed out after {timeout} seconds") from None
        except SealboxError as e:
            raise SandboxExecError(str(e)) from None
        return ExecResult(exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr, duration_seconds=res.duration_s)

    def write_file(self, sandbox_id: str, path: str, content: str | bytes, append: bool = False) -> None:
        sb, _made = self._sandbox(sandbox_id)
        data = content.encode() if isinstance(content, str) else bytes(content)
        try:
            if append:  # the path as an argument, never in the script
                res = sb.commands.run(["sh", "-c", 'cat >> "$1"', "sh", path], stdin=data, timeout=None)
                if res.exit_code != 0:
                    raise SandboxExecError(f"appending to {path!r}: {res.stderr.strip()[-300:]}")
            else:
                sb.files.write(path, data)
        except NotFound as e:
            raise SandboxNotFoundError(str(e)) from None
        except SealboxError as e:
            raise SandboxExecError(str(e)) from None

    def read_file(self, sandbox_id: str, path: str) -> bytes:
        sb, _made = self._sandbox(sandbox_id)
        try:
            return sb.files.read(path)
        except NotFound as e:  # no such sandbox, or no such file: sealbox says which
            raise (SandboxNotFoundError if e.message.startswith("no sandbox") else FileNotFoundError)(str(e)) from None
        except SealboxError as e:
            raise SandboxExecError(str(e)) from None
