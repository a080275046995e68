"""An exclusive flock with a bounded wait: every sealbox lock waits at most `timeout`, then says who to blame."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sealbox.errors import SandboxError


def try_exclusive(fd: int) -> bool:
    """Take an exclusive flock on `fd` if nobody holds one: True when taken, False when busy."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def exclusive(lock_file: Path, timeout: float, busy: str, hint: str = "retry later") -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (created 0600); after `timeout` s raise SandboxError(`busy`)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while not try_exclusive(fd):
            if time.monotonic() > deadline:
                raise SandboxError(busy, hint=hint) from None
            time.sleep(0.05)
        yield
    finally:
        os.close(fd)
