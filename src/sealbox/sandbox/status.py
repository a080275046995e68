"""What state a sandbox is really in: the record's status checked against the live processes.

The record says what sealbox last did; processes can die since (kill -9, OOM, guest poweroff). So
`ps`, `rm` and `gc` derive the status from the record *and* the liveness of two processes, each
identified by pid + start time (a reused pid never counts as alive):
  - the VMM (record.vmm pid/start_time, written once the VMM started);
  - the sealbox process creating the sandbox (record.owner_pid/owner_start);
  - for a running one, the process holding it, if any (record.holder_pid/holder_start: an SDK pool's owner).

No pydantic here (`sealbox ps` imports this module): a record's free-form fields (spec, vmm, step outputs) may hold
any JSON, so each value is taken only if it has the type sealbox writes there, and is shown as unknown otherwise.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from sealbox.errors import SealboxError
from sealbox.util.procs import pid_alive

if TYPE_CHECKING:
    from sealbox.sandbox.recordview import RecordView
    from sealbox.sandbox.state import SandboxRecord

    Record = SandboxRecord | RecordView  # the model, or the same record read without pydantic (recordview.py)

Status = Literal["creating", "running", "orphaned", "exited", "stopped", "failed", "removing", "abandoned", "corrupt"]
# statuses that hold a running (or starting) VM: `ps` shows them without --all, `rm` refuses them
ACTIVE: frozenset[str] = frozenset({"creating", "running", "orphaned"})

Alive = Callable[[int | None, int | None], bool]


def _int(value: Any) -> int | None:
    return value if type(value) is int else None  # not a bool, not "12", not [12]: no pid, no size


def vmm_pid(record: Record) -> tuple[int | None, int | None]:
    return _int(record.vmm.get("pid")), _int(record.vmm.get("start_time"))


def _cgroup_dirs(record: Record) -> list[Path]:
    """The VMM's cgroup directories, from the record alone (they stay until `rm`)."""
    dirs: list[Path] = []
    for e in record.steps.entries:
        if e.kind == "cgroup" and e.state == "done":
            found = e.outputs.get("dirs", [])
            dirs += [Path(d) for d in found if isinstance(d, str)] if isinstance(found, list) else []
        elif e.kind == "firecracker-jailer" and e.state == "done":
            from sealbox.sandbox.vmm.firecracker import jailer as J

            p, lay = e.params, e.params.get("layout", {})
            try:
                dirs += J.jailer_cgroup_dirs(int(p["cgroup_version"]), list(p.get("cgroup_controllers", [])),
                                             str(lay["exec_name"]), str(lay["jail_id"]), parent=p.get("cgroup_parent"))
            except (KeyError, ValueError, TypeError, SealboxError):
                continue  # a record written by someone else: no reason rather than a crash
    return dirs


def oom_kills(dirs: list[Path]) -> int | None:
    """Processes the kernel's OOM killer killed in these cgroups because of their memory limit: the
    `oom_kill` count of memory.events (v2, includes descendants) or memory.oom_control (v1, kernel >=
    4.13). None if no directory has one (gone, or no memory controller)."""
    found: int | None = None
    for d in dirs:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = (d / name).read_text()
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and value.strip().isdigit():
                    found = (found or 0) + int(value)
    return found


def exit_reason(record: Record) -> str | None:
    """Why an exited VMM is gone, when the host can tell: the cgroup's OOM kill count."""
    kills = oom_kills(_cgroup_dirs(record))
    return "oom-killed: the cgroup memory limit was reached" if kills else None


_AS_WRITTEN: dict[str, Status] = {"stopped": "stopped", "failed": "failed", "removing": "removing"}  # need no probe


def derive(record: Record, alive: Alive = pid_alive) -> Status:
    """The real status; pure given `alive` (tests pass a fake)."""
    s = record.status
    if s == "creating":
        # a creator that died (kill -9, power loss) leaves a half-made sandbox only gc may remove
        return "creating" if alive(record.owner_pid, record.owner_start) else "abandoned"
    if s == "running":
        if not alive(*vmm_pid(record)):
            return "exited"
        if record.holder_pid is not None and not alive(record.holder_pid, record.holder_start):
            return "orphaned"  # the process it was created for (a pool's owner) died: nobody will remove it
        return "running"
    return _AS_WRITTEN.get(s, "failed")  # an unknown status written by someone else: treat as broken


@dataclass
class PsRow:
    """One row of `sealbox ps` (the SDK's SandboxInfo): plain data, as `model_dump()` gives it to JSON."""

    name: str
    status: str
    vmm: str = "-"
    accel: str = "-"
    address: str = "-"
    cpus: int | None = None
    memory_mib: int | None = None
    image: str = "-"
    created_at: float = 0.0
    error: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    reason: str | None = None  # why an exited sandbox exited, if the host can tell (exit_reason)
    ports: list[str] = field(default_factory=list)  # published ports as bound ('127.0.0.1:8080->80/tcp'; host/publish.py)

    def model_dump(self) -> dict[str, Any]:
        """The fields as a dict (the name pydantic models use: a row was one, and callers keep calling it so)."""
        return dataclasses.asdict(self)

    @classmethod
    def model_validate(cls, data: Any) -> Self:
        """A row from untrusted data (another host's answer), every field type-checked; ValidationError if not."""
        from pydantic import TypeAdapter

        row: Self = TypeAdapter(cls).validate_python(data)
        return row

    def created(self, now: float | None = None) -> str:
        if not self.created_at:
            return "-"
        age = max(0.0, (now or time.time()) - self.created_at)
        for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
            if age >= secs:
                return f"{int(age // secs)}{unit} ago"
        return f"{int(age)}s ago"


def published(record: Record) -> list[str]:
    """The published ports of a record with the host ports the kernel gave (the net.publish step's outputs)."""
    for e in record.steps.entries:
        if e.kind == "net.publish" and e.state == "done":
            ports = e.outputs.get("published", [])
            return [str(x) for x in ports] if isinstance(ports, list) else []
    return []


def row(record: Record, alive: Alive = pid_alive) -> PsRow:
    spec: dict[str, Any] = record.spec or {}
    net = record.network or {}
    status = derive(record, alive)
    return PsRow(
        name=record.name, status=status, reason=exit_reason(record) if status == "exited" else None, vmm=str(record.vmm.get("backend", "-")),
        accel=str(record.vmm.get("accel", "-")), address=str(net.get("guest_ip", "-")),
        cpus=_int(spec.get("cpus")), memory_mib=_int(spec.get("memory_mib")), image=str(record.image.get("name", "-")),
        created_at=record.created_at, error=record.error, labels=_labels(spec), ports=published(record),
    )


def _labels(spec: dict[str, Any]) -> dict[str, str]:
    labels = spec.get("labels")
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def corrupt_row(name: str, error: str) -> PsRow:
    return PsRow(name=name, status="corrupt", error=error)


def table(rows: list[PsRow], now: float | None = None, hosts: Mapping[str, str] | None = None) -> str:
    """`sealbox ps`; `hosts` (a fleet's: sandbox name -> host) adds a HOST column after the name."""
    head: tuple[str, ...] = ("NAME", "STATUS", "VMM", "ACCEL", "ADDRESS", "CPUS", "MEM", "IMAGE", "CREATED", "PORTS")
    body: list[tuple[str, ...]] = [
        (r.name, f"{r.status} ({r.reason.split(':')[0]})" if r.reason else r.status, r.vmm, r.accel, r.address, str(r.cpus or "-"),
         f"{r.memory_mib}M" if r.memory_mib else "-", r.image, r.created(now), ", ".join(r.ports))
        for r in rows
    ]
    if hosts is not None:
        head = (head[0], "HOST", *head[1:])
        body = [(line[0], hosts.get(r.name, "-"), *line[1:]) for line, r in zip(body, rows, strict=True)]
    if any(r.labels for r in rows):  # the column only when someone uses labels
        head += ("LABELS",)
        body = [(*line, ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "-") for line, r in zip(body, rows, strict=True)]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body))
