"""The build as an ordered list of named, timed steps; failures name the step."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sealbox.errors import BuildError, SealboxError

Progress = Callable[[str, str, float | None], None]  # (step, state: start|done|skip|fail, seconds)


@dataclass
class StepTiming:
    name: str
    seconds: float
    state: str = "done"
    detail: str = ""


@dataclass
class Pipeline:
    progress: Progress | None = None
    timings: list[StepTiming] = field(default_factory=list)

    def step(self, name: str, fn: Callable[[], Any], *, skip: bool = False, detail: str = "") -> Any:
        if skip:
            self.timings.append(StepTiming(name, 0.0, "skip", detail))
            if self.progress:
                self.progress(name, "skip", None)
            return None
        if self.progress:
            self.progress(name, "start", None)
        t0 = time.monotonic()
        try:
            result = fn()
        except SealboxError as e:
            self.timings.append(StepTiming(name, time.monotonic() - t0, "fail", str(e)))
            if self.progress:
                self.progress(name, "fail", time.monotonic() - t0)
            if isinstance(e, BuildError) and e.message.startswith("step "):
                raise
            raise BuildError(f"step '{name}' failed: {e.message}", hint=e.hint) from e
        except OSError as e:
            self.timings.append(StepTiming(name, time.monotonic() - t0, "fail", str(e)))
            if self.progress:
                self.progress(name, "fail", time.monotonic() - t0)
            where = f" ({e.filename})" if e.filename else ""
            raise BuildError(f"step '{name}' failed: {e.strerror or e}{where}") from e
        dt = time.monotonic() - t0
        self.timings.append(StepTiming(name, dt, "done", detail))
        if self.progress:
            self.progress(name, "done", dt)
        return result

    def summary(self) -> list[dict[str, Any]]:
        return [{"step": t.name, "seconds": round(t.seconds, 3), "state": t.state} for t in self.timings]
