"""Command lines for the guest user's shell, built from typed values: every value quoted, none interpolated.

sshd hands the one string it receives to the user's login shell (`$SHELL -c STRING`: bash for root in the
images sealbox builds, dash elsewhere), so the SDK builds that string here. Argv elements, paths, cwd and
environment values pass through `shlex.quote` (POSIX single quotes: nothing inside is special); environment
keys and user names are checked against a strict pattern; a NUL byte, which no argv or environment can
carry, is refused. Relative paths given to `cd` and `find` get a `./` prefix so that a leading `-` is never an
option.

Control lines: before it execs the command, the wrapper writes `<nonce> run <pid>` to stderr (the pid is the
session's process group, which `kill` ends); a failed precondition writes `<nonce> fail <tag>` and exits 1.
The nonce is random per command, so a command's own output cannot be taken for one by accident;
ControlFilter strips them on the host side. (A hostile guest can forge them: that only fails its own commands.)
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping, Sequence

from sealbox.errors import UsageError

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$")
MAX_COMMAND = 96 * 1024  # one argv element on the host is at most 128 KiB (MAX_ARG_STRLEN)
MAX_CONTROL_LINE = 256


def text(value: object, what: str) -> str:
    """`value` if it is a str without NUL bytes, else a one-line UsageError naming `what`."""
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise UsageError(f"{what} {value[:40]!r} contains a NUL byte", hint="no argv element, path or environment value can carry one")
    return value


def check_user(user: str) -> str:
    if not USER_RE.fullmatch(text(user, "user")):
        raise UsageError(f"guest user {user!r} is not a valid user name", hint="letters, digits, '_', '.', '-', at most 32, not starting with '-'")
    return user


def path_arg(path: str, what: str = "path") -> str:
    """A guest path as one quoted word that no command can read as an option."""
    path = text(path, what)
    if not path:
        raise UsageError(f"empty {what}")
    return shlex.quote(path if path.startswith("/") else f"./{path}")


def argv_words(argv: str | Sequence[str]) -> list[str]:
    if isinstance(argv, str):
        raise UsageError("argv must be a list of str")
    words = [text(a, "argv element") for a in argv]
    if not words:
        raise UsageError("empty command", hint="pass a command string or a non-empty argv list")
    return words


class Script:
    """One command line: preconditions, cwd, environment, then the command (exec'd, keeping the pid)."""

    def __init__(self, *, control: bool = True) -> None:
        self.nonce = secrets.token_hex(8)
        self.control = control  # False: an interactive line (nobody reads control lines; the shell's message says it)
        self.parts: list[str] = []

    def fail(self, tag: str) -> str:
        """A shell snippet that reports `tag` on a control line and exits 1."""
        if not self.control:
            return "exit 1"
        return f"{{ printf '%s fail %s\\n' {self.nonce} {tag} >&2; exit 1; }}"

    def require(self, test: str, tag: str) -> Script:
        """`test` (built from quoted words) must succeed, else fail with `tag`."""
        self.parts.append(f"{{ {test}; }} || {self.fail(tag)}")
        return self

    def cd(self, cwd: str | None) -> Script:
        if cwd is not None:
            self.parts.append(f"cd -- {path_arg(cwd, 'cwd')} || {self.fail('cwd')}")
        return self

    def env(self, env: Mapping[str, str] | None) -> Script:
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not ENV_KEY_RE.fullmatch(key):
                raise UsageError(f"environment variable name {key!r} is invalid", hint="letters, digits and '_', not starting with a digit")
            self.parts.append(f"export {key}={shlex.quote(text(value, f'environment value of {key}'))}")
        return self

    def step(self, line: str) -> Script:
        """A line built by the caller from quoted words (shlex.quote / path_arg)."""
        self.parts.append(line)
        return self

    def exec(self, command: str | Sequence[str]) -> str:
        """The finished line: announce the pid, then replace the shell by `command` (argv list: exactly
        those words; str: run by the user's login shell, as `ssh HOST 'CMD'` would)."""
        if isinstance(command, str):
            target = f'"${{SHELL:-/bin/sh}}" -c {shlex.quote(text(command, "command"))}'
        else:
            target = shlex.join(argv_words(command))
        self.parts.append(f"printf '%s run %s\\n' {self.nonce} \"$$\" >&2")
        return self.done(f"exec {target}")

    def plain(self, command: str | Sequence[str]) -> str:
        """The finished line for a terminal session: the command as the shell would run it (builtins work),
        no control line."""
        last = text(command, "command") if isinstance(command, str) else shlex.join(argv_words(command))
        return self.done(last)

    def done(self, last: str | None = None) -> str:
        line = "; ".join([*self.parts, *([last] if last else [])])
        if len(line) > MAX_COMMAND:
            raise UsageError(f"the command line is {len(line)} bytes; at most {MAX_COMMAND} fit",
                             hint="pass large data through stdin or sb.files.write")
        return line


class ControlFilter:
    """Takes the wrapper's control lines out of a command's stderr (everything else passes through).

    Only lines before the `run` line can be control lines; from then on the bytes are the command's own.
    A line longer than MAX_CONTROL_LINE is nobody's control line: it is passed on, so nothing is held
    without bound."""

    def __init__(self, nonce: str) -> None:
        self.prefix = f"{nonce} ".encode()
        self.held = b""
        self.started = False
        self.pid: int | None = None
        self.failed: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        if self.started:
            return chunk
        data, out = self.held + chunk, bytearray()
        while not self.started:
            nl = data.find(b"\n")
            if nl < 0:
                break
            line, data = data[: nl + 1], data[nl + 1 :]
            if not (line.startswith(self.prefix) and self._control(line[len(self.prefix) :].strip())):
                out += line
        if self.started or len(data) > MAX_CONTROL_LINE:
            out += data
            data = b""
        self.held = data
        return bytes(out)

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return held

    def _control(self, body: bytes) -> bool:
        words = body.split()
        if len(words) == 2 and words[0] == b"run" and words[1].isdigit() and len(words[1]) <= 10:
            self.pid, self.started = int(words[1]), True
            return True
        if len(words) == 2 and words[0] == b"fail" and words[1].isalpha() and len(words[1]) <= 32:
            self.failed = self.failed or words[1].decode()
            return True
        return False
