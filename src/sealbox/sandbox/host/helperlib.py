"""What the helper processes (dnsfwd, portfwd) share on their own side. Standard library only: they run as
`python -I -m ...` with few imports, and drop privileges before they serve (host/procmark.py starts them)."""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

READY = b"ready\n"
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid/gid with no groups, no new privileges and not dumpable (no ptrace, no core with the sockets)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    libc = ctypes.CDLL(None, use_errno=True)
    for option, value in ((PR_SET_NO_NEW_PRIVS, 1), (PR_SET_DUMPABLE, 0)):
        if libc.prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def serve_when_ready(ready_fd: int, serve: Callable[[], None], stop: Callable[[], None]) -> int:
    """SIGTERM stops the helper, READY tells the parent it runs, stderr goes to /dev/null (nobody reads that pipe any
    more: never block on it), then serve until stopped."""
    signal.signal(signal.SIGTERM, lambda *_: stop())
    os.write(ready_fd, READY)
    os.close(ready_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 2)
    serve()
    return 0
