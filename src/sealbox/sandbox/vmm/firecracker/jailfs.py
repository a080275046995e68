"""Root working inside a Firecracker jail: the VMM user owns the jail root and may have been taken over
by its guest, so every name below the jail root is hostile.

Rules (and why): a path inside the jail is resolved one component at a time from a directory fd, each
with O_NOFOLLOW, so a symlink anywhere is refused instead of followed to a host file; a file is checked
on its own fd (type, owner, link count) before root reads, copies or changes it, and a chmod acts on
that very fd, so the checked object and the changed object are the same even if the VMM swaps names
meanwhile; FIFOs and devices never block or reach root (O_NONBLOCK, regular files only). The paths
themselves come from sealbox's own record, never from the VMM's API answers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from sealbox.errors import SandboxError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
HINT = "the sandbox's VMM (or its guest) may be compromised; nothing outside the jail was touched"


class JailRefusal(SandboxError):
    """Root refused to follow or act on something the VMM controls."""


def _refuse(what: str, why: str) -> JailRefusal:
    return JailRefusal(f"refusing to {what}: {why}", hint=HINT)


def _parts(rel: str) -> list[str]:
    parts = [p for p in rel.strip("/").split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise _refuse(f"use the jail path {rel!r}", "it is empty or contains '.' or '..'")
    return parts


@contextlib.contextmanager
def open_root(root: Path) -> Iterator[int]:
    """An fd of the jail root. Its own name lives in a root-owned directory, so only the last
    component can be hostile (the jailer made it; a compromised VMM cannot replace it)."""
    try:
        fd = os.open(root, _DIR)
    except OSError as e:
        raise _refuse(f"open the jail root {root}", e.strerror or str(e)) from None
    try:
        yield fd
    finally:
        os.close(fd)


def open_dir(root_fd: int, rel: str, what: str) -> int:
    """A new fd of directory `rel` below the jail root; no component may be a symlink (a missing one
    raises FileNotFoundError)."""
    fd = os.dup(root_fd)
    try:
        for part in _parts(rel):
            try:
                nfd = os.open(part, _DIR, dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError as e:
                why = "it is a symlink or not a directory" if e.errno in (errno.ELOOP, errno.ENOTDIR) else (e.strerror or str(e))
                raise _refuse(what, f"{rel!r} ({why})") from None
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _split(rel: str) -> tuple[str, str]:
    parts = _parts(rel)
    return "/".join(parts[:-1]), parts[-1]


@contextlib.contextmanager
def _parent(root_fd: int, rel: str, what: str) -> Iterator[tuple[int, str]]:
    parent, name = _split(rel)
    fd = open_dir(root_fd, parent, what) if parent else os.dup(root_fd)
    try:
        yield fd, name
    finally:
        os.close(fd)


def check(st: os.stat_result, what: str, rel: str, *, kind: int = stat.S_IFREG, uids: tuple[int, ...] | None = None,
          nlink: int | None = 1, same_as: os.stat_result | None = None) -> None:
    """Refuse unless `st` is of `kind`, owned by one of `uids`, has `nlink` links, and (if given) is the
    same inode as `same_as`."""
    if stat.S_IFMT(st.st_mode) != kind:
        raise _refuse(what, f"{rel!r} is not a {_KINDS.get(kind, 'file')} (mode {st.st_mode:o})")
    if uids is not None and st.st_uid not in uids:
        raise _refuse(what, f"{rel!r} is owned by uid {st.st_uid}, expected {' or '.join(map(str, uids))}")
    if nlink is not None and st.st_nlink != nlink:
        raise _refuse(what, f"{rel!r} has {st.st_nlink} hard links, expected {nlink}")
    if same_as is not None and (st.st_dev, st.st_ino) != (same_as.st_dev, same_as.st_ino):
        raise _refuse(what, f"{rel!r} is not the file sealbox placed there")


_KINDS = {stat.S_IFREG: "regular file", stat.S_IFSOCK: "socket", stat.S_IFDIR: "directory"}


def open_file(root_fd: int, rel: str, what: str, *, uids: tuple[int, ...] | None, nlink: int | None = 1,
              same_as: os.stat_result | None = None) -> int:
    """An O_RDONLY fd of regular file `rel`, checked on the fd; the caller closes it."""
    with _parent(root_fd, rel, what) as (pfd, name):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise
            why = "it is a symlink" if e.errno == errno.ELOOP else (e.strerror or str(e))
            raise _refuse(what, f"{rel!r} ({why})") from None
    try:
        check(os.fstat(fd), what, rel, uids=uids, nlink=nlink, same_as=same_as)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(root_fd: int, rel: str, what: str, *, uids: tuple[int, ...], limit: int = 4096) -> bytes:
    fd = open_file(root_fd, rel, what, uids=uids)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def read_tail(root_fd: int, rel: str, what: str, *, uids: tuple[int, ...], limit: int = 64 * 1024) -> bytes:
    fd = open_file(root_fd, rel, what, uids=uids)
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def open_socket(root_fd: int, rel: str, what: str, *, uids: tuple[int, ...] | None = None) -> int:
    """An O_PATH fd of the socket `rel` (never of what a symlink there points at); connect() and chmod()
    through /proc/self/fd/N then reach exactly that inode. The caller closes it."""
    with _parent(root_fd, rel, what) as (pfd, name):
        try:
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _refuse(what, f"{rel!r} ({e.strerror or e})") from None
    try:
        check(os.fstat(fd), what, rel, kind=stat.S_IFSOCK, uids=uids, nlink=None)
    except BaseException:
        os.close(fd)
        raise
    return fd


def chmod_socket(root_fd: int, rel: str, mode: int, *, uid: int) -> None:
    """chmod the socket `rel` (owned by the VMM user) through an O_PATH fd of that very inode."""
    fd = open_socket(root_fd, rel, f"chmod the API socket {rel}", uids=(uid,))
    try:
        os.chmod(f"/proc/self/fd/{fd}", mode)  # the magic link reaches the checked inode, never a name
    finally:
        os.close(fd)


def unlink(root_fd: int, rel: str, *, kind: int) -> bool:
    """Remove directory entry `rel` if it is of `kind` (unlinkat never follows a symlink). Returns
    whether it was removed; a wrong kind is refused."""
    what = f"remove {rel}"
    try:
        with _parent(root_fd, rel, what) as (pfd, name):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            check(st, what, rel, kind=kind, nlink=None)
            os.unlink(name, dir_fd=pfd)
            return True
    except FileNotFoundError:
        return False


def unlink_any(dir_fd: int, name: str) -> None:
    """Remove a leftover entry whatever it is (a symlink is removed, not followed); never a directory."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(name, dir_fd=dir_fd)


def copy_fd(src: int, dst: int) -> int:
    """Copy a regular file's bytes fd to fd, keeping holes (guest memory and disks are mostly sparse)."""
    size = os.fstat(src).st_size
    pos = 0
    while pos < size:
        try:
            data = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        hole = os.lseek(src, data, os.SEEK_HOLE)
        off = data
        while off < hole:
            n = os.copy_file_range(src, dst, hole - off, off, off)
            if n == 0:
                break
            off += n
        pos = hole
    os.ftruncate(dst, size)
    return size


def create_private(path: Path, mode: int) -> int:
    """A new file that cannot already exist or be a symlink (O_EXCL|O_NOFOLLOW); returns a writable fd."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
    return fd
