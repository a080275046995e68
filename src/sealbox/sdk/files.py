"""`sb.files`: files in the guest over the same SSH channel as commands (no extra service in the guest).

Each operation is one session running a small script of coreutils/findutils calls built from quoted words
(shell.py). Data is streamed in chunks both ways: `write` reads a file object as it sends it, `read_into`
writes what arrives to a file object, so a file of any size costs a few chunks of memory. `read` keeps the
whole file and therefore stops at `max_bytes`. What the guest sends back (listings, errors) is hostile input:
parsed field by field, anything malformed is an error, never a guess.
"""

from __future__ import annotations

import builtins
import posixpath
import shlex
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Literal, NamedTuple

from sealbox.errors import NotFound, SandboxError
from sealbox.sdk import shell
from sealbox.sdk.process import ByteSink, Execution, Input, chunks

if TYPE_CHECKING:
    from sealbox.sdk.host import Host

READ_MAX = 256 * 1024 * 1024
LIST_MAX = 64 * 1024 * 1024
OP_TIMEOUT = 600.0  # one file operation; a stuck guest must not hang the caller for ever
EntryType = Literal["file", "dir", "symlink", "other"]
_TYPES: dict[str, EntryType] = {"f": "file", "d": "dir", "l": "symlink"}


class _Op(NamedTuple):
    code: int
    out: bytes  # stdout, unless it went to a sink
    failed: str | None  # the tag of a failed precondition
    err: str
    received: int  # bytes stdout delivered


@dataclass(frozen=True)
class EntryInfo:
    """One directory entry as the guest reported it."""

    name: str
    path: str
    type: EntryType
    size: int
    mode: int  # permission bits (0o7777)
    mtime: float

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"


class _Sink:
    """A bounded byte buffer standing in for a file object (read())."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, chunk: bytes) -> int:
        if len(self.data) + len(chunk) > self.limit:
            raise SandboxError(f"the file is larger than max_bytes={self.limit}", hint="raise max_bytes, or stream it with read_into()")
        self.data += chunk
        return len(chunk)


class Files:
    """Files in one sandbox's guest (`sb.files`). Paths are guest paths; relative ones start at the user's home."""

    def __init__(self, host: Host, name: str) -> None:
        self._host, self._name = host, name

    def _run(self, script: shell.Script, line: str, *, user: str | None, stdin: Input | None = None,
             sink: ByteSink | None = None, max_output: int = 1 << 20) -> _Op:
        """How one script ended; ssh failing is an error."""
        if user is not None:
            shell.check_user(user)
        channel, on_end = self._host.spawn(self._name, line, user=user, stdin=stdin is not None)
        ctl = shell.ControlFilter(script.nonce)
        ex = Execution(channel, ctl, stdin=stdin, max_output=max_output, stdout_sink=sink, on_end=on_end)
        code = ex.wait(OP_TIMEOUT)
        if code is None:
            ex.channel.kill()
            ex.wait(10)
            raise SandboxError(f"file operation in sandbox {self._name!r} did not finish within {OP_TIMEOUT:g}s")
        ex.raise_callback_errors()
        if ex.out.error is not None:
            raise ex.out.error
        err = bytes(ex.err.buf).decode(errors="replace").strip()
        if code == 255 and not ctl.failed and not ctl.started:
            raise SandboxError(f"could not reach the guest of sandbox {self._name!r}: {err.splitlines()[-1:] or ['ssh exited 255']}")
        return _Op(code, bytes(ex.out.buf), ctl.failed, err, ex.out.total)

    @staticmethod
    def _error(path: str, failed: str | None, err: str, what: str) -> SandboxError:
        if failed == "notfound":
            return NotFound(f"{path!r}: no such file or directory in the guest")
        if failed == "notdir":
            return SandboxError(f"{path!r} is not a directory in the guest")
        if failed == "isdir":
            return SandboxError(f"{path!r} is a directory in the guest", hint="pass recursive=True to remove a tree" if what == "remove" else None)
        last = err.splitlines()[-1] if err else "failed"
        return SandboxError(f"{what} {path!r} in the guest: {last[:300]}")

    def write(self, path: str, data: Input, *, user: str | None = None, mode: int | None = None) -> int:
        """Write `data` (bytes, text, a binary file object or an iterable of byte chunks: streamed) to `path`,
        creating missing parent directories; an existing file is truncated first. Returns the bytes sent."""
        p = shell.path_arg(path)
        s = shell.Script()
        parent = posixpath.dirname(path)
        if parent and parent != "/":
            s.require(f"mkdir -p -- {shell.path_arg(parent)}", "mkdir")
        if mode is not None:
            if not 0 <= mode <= 0o7777:
                raise SandboxError(f"mode {mode!r} is not a permission mode (0 to 0o7777)")
            s.require(f": > {p} && chmod {mode:o} -- {p}", "chmod")
        counter = _Counting(data)
        op = self._run(s, s.done(f"cat > {p}"), user=user, stdin=counter)
        if op.code != 0:
            raise self._error(path, op.failed, op.err, "write")
        return counter.total

    def read(self, path: str, *, user: str | None = None, max_bytes: int = READ_MAX) -> bytes:
        """The whole file (at most `max_bytes`: a guest file can be endless, e.g. /dev/zero)."""
        sink = _Sink(max_bytes)
        self._read(path, sink, user)
        return bytes(sink.data)

    def read_text(self, path: str, *, encoding: str = "utf-8", user: str | None = None, max_bytes: int = READ_MAX) -> str:
        return self.read(path, user=user, max_bytes=max_bytes).decode(encoding)

    def read_into(self, path: str, dest: IO[bytes], *, user: str | None = None) -> int:
        """Stream the file into the binary file object `dest` as it arrives; returns the bytes written."""
        return self._read(path, dest, user)

    def _read(self, path: str, sink: ByteSink, user: str | None) -> int:
        p = shell.path_arg(path)
        s = shell.Script().require(f"[ -e {p} ] || [ -L {p} ]", "notfound").require(f"[ ! -d {p} ]", "isdir")
        op = self._run(s, s.done(f"exec cat -- {p}"), user=user, sink=sink)
        if op.code != 0:
            raise self._error(path, op.failed, op.err, "read")
        return op.received

    def exists(self, path: str, *, user: str | None = None) -> bool:
        """Whether `path` exists in the guest (a dangling symlink counts)."""
        p = shell.path_arg(path)
        s = shell.Script().require(f"[ -e {p} ] || [ -L {p} ]", "notfound")
        op = self._run(s, s.done("exit 0"), user=user)
        if op.code == 0:
            return True
        if op.failed == "notfound":
            return False
        raise self._error(path, op.failed, op.err, "check")

    def list(self, path: str = ".", *, user: str | None = None) -> builtins.list[EntryInfo]:
        """The entries of directory `path` (not recursive), sorted by name."""
        p = shell.path_arg(path)
        s = shell.Script().require(f"[ -e {p} ]", "notfound").require(f"[ -d {p} ]", "notdir")
        fmt = shlex.quote("%y\\0%s\\0%m\\0%T@\\0%f\\0")
        op = self._run(s, s.done(f"exec find {p}/ -mindepth 1 -maxdepth 1 -printf {fmt}"), user=user, max_output=LIST_MAX)
        if op.code != 0:
            raise self._error(path, op.failed, op.err, "list")
        if op.received > len(op.out):
            raise SandboxError(f"the listing of {path!r} is larger than {LIST_MAX} bytes", hint="list a smaller directory")
        return sorted(parse_listing(op.out, path), key=lambda e: e.name)

    def make_dir(self, path: str, *, user: str | None = None) -> None:
        """Create directory `path` and its missing parents (no error if it exists)."""
        p = shell.path_arg(path)
        s = shell.Script()
        op = self._run(s, s.done(f"mkdir -p -- {p}"), user=user)
        if op.code != 0:
            raise self._error(path, op.failed, op.err, "make_dir")

    def remove(self, path: str, *, recursive: bool = False, user: str | None = None) -> None:
        """Remove a file, a symlink or an empty directory; a directory tree only with recursive=True."""
        p = shell.path_arg(path)
        s = shell.Script().require(f"[ -e {p} ] || [ -L {p} ]", "notfound")
        if not recursive:
            s.require(f"[ -L {p} ] || [ ! -d {p} ] || rmdir -- {p} 2>/dev/null", "isdir")
        op = self._run(s, s.done(f"rm -{'r' if recursive else ''}f -- {p}"), user=user)
        if op.code != 0:
            raise self._error(path, op.failed, op.err, "remove")


def parse_listing(out: bytes, base: str) -> builtins.list[EntryInfo]:
    """find -printf '%y\\0%s\\0%m\\0%T@\\0%f\\0' records -> entries; malformed output is an error."""
    fields = out.split(b"\0")
    if fields[-1] != b"" or (len(fields) - 1) % 5:
        raise SandboxError("the guest sent a malformed directory listing")
    entries = []
    for i in range(0, len(fields) - 1, 5):
        kind, size, mode, mtime, raw = fields[i : i + 5]
        try:
            name = raw.decode("utf-8", "surrogateescape")
            if not name or "/" in name or name in (".", ".."):
                raise ValueError(name)
            entries.append(EntryInfo(name=name, path=posixpath.join(base, name), type=_TYPES.get(kind.decode("ascii"), "other"),
                                     size=int(size), mode=stat.S_IMODE(int(mode, 8)), mtime=float(mtime)))
        except (ValueError, UnicodeDecodeError):
            raise SandboxError(f"the guest sent a malformed directory entry ({raw[:60]!r})") from None
    return entries


class _Counting:
    """Iterates the chunks of `data`, counting the bytes handed on."""

    def __init__(self, data: Input) -> None:
        self._it = iter(chunks(data))
        self.total = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._it)
        self.total += len(chunk)
        return chunk
