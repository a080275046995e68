#!/usr/bin/python3 -I
"""bob's delayed-log writer (guest side, runs as root): the container's log lines reach /persistent/delayed_logs only
after `log_delay_seconds` (config.json).

Installed as /usr/lib/sealbox/bob/bob-logs, run by sealbox-bob-logs.service once /persistent is mounted. The source
is the container's log as podman's conmon writes it (--log-driver k8s-file, RAW below): one record per line,
"TIMESTAMP STREAM TAG CONTENT", TAG "P" for a piece of a longer line and "F" for its last piece. The writer reads
complete records as they appear, stamps each with its own monotonic clock when it first reads it, and appends the
content of each line to delayed_logs once `delay` has passed since then (never earlier: the clock starts after
conmon wrote it).

Crash and restart: delayed_logs is only appended to (O_APPEND, whole lines, fsync), and after each batch the writer
records, atomically (write, fsync, rename), how far it got in the raw log and how long delayed_logs was then. A
restart re-reads the raw log from there; lines still waiting were only in memory, so they wait one full delay again
(late, never early, never lost). A crash between appending and recording leaves lines in delayed_logs beyond the
recorded length: on start they are matched against the raw records they came from and counted as written (a line
cut short is completed), so nothing is written twice; bytes that match nothing are cut off. A raw log that was
replaced (another inode) or shrank is read again from its start.
Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LIB = "usr/lib/sealbox/bob"
RAW_DIR, RAW_NAME = "persistent/.bob-work", "container.log"
RAW = f"{RAW_DIR}/{RAW_NAME}"
OUT = "persistent/delayed_logs"
STATE = "persistent/.bob/logs.json"
MAX_LINE = 64 << 10  # bytes of one delayed line at most (the rest of a longer line is cut)
MAX_RECORD = 1 << 20  # a raw record longer than this is cut too (conmon writes pieces of at most 8 KiB)
MAX_SPAN = 4 << 20  # raw bytes one line may take (its pieces) before it is ended where it is
MAX_PENDING = 64 << 20  # bytes held in memory; beyond that the raw log waits on disk
READ_BLOCK = 1 << 16
POLL_SECONDS = 1.0


@dataclass
class Pending:
    due: float  # monotonic time it may be written
    end: int  # raw offset just after its last record
    line: bytes  # with its newline


def content(record: bytes) -> tuple[bytes, bool]:
    """One raw record (without its newline) -> (content, whether it ends a line). A record not in conmon's format
    is taken whole as one line (its content is the searcher's own output either way)."""
    parts = record.split(b" ", 3)
    if len(parts) == 4 and parts[1] in (b"stdout", b"stderr") and parts[2] in (b"P", b"F"):
        return parts[3], parts[2] == b"F"
    if len(parts) == 3 and parts[1] in (b"stdout", b"stderr") and parts[2] in (b"P", b"F"):  # an empty line
        return b"", parts[2] == b"F"
    return record, True


class Raw:
    """Complete lines of the raw log from an offset on; `end` of each is where the next one starts."""

    def __init__(self, fd: int, offset: int) -> None:
        self.fd, self.offset = fd, offset  # offset: the first byte not yet turned into a line
        self.buf = b""  # bytes from self.offset on, read but not yet a whole line

    def lines(self, budget: int) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        parts: list[bytes] = []
        size, used, pos = 0, 0, 0  # pos: into self.buf, where the current line's first record starts
        while used < budget:
            nl = self.buf.find(b"\n", pos)
            if nl == -1:
                if len(self.buf) - pos > MAX_RECORD:  # a record without end: cut it where it is
                    nl = nxt = len(self.buf)
                else:
                    chunk = os.pread(self.fd, READ_BLOCK, self.offset + len(self.buf))
                    if not chunk:
                        break
                    self.buf += chunk
                    continue
            else:
                nxt = nl + 1
            piece, last = content(self.buf[pos:nl])
            if size < MAX_LINE:
                parts.append(piece[:MAX_LINE - size])
                size += len(parts[-1])
            pos = nxt
            if pos > MAX_SPAN:  # pieces without an end: the line ends here (what follows is another line)
                last = True
            if last:
                line = b"".join(parts) + b"\n"
                out.append((self.offset + pos, line))
                used += len(line)
                parts, size = [], 0
                self.buf, self.offset, pos = self.buf[pos:], self.offset + pos, 0
        return out


class Writer:
    def __init__(self, root: Path = Path("/"), delay: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, fsync: Callable[[int], None] = os.fsync) -> None:
        self.root, self.clock, self.sleep, self.fsync = root, clock, sleep, fsync
        self.delay = self.config_delay() if delay is None else delay
        self.pending: deque[Pending] = deque()
        self.pending_bytes = 0
        self.raw: Raw | None = None
        self.raw_id: tuple[int, int] = (0, 0)
        self.done = 0  # raw offset up to which every line is in delayed_logs (as recorded)
        self.out_size = 0  # delayed_logs' length when that was recorded

    def config_delay(self) -> int:
        try:
            value = json.loads((self.root / LIB / "config.json").read_text())["log_delay_seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            raise SystemExit("bob-logs: the image's config.json is missing or has no log_delay_seconds") from None
        if type(value) is not int or value < 0:
            raise SystemExit("bob-logs: log_delay_seconds in the image's config.json is not a whole number of seconds")
        return value

    # -- the record of how far it got
    def load_state(self) -> tuple[tuple[int, int], int, int]:
        try:
            data = json.loads((self.root / STATE).read_text())
            ident, done, size = (int(data["dev"]), int(data["ino"])), int(data["done"]), int(data["out_size"])
            if done < 0 or size < 0:
                raise ValueError
            return ident, done, size
        except FileNotFoundError:
            return (0, 0), 0, 0
        except (OSError, ValueError, KeyError, TypeError):  # unreadable: start over, reconciling with what is there
            return (0, 0), 0, 0

    def save_state(self) -> None:
        path = self.root / STATE
        path.parent.mkdir(mode=0o700, exist_ok=True)
        tmp = path.with_name(".logs.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"dev": self.raw_id[0], "ino": self.raw_id[1], "done": self.done, "out_size": self.out_size}, f)
            f.flush()
            self.fsync(f.fileno())
        os.replace(tmp, path)

    # -- files
    def open_out(self) -> int:
        fd = os.open(self.root / OUT, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise SystemExit(f"bob-logs: /{OUT} is not a regular file")
        return fd

    def open_raw(self) -> bool:
        """(Re)open the raw log when it appeared or was replaced; False while there is none."""
        try:  # the directory is the searcher's: no symlink at either step may lead this root process elsewhere
            dfd = os.open(self.root / RAW_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return self.raw is not None
        try:
            fd = os.open(RAW_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
        except OSError:
            return self.raw is not None
        finally:
            os.close(dfd)
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode) or (self.raw is not None and ident == self.raw_id and st.st_size >= self.raw.offset):
            os.close(fd)
            return self.raw is not None and stat.S_ISREG(st.st_mode)
        if self.raw is not None:
            os.close(self.raw.fd)
        if ident != self.raw_id or st.st_size < self.done:
            self.done = 0  # another file, or rewritten: all of it is new
        self.raw_id = ident
        self.raw = Raw(fd, self.done)
        self.pending.clear()
        self.pending_bytes = 0
        return True

    def start(self) -> None:
        """Load the record and bring delayed_logs in line with it (see the module docstring)."""
        self.raw_id, self.done, self.out_size = self.load_state()
        if not self.open_raw():
            return  # no raw log yet: nothing to reconcile against (a step opens it when it appears)
        fd = os.open(self.root / OUT, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise SystemExit(f"bob-logs: /{OUT} is not a regular file")
            self.out_size = min(self.out_size, os.fstat(fd).st_size)  # cut short by someone else: take it as it is
            while self._reconcile(fd):
                pass
            self.save_state()
        finally:
            os.close(fd)

    def _reconcile(self, fd: int) -> bool:
        """Count lines beyond the recorded length that match the raw log as written, a window at a time; finish a
        line cut short at the end, cut off what matches nothing. True while there is more to look at."""
        actual = os.fstat(fd).st_size
        extra = os.pread(fd, min(actual - self.out_size, MAX_PENDING), self.out_size)
        if not extra:
            return False
        raw = Raw(os.dup(self.raw.fd), self.done)  # type: ignore[union-attr]
        matched = 0
        try:
            for end, line in raw.lines(len(extra)):
                rest = extra[matched:]
                if rest.startswith(line):
                    matched, self.done = matched + len(line), end
                elif line.startswith(rest) and self.out_size + len(extra) == actual:  # the last line, in part
                    self._append(fd, line[len(rest):])
                    matched, self.done = len(extra) + len(line) - len(rest), end
                    break
                else:
                    break
        finally:
            os.close(raw.fd)
        if not matched:
            os.ftruncate(fd, self.out_size)  # bytes no raw record accounts for
            self.fsync(fd)
        self.out_size += matched
        self.raw = Raw(self.raw.fd, self.done)  # type: ignore[union-attr]
        return matched > 0

    def _append(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        self.fsync(fd)

    def step(self) -> int:
        """Read what is new, write what is due; returns how many lines were written."""
        now = self.clock()
        if self.open_raw():
            assert self.raw is not None
            for end, line in self.raw.lines(MAX_PENDING - self.pending_bytes):
                self.pending.append(Pending(now + self.delay, end, line))
                self.pending_bytes += len(line)
        due = []
        while self.pending and self.pending[0].due <= now:
            due.append(self.pending.popleft())
        if not due:
            return 0
        data = b"".join(p.line for p in due)
        out = self.open_out()
        try:
            self._append(out, data)
            self.out_size = os.fstat(out).st_size
        finally:
            os.close(out)
        self.pending_bytes -= len(data)
        self.done = due[-1].end
        self.save_state()
        return len(due)

    def next_due(self) -> float | None:
        return self.pending[0].due if self.pending else None

    def run(self, steps: int | None = None) -> None:
        self.start()
        n = 0
        while steps is None or n < steps:
            n += 1
            self.step()
            self.sleep(POLL_SECONDS)


def main(argv: list[str]) -> int:
    if argv != ["run"]:
        print("usage: bob-logs run", file=sys.stderr)
        return 2
    Writer().run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
