"""Host setup as named steps with undo — recorded before they run, replayable after a crash.

A Step is a pydantic model: its fields are the *parameters* needed both to create and to remove one
host resource (a netns name, a cgroup path, a pid file...). The sandbox record stores every step as
{kind, params, state, outputs} and is written *before* `do()` runs, so if sealbox dies mid-step, `gc`
can rebuild the step from the record and call `undo()`. Therefore:

- `undo()` must be idempotent and must tolerate the resource being absent or half-created;
- `undo()` may only use the step's params and the `outputs` recorded after `do()` (which may be
  empty if the crash happened before they were saved);
- `undo()` touches only objects carrying the step's ownership mark (host/owner.py): a name alone
  may belong to another state dir or tool.

A `do()` that finds its object already there raises StepRefused: the entry is recorded as
"refused" and never undone, so what someone else made is not removed by our cleanup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from sealbox.errors import SandboxError, SealboxError

log = logging.getLogger("sealbox.steps")

_REGISTRY: dict[str, type[Step]] = {}


class StepRefused(SandboxError):
    """do() found its object already present (another owner's, or a leftover): nothing was created."""


class Step(BaseModel):
    """One host change. Subclasses set `kind` and implement describe/do/undo."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if cls.kind:
            if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
                raise TypeError(f"step kind {cls.kind!r} registered twice")
            _REGISTRY[cls.kind] = cls

    def describe(self) -> str:
        """One line for --dry-run and progress output."""
        return f"{self.kind}: {self.model_dump(mode='json')}"

    def do(self) -> dict[str, Any] | None:
        """Create the resource. May return facts (pids, paths) needed by undo; they are recorded."""
        raise NotImplementedError

    def undo(self, outputs: dict[str, Any]) -> None:
        """Remove the resource; idempotent; must work with `outputs == {}`."""
        raise NotImplementedError


def step_from_record(kind: str, params: dict[str, Any]) -> Step:
    cls = _REGISTRY.get(kind)
    if cls is None:
        raise SandboxError(f"state record names unknown host step kind {kind!r}", hint="was it written by a newer sealbox?")
    return cls.model_validate(params)


class StepEntry(BaseModel):
    """How a step appears in a sandbox record."""

    kind: str
    params: dict[str, Any]
    state: str = "planned"  # planned -> done -> undone; or refused (do() created nothing: never undone)
    outputs: dict[str, Any] = {}
    error: str | None = None


class StepLog(BaseModel):
    """The ordered list of steps of one sandbox; persisted by `save` after every transition."""

    entries: list[StepEntry] = []

    def pending_undo(self) -> list[StepEntry]:
        return [e for e in reversed(self.entries) if e.state in ("planned", "done")]


Saver = Callable[[], None]


def apply_steps(steps: Iterable[Step], log_: StepLog, save: Saver, progress: Callable[[str], None] | None = None) -> None:
    """Run steps in order, recording each before it runs. On failure undo everything and re-raise."""
    for step in steps:
        entry = StepEntry(kind=step.kind, params=step.model_dump(mode="json"))
        log_.entries.append(entry)
        save()  # recorded *before* the resource exists
        if progress:
            progress(step.describe())
        try:
            outputs = step.do() or {}
        except BaseException as e:
            entry.error = str(e)
            if isinstance(e, StepRefused):
                entry.state = "refused"
            save()
            problems = undo_steps(log_, save)
            if isinstance(e, SealboxError) and problems:
                e.message += f" (and cleanup left: {'; '.join(problems)}; run 'sealbox gc')"
            raise
        entry.state = "done"
        entry.outputs = outputs
        save()


def undo_steps(log_: StepLog, save: Saver) -> list[str]:
    """Undo every planned/done step in reverse order. Returns the problems that remain (for gc to retry)."""
    problems: list[str] = []
    for entry in log_.pending_undo():
        try:
            step_from_record(entry.kind, entry.params).undo(entry.outputs)
        except Exception as e:  # noqa: BLE001 - keep going: one stuck resource must not strand the others
            log.warning("undo of %s failed: %s", entry.kind, e)
            entry.error = f"undo failed: {e}"
            problems.append(f"{entry.kind}: {e}")
        else:
            entry.state = "undone"
            entry.error = None
        save()
    return problems
