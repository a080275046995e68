"""The build as an ordered list of named, timed steps; failures name the step.

Each step's tool calls are recorded in the build's transcript (util.run.transcript), so a failed build can
keep the whole log, not just the error's tail. The test hook SEALBOX_TEST_STOP_BEFORE=<step> stops the
build process (SIGSTOP) at that step boundary, so tests can SIGKILL or SIGTERM it exactly there; the
boundaries after the last step are `commit` and `end`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.errors import BuildError, SealboxError
from sealbox.util.run import transcript

Progress = Callable[[str, str, float | None], None]  # (step, state: start|done|skip|fail, seconds)
STOP_ENV = "SEALBOX_TEST_STOP_BEFORE"


def boundary(name: str) -> None:
    """The test hook: stop here if asked (the test then signals us), then carry on when continued."""
    if os.environ.get(STOP_ENV) == name:
        sys.stderr.write(f"sealbox: test hook: stopped before {name} (pid {os.getpid()})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class StepTiming:
    name: str
    seconds: float
    state: str = "done"
    detail: str = ""


@dataclass
class Pipeline:
    progress: Progress | None = None
    log: Path | None = None
    timings: list[StepTiming] = field(default_factory=list)

    def _say(self, name: str, state: str, seconds: float | None) -> None:
        if self.progress:
            self.progress(name, state, seconds)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"=== {name}: {state}" + (f" ({seconds:.1f}s)" if seconds is not None else "") + "\n")

    def step(self, name: str, fn: Callable[[], Any], *, skip: bool = False, detail: str = "") -> Any:
        if skip:
            self.timings.append(StepTiming(name, 0.0, "skip", detail))
            self._say(name, "skip", None)
            return None
        boundary(name)
        self._say(name, "start", None)
        t0 = time.monotonic()
        try:
            with transcript(self.log):
                result = fn()
        except SealboxError as e:
            self._fail(name, t0, str(e))
            if isinstance(e, BuildError) and e.message.startswith("step "):
                raise
            raise BuildError(f"step '{name}' failed: {e.message}", hint=e.hint) from e
        except OSError as e:
            self._fail(name, t0, str(e))
            where = f" ({e.filename})" if e.filename else ""
            raise BuildError(f"step '{name}' failed: {e.strerror or e}{where}") from e
        dt = time.monotonic() - t0
        self.timings.append(StepTiming(name, dt, "done", detail))
        self._say(name, "done", dt)
        return result

    def _fail(self, name: str, t0: float, detail: str) -> None:
        self.timings.append(StepTiming(name, time.monotonic() - t0, "fail", detail))
        self._say(name, "fail", time.monotonic() - t0)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"=== error: {detail}\n")

    def summary(self) -> list[dict[str, Any]]:
        return [{"step": t.name, "seconds": round(t.seconds, 3), "state": t.state} for t in self.timings]
