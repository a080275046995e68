"""Run host tools through one helper: an explicit minimal environment, a time bound, a checked exit status, and
errors that name the command and its stderr tail.

Every tool runs in a session of its own (so a timeout or an interrupt takes down its whole process group,
not just the first process) and with a parent-death signal (so a SIGKILLed sealbox does not leave it
running). Its environment is built here, never inherited: the caller's locale, LANGUAGE, HOME or TMPDIR
must not change what a tool prints or writes (apt honours LANGUAGE even under LC_ALL=C.UTF-8).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from sealbox.errors import ToolError

log = logging.getLogger("sealbox.run")

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 600.0  # seconds; callers with longer work (mmdebstrap) pass their own
GRACE = 10.0  # seconds between SIGTERM and SIGKILL when a tool must stop

# Debian packages that provide the tools sealbox calls, for fix hints.
TOOL_PACKAGES = {
    "mmdebstrap": "mmdebstrap",
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "nft": "nftables",
    "ip": "iproute2",
    "bwrap": "bubblewrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "zstd": "zstd",
    "objcopy": "binutils",
    "pesign": "pesign",
    "dpkg-deb": "dpkg",
    "setpriv": "util-linux",
    "mkfs.fat": "dosfstools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "unshare": "util-linux",
    "disorderfs": "disorderfs",
    "fusermount3": "fuse3",
    "openssl": "openssl",
}

# When set (by the builder, per step), every run() appends its command line and full output here, so the log of a
# failed step holds more than the error's tail.
_TRANSCRIPT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("sealbox_run_transcript", default=None)
# File descriptors every tool inherits within inherited_fds() (the builder's work-dir lock: held while any tool lives).
_INHERIT: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar("sealbox_run_inherit", default=())


def which(tool: str) -> str:
    """Absolute path of `tool`, or a ToolError saying which Debian package provides it."""
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":" + SYSTEM_PATH)
    if path is None:
        pkg = TOOL_PACKAGES.get(tool)
        fix = f"install it with: apt-get install {pkg}" if pkg else "install it and put it on PATH"
        raise ToolError(f"required tool '{tool}' was not found", hint=fix)
    return path


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment a tool sees: PATH, the C.UTF-8 locale, UTC, plus `extra` — nothing else is inherited."""
    env = {"PATH": os.environ.get("PATH") or SYSTEM_PATH, "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    env.update(extra or {})
    return env


@contextlib.contextmanager
def transcript(path: Path | None) -> Iterator[None]:
    """Within this block, every run() appends its command and output to `path`."""
    token = _TRANSCRIPT.set(path)
    try:
        yield
    finally:
        _TRANSCRIPT.reset(token)


@contextlib.contextmanager
def inherited_fds(fds: tuple[int, ...]) -> Iterator[None]:
    """Within this block, every run() passes `fds` on to its tool (besides those an enclosing block passes)."""
    token = _INHERIT.set(_INHERIT.get() + fds)
    try:
        yield
    finally:
        _INHERIT.reset(token)


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the tool's process group, give it GRACE seconds to clean up, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, GRACE)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is gone; members it left behind are not


def _record(path: Path, args: list[str], rc: int | None, out: bytes | None, err: bytes | None) -> None:
    with contextlib.suppress(OSError), open(path, "ab") as f:
        f.write(f"$ {shlex.join(args)}\n".encode())
        for label, data in (("stdout", out), ("stderr", err)):
            if data:
                f.write(f"--- {label}\n".encode() + data + (b"" if data.endswith(b"\n") else b"\n"))
        f.write(f"--- exit {rc if rc is not None else 'killed'}\n".encode())


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    what: str | None = None,
    log_file: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (argv[0] resolved with `which`) with tool_env(env). Raises ToolError on failure or timeout.

    `log_file`: stdout and stderr go to that file instead of memory (long, chatty tools); the error quotes its tail.
    `timeout=None` is for tools whose duration the user controls (an interactive session), never for build steps.
    """
    args = [str(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    label = what or Path(args[0]).name
    log.debug("run: %s", shlex.join(args))
    # setpriv --pdeathsig: the kernel kills the tool when sealbox dies, even by SIGKILL (no handler runs then)
    setpriv = shutil.which("setpriv", path=SYSTEM_PATH)
    full = [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args
    logf = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 - closed below
    sink: int | IO[bytes] | None = logf if logf is not None else (subprocess.PIPE if capture else None)
    try:
        proc = subprocess.Popen(full, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT if logf is not None else sink, env=tool_env(env), cwd=cwd,
                                start_new_session=True, pass_fds=_INHERIT.get())
    except OSError as e:
        if logf is not None:
            logf.close()
        raise ToolError(f"{label} could not be started: {e.strerror or e}") from None
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        raise ToolError(f"{label} timed out after {timeout:g}s") from None
    except BaseException:  # an interrupt (SIGINT/SIGTERM handler) or any error: the tool must not outlive us
        _stop_group(proc)
        raise
    finally:
        if logf is not None:
            logf.close()
    if (path := _TRANSCRIPT.get()) is not None and log_file is None:
        _record(path, args, proc.returncode, out, err)
    if check and proc.returncode != 0:
        if log_file is not None:
            text = Path(log_file).read_bytes()[-65536:].decode(errors="replace")
        else:
            text = (err or b"").decode(errors="replace") or (out or b"").decode(errors="replace")
        raise ToolError(f"{label} failed (exit {proc.returncode}): {_tail(text) or 'no output'}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def output(argv: Sequence[str | os.PathLike[str]], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
           timeout: float | None = DEFAULT_TIMEOUT, what: str | None = None) -> str:
    """stdout of a successful run, decoded and stripped."""
    return run(argv, env=env, cwd=cwd, timeout=timeout, what=what).stdout.decode().strip()
