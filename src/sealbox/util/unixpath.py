"""Unix socket paths longer than sun_path allows.

sun_path holds 108 bytes; a sandbox's run dir under a deep state dir (or a jail with a 64-character id) exceeds it,
and bind/connect then fail with "AF_UNIX path too long". A path through an O_PATH fd of the socket's directory
(/proc/self/fd/N/name) is short and names the same socket.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

_ROOM = 100  # below sun_path's 108 bytes with the terminating NUL and some margin


@contextlib.contextmanager
def short_path(path: Path | str) -> Iterator[str]:
    """A name for `path` that fits in sun_path, valid while the context is open."""
    path = Path(path)
    text = str(path)
    if len(text.encode()) < _ROOM:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)
