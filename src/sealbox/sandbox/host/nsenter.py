"""setns(2) into a network namespace: the one place sealbox calls it (Python 3.11 has no os.setns, hence ctypes).

It moves the calling *thread* only; callers either run in a short-lived thread, exec right after, or are a
single-threaded helper process. Standard library only: the forwarder processes import it before they drop root.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNET = 0x40000000
_libc: ctypes.CDLL | None = None


def enter_net(fd: int) -> None:
    """Move the calling thread into the network namespace open at `fd`; OSError (with errno) when refused."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")
