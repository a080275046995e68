"""Reading a child's pipe without ever waiting past a deadline."""

from __future__ import annotations

import os
import select
import time


def read_until_eof(fd: int, deadline: float) -> bytes:
    """Everything written to `fd` until EOF or the monotonic `deadline`, whichever comes first."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return data
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk
