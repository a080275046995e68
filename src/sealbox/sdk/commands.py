"""`sb.commands`: run commands in the guest over the sandbox's SSH channel.

    r = sb.commands.run(["ls", "-l", "/"])                 # argv: exactly these words
    r = sb.commands.run("make -j2 && make test", cwd="/src", env={"CC": "gcc"}, timeout=600)
    h = sb.commands.run(["sleep", "60"], background=True); h.kill()

A command is one SSH session (multiplexed over the sandbox's master connection when there is one); its
stdin, stdout and stderr are the session's; its exit status is the session's. `timeout` bounds the command's
whole life: when it passes, the command's process group in the guest is killed and CommandTimeout is raised
with what it printed so far.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, overload

from sealbox.errors import SandboxError, SandboxTimeout
from sealbox.sdk import shell
from sealbox.sdk.process import DEFAULT_MAX_OUTPUT, ByteSink, Execution, Input, TextCallback

if TYPE_CHECKING:
    from sealbox.sdk.host import Host

DEFAULT_TIMEOUT = 60.0
KILLED = -int(signal.SIGKILL)
SSH_FAILED = 255  # ssh's own exit status when it could not run the session


@dataclass(frozen=True)
class CommandResult:
    """How a command ended. `exit_code` is its exit status; -9 if kill() or the timeout ended it."""

    exit_code: int
    stdout: str
    stderr: str
    duration_s: float
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    truncated: bool = False  # more output than max_output arrived; the rest was dropped (callbacks saw it all)

    def check(self) -> CommandResult:
        """This result, or CommandFailed if the exit code is not 0."""
        if self.exit_code != 0:
            raise CommandFailed(self)
        return self


class CommandFailed(SandboxError):
    """A command exited non-zero (raised with check=True or by CommandResult.check())."""

    def __init__(self, result: CommandResult) -> None:
        tail = result.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        super().__init__(f"command exited {result.exit_code}: {tail[0][:200]}")
        self.result = result


class CommandTimeout(SandboxTimeout):
    """A command outlived its timeout and was killed; `result` holds what it printed until then."""

    def __init__(self, message: str, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


class CommandHandle:
    """A command started with background=True (run() waits on one of these itself)."""

    def __init__(self, host: Host, name: str, user: str | None, script: shell.Script, remote: str, *,
                 stdin: Input | None, on_stdout: TextCallback | None, on_stderr: TextCallback | None,
                 timeout: float | None, max_output: int, stdout_sink: ByteSink | None = None) -> None:
        self._host, self._name, self._user, self._timeout = host, name, user, timeout
        self._t0 = time.monotonic()
        channel, on_end = host.spawn(name, remote, user=user, stdin=stdin is not None)
        self._exec = Execution(channel, shell.ControlFilter(script.nonce), stdin=stdin, on_stdout=on_stdout,
                               on_stderr=on_stderr, max_output=max_output, stdout_sink=stdout_sink, on_end=on_end)
        self._killed = threading.Event()
        self._timed_out = False
        self._result: CommandResult | None = None
        self._timer = threading.Timer(timeout, self._expire) if timeout is not None else None
        if self._timer is not None:
            self._timer.daemon = True
            self._timer.start()

    @property
    def pid(self) -> int | None:
        """The command's pid in the guest (also its process group), once it runs; None if it never started."""
        self._exec.started.wait(30)
        return self._exec.pid

    def poll(self) -> int | None:
        """The exit code if it ended, else None."""
        if not self._exec.finished():
            return None
        return self._collect(0).exit_code if self._result is None else self._result.exit_code

    def _expire(self) -> None:
        self._timed_out = True
        self.kill()

    def kill(self) -> bool:
        """Kill the command's process group in the guest (SIGKILL), then its SSH session. False if it had ended."""
        if self._exec.finished():
            return False
        self._killed.set()
        self._exec.started.wait(5)
        pid = self._exec.pid
        if pid is not None and pid > 1:
            try:
                ch, end = self._host.spawn(self._name, f"kill -s KILL -- -{pid}", user=self._user, stdin=False)
                try:
                    ch.wait(15)
                finally:
                    ch.kill() if ch.poll() is None else None
                    end()
            except Exception:  # noqa: BLE001 - the session's own end below still stops it here
                pass
        if self._exec.wait(5) is None:  # the guest did not close the session: end it on this side
            self._exec.channel.kill()
        return True

    def wait(self, timeout: float | None = None) -> CommandResult:
        """Wait for the command to end and return its result. `timeout` bounds this wait only (SandboxTimeout
        if it passes; the command keeps running). CommandTimeout if the command's own timeout killed it."""
        result = self._collect(timeout)
        self._exec.raise_callback_errors()
        if self._timed_out:
            raise CommandTimeout(f"command killed after its timeout of {self._timeout:g}s", result)
        return result

    def _collect(self, timeout: float | None) -> CommandResult:
        if self._result is None:
            try:
                code = self._exec.wait(timeout)
            except KeyboardInterrupt:
                self.kill()
                raise
            if code is None:
                raise SandboxTimeout(f"command still running after waiting {timeout:g}s", hint="wait longer, or kill() it")
            if self._timer is not None:
                self._timer.cancel()
            self._result = self._finish(code)
        return self._result

    def _finish(self, code: int) -> CommandResult:
        ctl = self._exec.control
        assert ctl is not None
        out, err = bytes(self._exec.out.buf), bytes(self._exec.err.buf)
        result = CommandResult(
            exit_code=KILLED if self._killed.is_set() and code in (SSH_FAILED, -9) else code,
            stdout=out.decode(errors="replace"), stderr=err.decode(errors="replace"),
            duration_s=round(time.monotonic() - self._t0, 6), stdout_bytes=out, stderr_bytes=err,
            truncated=self._exec.out.truncated or self._exec.err.truncated)
        if ctl.failed == "cwd":
            raise SandboxError(f"cannot change to the working directory in the guest: {_last_line(err)}")
        if not ctl.started and not self._killed.is_set():
            # the wrapper never reached the command: ssh could not log in or the sandbox is gone
            raise SandboxError(f"could not run the command in sandbox {self._name!r}: {_last_line(err) or f'ssh exited {code}'}",
                               hint=f"is it running? see 'sealbox ps --all' and 'sealbox logs {self._name}'")
        return result


def _last_line(data: bytes) -> str:
    lines = data.decode(errors="replace").strip().splitlines()
    return lines[-1][:300] if lines else ""


class Commands:
    """Commands in one sandbox's guest (`sb.commands`)."""

    def __init__(self, host: Host, name: str) -> None:
        self._host, self._name = host, name

    @overload
    def run(self, cmd: str | Sequence[str], *, timeout: float | None = ..., env: Mapping[str, str] | None = ...,
            cwd: str | None = ..., user: str | None = ..., stdin: Input | None = ..., on_stdout: TextCallback | None = ...,
            on_stderr: TextCallback | None = ..., background: Literal[False] = ..., check: bool = ...,
            max_output: int = ...) -> CommandResult: ...

    @overload
    def run(self, cmd: str | Sequence[str], *, timeout: float | None = ..., env: Mapping[str, str] | None = ...,
            cwd: str | None = ..., user: str | None = ..., stdin: Input | None = ..., on_stdout: TextCallback | None = ...,
            on_stderr: TextCallback | None = ..., background: Literal[True], check: bool = ...,
            max_output: int = ...) -> CommandHandle: ...

    def run(self, cmd: str | Sequence[str], *, timeout: float | None = DEFAULT_TIMEOUT, env: Mapping[str, str] | None = None,
            cwd: str | None = None, user: str | None = None, stdin: Input | None = None,
            on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
            background: bool = False, check: bool = False, max_output: int = DEFAULT_MAX_OUTPUT) -> CommandResult | CommandHandle:
        """Run `cmd` in the guest and return its result once it ended.

        cmd: an argv list (run as exactly these words) or a string (run by the guest user's login shell).
        timeout: seconds the command may run (None: no limit); then it is killed and CommandTimeout raised.
        env, cwd, user: its environment additions, working directory and guest user (default: the sandbox's).
        stdin: bytes, text, a binary file or an iterable of byte chunks (streamed); default: empty.
        on_stdout / on_stderr: called with text as it arrives (from another thread).
        background: return a CommandHandle at once instead (see run_background).
        check: raise CommandFailed on a non-zero exit code.
        max_output: bytes of stdout and of stderr kept in the result (callbacks see everything)."""
        handle = self.run_background(cmd, timeout=timeout, env=env, cwd=cwd, user=user, stdin=stdin, on_stdout=on_stdout,
                                     on_stderr=on_stderr, max_output=max_output)
        if background:
            return handle
        result = handle.wait()
        return result.check() if check else result

    def run_background(self, cmd: str | Sequence[str], *, timeout: float | None = None, env: Mapping[str, str] | None = None,
                       cwd: str | None = None, user: str | None = None, stdin: Input | None = None,
                       on_stdout: TextCallback | None = None, on_stderr: TextCallback | None = None,
                       max_output: int = DEFAULT_MAX_OUTPUT, stdout_sink: ByteSink | None = None) -> CommandHandle:
        """Start `cmd` and return its handle at once: wait() for its result, kill() to end it. The same
        arguments as run(); `timeout` defaults to no limit here. stdout_sink: stdout's bytes go there, as
        they come, instead of into the result (e.g. a binary file)."""
        if timeout is not None and not timeout > 0:
            raise SandboxError(f"timeout must be positive seconds or None, not {timeout!r}")
        if user is not None:
            shell.check_user(user)
        script = shell.Script().cd(cwd).env(env)
        remote = script.exec(cmd)
        return CommandHandle(self._host, self._name, user, script, remote, stdin=stdin, on_stdout=on_stdout,
                             on_stderr=on_stderr, timeout=timeout, max_output=max_output, stdout_sink=stdout_sink)

    def exec(self, cmd: str | Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
             user: str | None = None, tty: bool = False) -> None:
        """Replace the calling process by the command over SSH (os.exec semantics: for command-line tools;
        stdin/stdout/stderr, a terminal with tty=True, signals and the exit status are the command's).
        It returns only if something stands in for the exec (tests)."""
        if user is not None:
            shell.check_user(user)
        remote = shell.Script(control=False).cd(cwd).env(env).plain(cmd)
        exec_replace = getattr(self._host, "exec_replace", None)
        if exec_replace is None:
            raise SandboxError("this host cannot replace the calling process", hint="use sb.commands.run")
        exec_replace(self._name, remote, user=user, tty=tty)
