"""Run host tools with clear errors: a missing tool or a failure names the command and its stderr tail."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from sealbox.errors import ToolError

log = logging.getLogger("sealbox.run")

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
    "openssl": "openssl",
}


def which(tool: str) -> str:
    """Absolute path of `tool`, or a ToolError saying which Debian package provides it."""
    path = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if path is None:
        pkg = TOOL_PACKAGES.get(tool)
        fix = f"install it with: apt-get install {pkg}" if pkg else "install it and put it on PATH"
        raise ToolError(f"required tool '{tool}' was not found", hint=fix)
    return path


def _tail(text: str, lines: int = 6) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    what: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv (argv[0] resolved with `which`). Raises ToolError on failure with the stderr tail."""
    args = [str(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("run: %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=capture,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise ToolError(f"{what or Path(args[0]).name} timed out after {timeout:g}s") from e
    if check and proc.returncode != 0:
        err = _tail((proc.stderr or b"").decode(errors="replace") or (proc.stdout or b"").decode(errors="replace"))
        label = what or Path(args[0]).name
        raise ToolError(f"{label} failed (exit {proc.returncode}): {err or 'no output'}")
    return proc


def output(argv: Sequence[str | os.PathLike[str]], **kw: object) -> str:
    """stdout of a successful run, decoded and stripped."""
    return run(argv, **kw).stdout.decode().strip()  # type: ignore[arg-type]
