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


@contextlib.contextmanager
def exclusive(lock_file: Path, timeout: float, busy: str, hint: str = "retry later") -> Iterator[None]:
    """Hold an exclusive flock on `lock_file` (created 0600); after `timeout` s raise SandboxError(`busy`)."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise SandboxError(busy, hint=hint) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
