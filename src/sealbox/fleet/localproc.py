"""The host agent's local manager, with its creates run in a fresh process.

A Ray worker is a multi-threaded process (gRPC), and the sandbox runtime forks without exec (the KVM probe,
the VMM's double fork): a child forked from the worker can deadlock on a lock another thread held at the fork
(seen here: the child of the agent blocked in a futex, the create hung). So the agent's LocalHost runs
`create` — and `doctor` at the agent's start — as `python -m sealbox.fleet.localproc`: a single-threaded
process of its own that forks safely. Cancelling the create sends that process SIGTERM, which the runtime
turns into an undo, as for Ctrl-C at the CLI. The other operations do not fork and stay in the agent.

Protocol: CreateOptions as JSON on stdin; one JSON line on stdout, the summary or {"error", "message", "hint"}.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from sealbox.errors import SandboxError, SealboxError
from sealbox.fleet import wire
from sealbox.sdk.host import LocalHost, Say
from sealbox.sdk.options import CreateOptions

KILL_AFTER_S = 120.0  # after SIGTERM, the undo's own time before SIGKILL


class ProcessLocalHost(LocalHost):
    """LocalHost whose create runs in a child process (see the module's doc)."""

    def create(self, opts: CreateOptions, *, warn: Say | None = None, progress: Say | None = None,
               holder: int | None = None, cancel: Callable[[], bool] | None = None) -> dict[str, Any]:
        argv = [sys.executable, "-m", "sealbox.fleet.localproc", "create", str(self.root)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(opts.model_dump_json().encode())
        proc.stdin.close()
        proc.stdin = None  # communicate() below must not flush it again
        termed = 0.0
        while proc.poll() is None:
            if not termed and cancel is not None and cancel():
                proc.send_signal(signal.SIGTERM)
                termed = time.monotonic()
            if termed and time.monotonic() - termed > KILL_AFTER_S:
                proc.kill()
            time.sleep(0.2)
        out, err = proc.communicate()
        try:
            res = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise SandboxError(f"the create process ended without an answer (exit {proc.returncode}): {wire.text(tail[0], 300)}") from None
        if not isinstance(wire.check(res), dict):
            raise SandboxError("the create process answered with something else")
        return dict(res)


def doctor_checks(root: str) -> list[dict[str, Any]]:
    """`doctor`'s checks of this host, run in a child process (the KVM probe forks)."""
    proc = subprocess.run([sys.executable, "-m", "sealbox.fleet.localproc", "doctor", root], capture_output=True, timeout=300)
    try:
        return list(json.loads(proc.stdout.decode().strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return [{"name": "doctor", "status": "fail", "detail": f"doctor did not answer (exit {proc.returncode})"}]


def _main(argv: list[str]) -> int:
    what, root = argv[0], argv[1]
    if what == "doctor":
        from sealbox import doctor

        print(json.dumps([c.model_dump() for c in doctor.run_checks(__import__("pathlib").Path(root))]))
        return 0
    opts = CreateOptions.model_validate_json(sys.stdin.buffer.read())
    try:
        res: dict[str, Any] = LocalHost(root).create(opts)
    except SealboxError as e:
        res = {"error": type(e).__name__, "message": e.message, "hint": e.hint}
    with contextlib.suppress(BrokenPipeError):
        print(json.dumps(res, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
