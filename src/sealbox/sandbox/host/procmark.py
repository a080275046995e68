"""Helper processes sealbox starts for a sandbox (the DNS forwarder, the port forwarder): started the same way (spawn;
their own side is host/helperlib.py), found and stopped by their module name and the `--owner MARK` on their command
line, so undo and gc stop exactly their own (host/owner.py)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from sealbox.errors import SandboxError
from sealbox.sandbox.host.helperlib import READY
from sealbox.sandbox.state import pid_alive, process_start_time

START_TIMEOUT = 15.0


def spawn(module: str, args: Sequence[str], fds: Sequence[int], what: str) -> dict[str, int | None]:
    """Start `python -I -m module ARGS --ready-fd N` detached (own session, minimal environment, cwd /), handing it
    `fds`, and wait until it writes READY on the pipe. Returns the pid and start time for the step's outputs; a helper
    that does not get ready is killed and its last stderr line reported."""
    ready_r, ready_w = os.pipe()
    argv = [sys.executable, "-I", "-m", module, *args, "--ready-fd", str(ready_w)]
    try:
        proc = subprocess.Popen(argv, pass_fds=(*fds, ready_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, cwd="/",
                                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
    finally:
        os.close(ready_w)
    try:
        ready, _, _ = select.select([ready_r], [], [], START_TIMEOUT)
        ok = bool(ready) and os.read(ready_r, 16) == READY
    finally:
        os.close(ready_r)
    if not ok:
        proc.kill()
        _out, err = proc.communicate(timeout=10)
        why = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(f"the {what} did not start: {why[0]}")
    assert proc.stderr is not None
    proc.stderr.close()
    return {"pid": proc.pid, "start_time": process_start_time(proc.pid)}


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def find(module: str) -> list[tuple[int, str]]:
    """(pid, owner mark) of every running process of `module` (run as `python -m module ... --owner MARK`)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if module in argv and "--owner" in argv:
            i = argv.index("--owner")
            if i + 1 < len(argv):
                out.append((int(entry), argv[i + 1]))
    return out


def stop(module: str, owner: str, pid: int | None = None, start: int | None = None, timeout: float = 5.0) -> list[int]:
    """Stop the `module` processes carrying `owner` (and the recorded pid, if still the same process): SIGTERM,
    then SIGKILL after `timeout`. Returns the pids that survived (normally none)."""
    pids = {p for p, o in find(module) if o == owner}
    if pid is not None and pid_alive(pid, start):
        pids.add(pid)
    for p in pids:
        _signal(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {p for p in left if _gone(p) is False}
        if left:
            time.sleep(0.05)
    for p in left:
        _signal(p, signal.SIGKILL)
    time.sleep(0.05 if left else 0)
    return sorted(p for p in left if _gone(p) is False)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _gone(pid: int) -> bool:
    try:  # our own child (tests, or `run` still alive): reap it so it does not linger as a zombie
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    except ChildProcessError:
        pass
    return not pid_alive(pid)
