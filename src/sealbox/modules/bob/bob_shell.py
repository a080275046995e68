#!/usr/bin/python3 -I
"""The searcher's login shell (guest side): a dispatcher for five commands and nothing else.

Installed as /usr/lib/sealbox/bob/bob-shell, the login shell of the `searcher` account. sshd runs it as
`bob-shell -c COMMAND` (`ssh searcher@HOST toggle`); an interactive login, a subsystem (sftp) or any other
command is refused. The command is split on whitespace, never given to a shell, and must be exactly one of:
  initialize        unlock or create the encrypted /persistent (the only command allowed before /persistent is
                    mounted): reads one passphrase line on stdin and relays it to the root side (bob-disk)
  toggle, status    relayed to the root side (bob-mode) over its socket: the searcher's uid cannot load rules
  logs N            the last N lines (1..10,000,000) of /persistent/delayed_logs
  tail-the-logs     its last 10 lines, then new ones as they arrive, until the connection closes
One more command line exists, for the data plane's sshd only: its ForceCommand (ENTER, `bob-workload enter`,
into the container) is run only when sshd says the connection came in on data_ssh_port (config.json): SSH_CONNECTION
is set by sshd itself, and neither sshd accepts variables from the client (no AcceptEnv, PermitUserEnvironment no),
so on the control port (open in production) it is refused like any other command. That is the one variable read.
Every refusal is one line on stderr and a non-zero exit. Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TextIO

COMMANDS = "initialize, toggle, status, logs N (1..10000000), tail-the-logs"
PERSISTENT = "/persistent"
LOGS = "persistent/delayed_logs"
MODE_SOCKET = "run/sealbox-bob/mode.sock"
ENTER = "/usr/lib/sealbox/bob/bob-workload enter"
CONFIG = "usr/lib/sealbox/bob/config.json"
DISK_SOCKET = "run/sealbox-bob/disk.sock"
MAX_PASSPHRASE = 512  # bytes; the same bound bob-disk applies
DISK_TIMEOUT = 900  # argon2id and mkfs under TCG: minutes, not hours
MAX_LINES = 10_000_000
N_RE = re.compile(r"[1-9][0-9]{0,7}")
MAX_COMMAND = 64
MAX_ANSWER = 1 << 16
BLOCK = 1 << 16
TAIL_START = 10
POLL_SECONDS = 0.5


class Refused(Exception):
    """The one line the searcher sees, with exit status 1 (2: not a command at all)."""

    def __init__(self, message: str, rc: int = 1) -> None:
        super().__init__(message)
        self.rc = rc


def mounted(root: Path, point: str = PERSISTENT) -> bool:
    """Whether `point` is a mount point, from <root>/proc/self/mountinfo (field 5; octal escapes as the kernel writes)."""
    try:
        text = (root / "proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == point:
            return True
    return False


def parse(argv: list[str]) -> list[str]:
    """sshd's `-c COMMAND` -> the command's words; refuses everything that is not one of COMMANDS."""
    if len(argv) != 2 or argv[0] != "-c":
        raise Refused(f"this account runs commands only: ssh searcher@HOST COMMAND, with COMMAND one of {COMMANDS}")
    text = argv[1]
    if len(text) > MAX_COMMAND or not text.isascii() or not text.isprintable():
        raise Refused(f"refused: not a command here ({COMMANDS})", 2)
    words = text.split()
    if words in (["initialize"], ["toggle"], ["status"], ["tail-the-logs"]):
        return words
    if len(words) == 2 and words[0] == "logs":
        if not N_RE.fullmatch(words[1]) or int(words[1]) > MAX_LINES:
            raise Refused(f"logs: N must be a whole number from 1 to {MAX_LINES:,} (got {words[1]!r})", 2)
        return words
    shown = text if len(text) <= 32 else text[:32] + "..."
    raise Refused(f"refused: {shown!r} is not a command here ({COMMANDS})", 2)


def last_lines(f: BinaryIO, n: int) -> int:
    """Offset where the last `n` lines of `f` start (a last line without a newline counts as a line)."""
    end = f.seek(0, os.SEEK_END)
    pos, found = end, 0
    if end and (f.seek(end - 1), f.read(1))[1] == b"\n":
        pos -= 1  # the final newline ends the last line; it does not start another
    while pos > 0:
        start = max(0, pos - BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) != -1:
            found += 1
            if found == n:
                return start + i + 1
        pos = start
    return 0


def copy_from(f: BinaryIO, offset: int, out: BinaryIO) -> int:
    f.seek(offset)
    while chunk := f.read(BLOCK):
        out.write(chunk)
    out.flush()
    return f.tell()


class Shell:
    def __init__(self, root: Path = Path("/"), out: BinaryIO | None = None, err: TextIO | None = None,
                 sleep: Callable[[float], None] = time.sleep, polls: int | None = None) -> None:
        self.root, self.sleep, self.polls = root, sleep, polls  # polls: tail-the-logs stops after that many (tests)
        self.out = out if out is not None else sys.stdout.buffer
        self.err = err if err is not None else sys.stderr

    def data_plane(self, argv: list[str], environ: dict[str, str]) -> bool:
        """Whether this is the data plane sshd's ForceCommand on a connection to data_ssh_port."""
        if argv != ["-c", ENTER]:
            return False
        fields = environ.get("SSH_CONNECTION", "").split(" ")
        try:
            port = json.loads((self.root / CONFIG).read_text())["data_ssh_port"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return len(fields) == 4 and type(port) is int and fields[3] == str(port)

    def run(self, argv: list[str], stdin: BinaryIO | None = None, environ: dict[str, str] | None = None) -> int:
        if self.data_plane(argv, environ or {}):
            try:
                os.execv(ENTER.split()[0], ENTER.split())
            except OSError as e:
                self.err.write(f"the container cannot be entered: {e.strerror}\n")
                return 1
        try:
            words = parse(argv)
            if words != ["initialize"] and not mounted(self.root):
                raise Refused(f"{words[0]}: refused until /persistent is mounted: run initialize first")
            if words[0] == "logs":
                return self.logs(int(words[1]))
            if words[0] == "tail-the-logs":
                return self.tail()
            if words[0] == "initialize":
                return self.initialize(stdin)
            return self.relay(words[0], MODE_SOCKET, words[0].encode() + b"\n")
        except Refused as e:
            self.err.write(f"{e}\n")
            return e.rc
        except BrokenPipeError:  # the client went away
            return 0

    def _open_logs(self) -> BinaryIO | None:
        try:
            fd = os.open(self.root / LOGS, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise Refused(f"logs: cannot read /{LOGS}: {e.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo would block, a device never end
            os.close(fd)
            raise Refused(f"logs: /{LOGS} is not a regular file")
        return os.fdopen(fd, "rb")

    def logs(self, n: int) -> int:
        f = self._open_logs()
        if f is None:
            self.err.write("logs: no delayed log lines yet\n")
            return 0
        with f:
            copy_from(f, last_lines(f, n), self.out)
        return 0

    def tail(self) -> int:
        f = self._open_logs()
        pos, polls = 0, 0
        try:
            if f is not None:
                pos = copy_from(f, last_lines(f, TAIL_START), self.out)
            while self.polls is None or polls < self.polls:
                polls += 1
                self.sleep(POLL_SECONDS)
                if f is None:
                    f = self._open_logs()
                    pos = 0
                    if f is None:
                        continue
                size = os.fstat(f.fileno()).st_size
                if size < pos:  # truncated or rewritten: start again from its beginning
                    pos = 0
                if size > pos:
                    pos = copy_from(f, pos, self.out)
        finally:
            if f is not None:
                f.close()
        return 0

    def relay(self, word: str, path: str, request: bytes, timeout: float = 120) -> int:
        """Ask the root side (bob-mode or bob-disk serve behind its socket) and pass its answer on."""
        service = "disk" if path == DISK_SOCKET else "mode"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.root / path))
                s.sendall(request)
                data = b""
                while len(data) <= MAX_ANSWER and (chunk := s.recv(4096)):
                    data += chunk
        except OSError as e:
            raise Refused(f"{word}: the {service} service is not answering ({e.strerror or e})") from None
        try:
            answer = json.loads(data[:MAX_ANSWER])
            rc, text = int(answer["rc"]), str(answer["out"])
        except (ValueError, KeyError, TypeError):
            raise Refused(f"{word}: the {service} service gave no answer") from None
        if rc:
            raise Refused(text, rc)
        self.out.write(text.encode() + b"\n")
        self.out.flush()
        return 0

    def initialize(self, stdin: BinaryIO | None) -> int:
        """One passphrase line from stdin, checked here (and again by the root side), relayed to bob-disk."""
        passphrase = read_passphrase(stdin)
        return self.relay("initialize", DISK_SOCKET, b"initialize\n" + passphrase + b"\n", DISK_TIMEOUT)


def read_passphrase(stdin: BinaryIO | None) -> bytes:
    """The first line of stdin without its line end; refused if empty, over MAX_PASSPHRASE bytes or with control bytes."""
    raw = stdin.readline(MAX_PASSPHRASE + 3) if stdin is not None else b""
    line = raw[:-1] if raw.endswith(b"\n") else raw
    line = line[:-1] if line.endswith(b"\r") else line
    if len(line) > MAX_PASSPHRASE:
        raise Refused(f"initialize: the passphrase is longer than {MAX_PASSPHRASE} bytes", 2)
    if not line:
        raise Refused("initialize: no passphrase: send it as one line on stdin (ssh searcher@HOST initialize < FILE)", 2)
    if any(b < 0x20 or b == 0x7F for b in line):
        raise Refused("initialize: the passphrase holds a control character (tab, escape, NUL...): use printable text", 2)
    return line

def main() -> int:
    return Shell().run(sys.argv[1:], sys.stdin.buffer, dict(os.environ))


if __name__ == "__main__":
    sys.exit(main())
