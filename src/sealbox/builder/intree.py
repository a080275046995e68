"""Paths inside the image tree, resolved as if the tree were `/`.

The tree is full of symlinks the build host must not follow: Debian ships `/var/run -> /run`, and a spec can
copy in its own links (absolute, relative, `..` chains). Joining `tree / path` and letting the host resolve
it would read or write the build host's files as root. Here every path is resolved by the kernel with
openat2(RESOLVE_IN_ROOT): absolute links and `..` stay inside the tree exactly as in a chroot, and a path
that would cross a mount point (RESOLVE_NO_XDEV) or a /proc magic link is refused. Final components are
never followed when they are replaced: writing a file where a symlink stands replaces the link.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from sealbox.errors import BuildError

SYS_OPENAT2 = 437  # the same number on every architecture (new syscalls share the table)
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
RESOLVE = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dirfd: int, path: str, flags: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE)
    fd = _libc.syscall(ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), os.fsencode(path or "."), ctypes.byref(how),
                       ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return int(fd)


def _parts(path: str) -> list[str]:
    return [p for p in PurePosixPath("/", path).parts[1:] if p != "."]


def _why(e: OSError) -> str:
    return {errno.EXDEV: "it leaves the image tree (crosses a mount point)", errno.ELOOP: "too many levels of symlinks",
            errno.ENOTDIR: "a path component is not a directory in the image",
            errno.ENOENT: "a path component does not exist in the image"}.get(e.errno or 0, e.strerror or str(e))


class Tree:
    """An open image tree; every method takes an absolute image path and stays inside the tree."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._real = Path(os.path.realpath(f"/proc/self/fd/{self.fd}"))

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- resolution ---------------------------------------------------------------------------
    def open(self, path: str, flags: int, mode: int = 0) -> int:
        return _openat2(self.fd, "/".join(_parts(path)), flags, mode)

    def resolve(self, path: str) -> Path | None:
        """The host path of `path` as the image sees it (every symlink resolved inside the tree); None if missing."""
        try:
            fd = self.open(path, os.O_PATH)
        except OSError:
            return None
        try:
            real = Path(os.readlink(f"/proc/self/fd/{fd}"))
        finally:
            os.close(fd)
        rel = real.relative_to(self._real)  # cannot fail: the kernel kept the resolution inside
        return self.root / rel if str(rel) != "." else self.root

    @contextlib.contextmanager
    def parent(self, dest: str, what: str, create: bool = True) -> Iterator[tuple[int, str]]:
        """(O_PATH fd of dest's parent directory, dest's last component); missing parents are made 0755 root-owned."""
        parts = _parts(dest)
        if not parts or parts[-1] == "..":
            raise BuildError(f"{what}: {dest!r} names no file inside the image")
        fd = self._dir(parts[:-1], dest, what, create)
        try:
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def _dir(self, parts: list[str], dest: str, what: str, create: bool) -> int:
        try:
            return _openat2(self.fd, "/".join(parts), os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            if e.errno != errno.ENOENT or not create or not parts:
                raise BuildError(f"{what}: cannot place {dest!r} in the image: {_why(e)}") from None
        up = self._dir(parts[:-1], dest, what, create)  # the parent exists (or is made) first
        try:
            if parts[-1] != "..":
                with contextlib.suppress(FileExistsError):  # e.g. a dangling link: the open below says so
                    os.mkdir(parts[-1], 0o755, dir_fd=up)
        finally:
            os.close(up)
        try:  # from the tree's root again: a link standing there resolves as the image sees it
            return _openat2(self.fd, "/".join(parts), os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            raise BuildError(f"{what}: cannot place {dest!r} in the image: {_why(e)}") from None

    # --- reads ----------------------------------------------------------------------------------
    def read_bytes(self, path: str, what: str | None = None) -> bytes:
        try:
            fd = self.open(path, os.O_RDONLY)
        except OSError as e:
            raise BuildError(f"{what or path}: cannot read {path} in the image: {_why(e)}") from None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    # --- writes ---------------------------------------------------------------------------------
    def _clear(self, pfd: int, name: str, dest: str, what: str) -> None:
        """Remove what stands at name (a file or a symlink, never followed); a directory there is an error."""
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise BuildError(f"{what}: {dest!r} is a directory in the image", hint="pick another destination")
        os.unlink(name, dir_fd=pfd)

    def write_bytes(self, dest: str, data: bytes, mode: int, uid: int = 0, gid: int = 0, what: str | None = None) -> None:
        """Create `dest` afresh (a file or link standing there is replaced, not followed) with mode and owner."""
        what = what or dest
        with self.parent(dest, what) as (pfd, name):
            self._clear(pfd, name, dest, what)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchown(f.fileno(), uid, gid)
                os.fchmod(f.fileno(), mode)

    def copy_file(self, dest: str, src: Path, mode: int, uid: int = 0, gid: int = 0, what: str | None = None) -> None:
        """Copy the host file `src` (already checked by the spec loader) to `dest`, like write_bytes."""
        what = what or dest
        with self.parent(dest, what) as (pfd, name):
            self._clear(pfd, name, dest, what)
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
            with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
                while chunk := inp.read(1 << 20):
                    out.write(chunk)
                os.fchown(out.fileno(), uid, gid)
                os.fchmod(out.fileno(), mode)

    def rewrite(self, path: str, data: bytes, default_mode: int = 0o644, what: str | None = None) -> None:
        """New content for `path`, keeping its inode, mode and owner when it exists (symlinks followed inside the
        tree, as a chroot would); created root-owned with default_mode otherwise."""
        what = what or path
        try:
            fd = self.open(path, os.O_WRONLY | os.O_TRUNC)
        except FileNotFoundError:
            self.write_bytes(path, data, default_mode, what=what)
            return
        except OSError as e:
            raise BuildError(f"{what}: cannot write {path} in the image: {_why(e)}") from None
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def remove(self, dest: str, what: str | None = None) -> None:
        """Remove the file or link at `dest` (never followed), if there is one; a directory there is an error."""
        what = what or dest
        with self.parent(dest, what, create=False) as (pfd, name):
            self._clear(pfd, name, dest, what)

    def symlink(self, dest: str, target: str, uid: int = 0, gid: int = 0, what: str | None = None) -> None:
        what = what or dest
        with self.parent(dest, what) as (pfd, name):
            self._clear(pfd, name, dest, what)
            os.symlink(target, name, dir_fd=pfd)
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def mkdir(self, dest: str, mode: int | None = None, uid: int | None = None, gid: int | None = None,
              what: str | None = None) -> None:
        """Make sure `dest` is a directory (an existing link to a directory is followed inside the tree); set mode
        and owner when given."""
        what = what or dest
        with self.parent(dest, what) as (pfd, name):
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=pfd)
            try:
                fd = self.open(dest, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as e:
                raise BuildError(f"{what}: {dest!r} is not a directory in the image ({_why(e)})") from None
            try:
                if uid is not None and gid is not None:
                    os.fchown(fd, uid, gid)
                if mode is not None:
                    os.fchmod(fd, mode)
            finally:
                os.close(fd)


def resolve(tree: Path, path: str) -> Path | None:
    with Tree(tree) as t:
        return t.resolve(path)
