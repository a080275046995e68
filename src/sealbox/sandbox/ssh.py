"""Reaching a sandbox's guest with the system OpenSSH client: argv, ssh_config, known_hosts, probe.

The root namespace has no route to a guest (isolated mode), so every connection starts inside the
sandbox's netns: `exec`/`ssh` enter the netns and exec `ssh` there (no proxy process in the data
path); `ssh-config` uses `sealbox _proxy NAME` as ProxyCommand so that the user's own `ssh`, `scp`,
`rsync` and port forwards work unchanged from the root namespace.

Trust: the guest's host keys are pinned from the console (guest/console.py) into the sandbox's own
known_hosts under the alias `sealbox-<name>` (HostKeyAlias), with StrictHostKeyChecking=yes, so the
first connection is not trust-on-first-use and an address reused by another sandbox cannot match.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sealbox.errors import SandboxError
from sealbox.guest.console import HostKey
from sealbox.util import atomic

SSH = "ssh"
NSENTER = "nsenter"
SETPRIV = "setpriv"
KNOWN_HOSTS = "known_hosts"
BANNER = b"SSH-"


def host_alias(name: str) -> str:
    return f"sealbox-{name}"


@dataclass(frozen=True)
class SshTarget:
    """Everything needed to connect to one sandbox's guest (built from its record)."""

    name: str
    netns: str
    guest_ip: str
    key: Path
    known_hosts: Path
    state_root: Path
    user: str = "root"
    port: int = 22

    @property
    def alias(self) -> str:
        return host_alias(self.name)


def known_hosts_text(alias: str, keys: Sequence[HostKey]) -> str:
    return "".join(f"{alias} {k.line()}\n" for k in keys)


def write_known_hosts(path: Path, alias: str, keys: Sequence[HostKey]) -> None:
    if not keys:
        raise SandboxError("no guest host keys to pin", hint="the guest must print SEALBOX-HOSTKEY lines before SEALBOX-READY")
    atomic.write_text(path, known_hosts_text(alias, keys), mode=0o600)


def common_options(t: SshTarget, *, control: Path | None = None, master: bool = False) -> list[str]:
    """Options shared by exec/ssh: only our key, only our pinned host keys, never prompt.

    `control`: the socket of a master connection (sessions are multiplexed over it, no new handshake;
    if it is gone, ssh connects by itself); with `master`, this ssh is that master."""
    opts = {
        "IdentityFile": str(t.key),
        "IdentitiesOnly": "yes",
        "IdentityAgent": "none",
        "UserKnownHostsFile": str(t.known_hosts),
        "GlobalKnownHostsFile": "/dev/null",
        "StrictHostKeyChecking": "yes",
        "HostKeyAlias": t.alias,
        "CheckHostIP": "no",
        "UpdateHostKeys": "no",
        "BatchMode": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "ControlMaster": "yes" if master else "no",
        "ControlPath": str(control) if control else "none",
        "ConnectTimeout": "15",
        "ServerAliveInterval": "15",  # a dead VM ends the session within a minute instead of never
        "ServerAliveCountMax": "4",
        "LogLevel": "ERROR",
    }
    out: list[str] = []
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    return out


def exec_argv(t: SshTarget, command: Sequence[str], *, user: str | None = None, tty: bool = False,
              stdin_is_tty: bool = False) -> list[str]:
    """`ssh` argv that runs `command` (argv semantics, quoted for the remote shell) in the guest.

    stdin is passed through unless it is a terminal and no tty was requested (then -n, so a command
    that never reads stdin cannot block on the user's terminal)."""
    if not command:
        raise SandboxError("no command given", hint="usage: sealbox exec NAME -- CMD [ARGS...]")
    return remote_argv(t, shlex.join(command), user=user, tty=tty, stdin_is_tty=stdin_is_tty)


def remote_argv(t: SshTarget, remote: str, *, user: str | None = None, tty: bool = False, stdin_is_tty: bool = False,
                control: Path | None = None) -> list[str]:
    """`ssh` argv that hands `remote` to the guest user's shell as it is (the caller quoted it)."""
    argv = [SSH, "-F", "/dev/null", *common_options(t, control=control), "-p", str(t.port), "-l", user or t.user]
    if tty:
        argv.append("-t" if stdin_is_tty else "-tt")
    else:
        argv.append("-T")
        if stdin_is_tty:
            argv.append("-n")
    return [*argv, t.guest_ip, "--", remote]


def master_argv(t: SshTarget, control: Path, *, user: str | None = None) -> list[str]:
    """A master connection (no session of its own) at `control`, killed when the thread that started it
    ends (setpriv --pdeathsig): it never outlives the program that owns it. Keepalives as a session's: the
    sessions multiplexed over it end with it, so it must not give up on a guest that is only slow."""
    ssh_argv = [SSH, "-F", "/dev/null", *common_options(t, control=control, master=True), "-N", "-p", str(t.port),
                "-l", user or t.user, t.guest_ip]
    return [SETPRIV, "--pdeathsig", "KILL", "--", *ssh_argv]


def in_netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """`argv` run inside network namespace `netns` by nsenter: a plain exec, safe from any thread
    (unlike setns in a preexec hook)."""
    from sealbox.sandbox.host.netns import netns_path

    return [NSENTER, f"--net={netns_path(netns)}", "--", *argv]


def shell_argv(t: SshTarget, *, user: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """Interactive `ssh` argv (a tty is allocated when stdin is a terminal).

    `extra` follows the host, where ssh itself reads further options up to the first other word and
    takes the rest as the remote command: `sealbox ssh NAME -L 8080:localhost:80 uname -a` works as ssh does."""
    return [SSH, "-F", "/dev/null", *common_options(t), "-p", str(t.port), "-l", user or t.user, t.guest_ip, *extra]


def proxy_argv(name: str, state_root: Path) -> list[str]:
    """`sealbox _proxy NAME` through the interpreter sealbox runs under (works without PATH setup)."""
    return [sys.executable, "-m", "sealbox.cli.main", "_proxy", name, "--state-dir", str(Path(state_root).resolve())]


def _cfg_value(value: str) -> str:
    # ssh_config expands %-tokens in these values; paths with spaces need quoting
    value = value.replace("%", "%%")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def config_stanza(t: SshTarget, alias: str | None = None) -> str:
    """An ssh_config `Host` block; `ssh -F FILE ALIAS`, scp, rsync -e and -L forwards use it as is."""
    proxy = " ".join(shlex.quote(a) for a in proxy_argv(t.name, t.state_root)).replace("%", "%%")
    lines = [
        f"Host {alias or t.alias}",
        f"  HostName {t.guest_ip}",
        f"  Port {t.port}",
        f"  User {t.user}",
        f"  ProxyCommand {proxy}",
        f"  IdentityFile {_cfg_value(str(t.key))}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_cfg_value(str(t.known_hosts))}",
        "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes",
        f"  HostKeyAlias {t.alias}",
        "  CheckHostIP no",
        "  UpdateHostKeys no",
        "  PasswordAuthentication no",
        "  KbdInteractiveAuthentication no",
        "  ServerAliveInterval 15",
        "  LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"


def exec_in_netns(netns: str, argv: list[str]) -> None:
    """Replace this process by `argv` running inside network namespace `netns` (never returns).

    setns() only moves the calling thread; exec right after makes that the whole new process."""
    from sealbox.sandbox.host.netns import netns_path
    from sealbox.sandbox.host.nsenter import enter_net
    from sealbox.util.run import which

    path = netns_path(netns)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SandboxError(f"network namespace {netns!r} does not exist", hint="is the sandbox running? see 'sealbox ps'") from None
    try:
        enter_net(fd)
    except OSError as e:
        raise SandboxError(f"cannot enter network namespace {netns!r}: {e.strerror}", hint="sealbox exec must run as root") from None
    finally:
        os.close(fd)
    binary = which(argv[0])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(binary, argv)


def run_in_guest(t: SshTarget, command: Sequence[str], timeout: float) -> int | None:
    """Run `command` over SSH from inside the sandbox's netns; its exit status, None if ssh did not finish."""
    return output_of_guest(t, command, timeout, limit=1 << 20)[0]  # output is not used; a flood ends it


def output_of_guest(t: SshTarget, command: Sequence[str], timeout: float, limit: int) -> tuple[int | None, bytes]:
    """Run `command` as root over SSH from inside the sandbox's netns: (exit status, stdout). The guest is hostile:
    at most `limit` bytes are kept (more ends the command, status None), and `timeout` bounds the whole run."""
    import select
    import subprocess

    from sealbox.sandbox.host.netns import netns_path
    from sealbox.sandbox.host.nsenter import enter_net

    argv = exec_argv(t, command, user="root")
    try:
        fd = os.open(netns_path(t.netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, b""
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: enter_net(fd))  # the child enters the netns, then execs ssh
    except OSError:
        return None, b""
    finally:
        os.close(fd)
    assert proc.stdout is not None
    out, deadline, status = b"", time.monotonic() + timeout, None
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([proc.stdout], [], [], left)[0]:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if chunk:
                    out += chunk
                    if len(out) > limit:
                        break  # more than asked for: not an answer to trust
                    continue
                status = proc.wait(max(0.1, deadline - time.monotonic()))
            break
    except subprocess.TimeoutExpired:
        status = None
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    return status, out[:limit]


def probe_ssh(netns: str, host: str, port: int = 22, timeout: float = 2.0) -> str | None:
    """One attempt: connect from inside `netns` and read the server's SSH banner. None if not (yet) up."""
    from sealbox.sandbox.host.netns import connect_in_netns

    try:
        sock = connect_in_netns(netns, host, port, timeout)
    except OSError:
        return None
    with sock:
        sock.settimeout(timeout)
        data = b""
        deadline = time.monotonic() + timeout
        try:
            while b"\n" not in data and len(data) < 256 and time.monotonic() < deadline:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
        except (TimeoutError, OSError):
            return None
    return data.split(b"\n", 1)[0].strip().decode("ascii", "replace") if data.startswith(BANNER) else None
