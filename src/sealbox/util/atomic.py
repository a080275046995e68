"""Atomic file and directory writes: readers see the old content or the new, never a partial one."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temp file in the same directory + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path: Path, text: str, mode: int = 0o644) -> None:
    write_bytes(path, text.encode(), mode)


def write_json(path: Path, obj: Any, mode: int = 0o644) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mode)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """Swap two existing paths in one step (renameat2 RENAME_EXCHANGE): no moment where either is missing."""
    rc = _libc.renameat2(ctypes.c_int(_AT_FDCWD), os.fsencode(a), ctypes.c_int(_AT_FDCWD), os.fsencode(b),
                         ctypes.c_uint(_RENAME_EXCHANGE))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def swap_in(stage: Path, final: Path) -> Path | None:
    """Put the directory `stage` at `final` atomically. Returns where the previous `final` now is (to be removed
    by the caller: it sits at the staging path), or None if there was none.

    With an existing `final` the two are exchanged in one renameat2 call, so readers see the old tree or the
    new one and a crash at any point leaves one of them at `final`. File systems without RENAME_EXCHANGE
    get two renames, with the old tree kept at `.NAME.old.PID` in between.
    """
    if not os.path.lexists(final):
        os.rename(stage, final)
        _fsync_dir(final.parent)
        return None
    try:
        exchange(stage, final)
        _fsync_dir(final.parent)
        return stage
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise
    old = final.parent / f".{final.name}.old.{os.getpid()}"
    os.rename(final, old)
    os.rename(stage, final)
    _fsync_dir(final.parent)
    return old


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh sibling directory; on success swap it into `final` (old content removed).

    On failure the staging directory is removed and `final` is left exactly as it was, so an
    interrupted build never leaves partial or stale artifacts at the output path.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.staging."))
    os.chmod(stage, 0o755)  # mkdtemp makes it 0700; the result is an ordinary public directory
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = swap_in(stage, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
