"""`sealbox rdp NAME`: an SSH tunnel from the host's loopback to the RDP server of a gui sandbox, and what a client
needs to log in (address, user, password, the fingerprint of the guest's TLS certificate).

The gui module's xrdp listens on the guest's loopback only (127.0.0.1:3389), so nothing on the sandbox network
reaches it; the tunnel is the system `ssh -N -L 127.0.0.1:PORT:127.0.0.1:3389` run in the host's namespace (its
listener must be on the host's loopback), reaching the guest through `sealbox _proxy NAME` as ProxyCommand with the
sandbox's own key and pinned host keys (sandbox/ssh.py), as the desktop user: that login can forward, nothing more
is asked of it. The certificate is read over the same pinned SSH connection when the tunnel opens; what the guest
sends is hostile input: bounded in size and parsed as one PEM certificate, and only its SHA-256 is shown.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox import ssh
from sealbox.sandbox.instance import read_passwords
from sealbox.sandbox.state import StateDir
from sealbox.util.signals import handled

GUEST_PORT = 3389  # the gui module's xrdp.ini: port=tcp://127.0.0.1:3389
CERT_PATH = "/run/sealbox/xrdp/cert.pem"  # written at boot by the gui module's sealbox-xrdp-keys.service
MAX_CERT = 64 * 1024
DEFAULT_PORT = 3389  # on the host's loopback; another free port if it is taken and --port was not given
LISTEN_TIMEOUT = 30.0  # from starting ssh to its listener: authentication over the proxy, under load
HOST = "127.0.0.1"


@dataclass(frozen=True)
class RdpInfo:
    name: str
    port: int  # on the host's loopback
    user: str
    password: str
    fingerprint: str  # SHA-256 of the certificate (DER), lowercase hex pairs joined by ':' (as FreeRDP spells it)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client_example(self) -> str:
        return shlex.join(["xfreerdp", f"/v:{self.address}", f"/u:{self.user}", f"/cert:deny,fingerprint:sha256:{self.fingerprint}"])

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "host": HOST, "port": self.port, "user": self.user,
                "password": self.password, "fingerprint_sha256": self.fingerprint}


def fingerprint(pem: bytes) -> str:
    """SHA-256 of the DER encoding of the PEM certificate the guest sent, as `aa:bb:...` (hostile input)."""
    from cryptography import x509

    hint = "the guest is not behaving; recreate the sandbox"
    if len(pem) > MAX_CERT:
        raise SandboxError(f"the guest's RDP certificate is over {MAX_CERT} bytes", hint=hint)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise SandboxError("the guest's RDP certificate is not a PEM X.509 certificate", hint=hint) from None
    from cryptography.hazmat.primitives.serialization import Encoding

    return ":".join(f"{b:02x}" for b in hashlib.sha256(cert.public_bytes(Encoding.DER)).digest())


def desktop_login(sandbox_dir: Path, name: str, user: str | None) -> tuple[str, str]:
    """(user, password) of the sandbox's desktop user: the one its image gives a password, or `user` of those."""
    passwords = read_passwords(sandbox_dir)
    if not passwords:
        raise UsageError(f"sandbox {name!r} has no desktop user: its image gives no user a password",
                         hint="build the image with the gui module (include = [\"gui\"] or --profile gui)")
    if user is None:
        if len(passwords) > 1:
            raise UsageError(f"sandbox {name!r} has several desktop users ({', '.join(sorted(passwords))})", hint="choose one with --user")
        user = next(iter(passwords))
    if user not in passwords:
        raise UsageError(f"sandbox {name!r} gives {user!r} no password", hint=f"its desktop users: {', '.join(sorted(passwords))}")
    return user, passwords[user]


# In the guest: 3 while the certificate is missing, 4 while xrdp has no LISTEN socket on 127.0.0.1:3389
# (/proc/net/tcp: address and port in hex, state 0A), else the certificate.
_PROBE = (f"test -s {CERT_PATH} || exit 3; "
          f"grep -q ' 0100007F:{GUEST_PORT:04X} 00000000:0000 0A ' /proc/net/tcp || exit 4; cat {CERT_PATH}")


def guest_fingerprint(t: ssh.SshTarget, timeout: float = 30.0, wait: float = 60.0) -> str:
    """The SHA-256 fingerprint of the guest's TLS certificate, once its RDP server listens. The guest makes the
    certificate after SEALBOX-READY (the image orders every unit its spec enables after the ready marker) and xrdp
    starts after that, so a sandbox that just became ready may have neither: ask again, once a second, for up to
    `wait` seconds (facts printed before xrdp listens sent the first client into a reset connection)."""
    deadline = time.monotonic() + wait
    while True:
        status, pem = ssh.output_of_guest(t, ["sh", "-c", _PROBE], timeout, limit=MAX_CERT)
        if status == 0:
            return fingerprint(pem)
        if time.monotonic() >= deadline:
            if status == 4:
                raise SandboxError(f"the desktop server of sandbox {t.name!r} does not listen on 127.0.0.1:{GUEST_PORT} "
                                   f"within {wait:g} s", hint=f"see 'sealbox logs {t.name}' for xrdp")
            raise SandboxError(f"cannot read the RDP certificate {CERT_PATH} in sandbox {t.name!r} within {wait:g} s",
                               hint="is the image built with the gui module? see 'sealbox logs' for sealbox-xrdp-keys")
        time.sleep(1.0)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh binds its listener
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def pick_port(requested: int | None) -> int:
    """`requested` if free (else a clear error); without it 3389, or any free port if that is taken."""
    if requested is not None:
        if not port_free(requested):
            raise UsageError(f"{HOST}:{requested} is already in use on this host", hint="choose another --port")
        return requested
    if port_free(DEFAULT_PORT):
        return DEFAULT_PORT
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tunnel_argv(t: ssh.SshTarget, local_port: int, user: str) -> list[str]:
    """`ssh -N -L` from the host's loopback to the guest's RDP port, through `sealbox _proxy` (pinned keys only)."""
    proxy = shlex.join(ssh.proxy_argv(t.name, t.state_root)).replace("%", "%%")  # ssh expands %-tokens here
    return [ssh.SSH, "-F", "/dev/null", *ssh.common_options(t), "-o", f"ProxyCommand={proxy}",
            "-o", "ExitOnForwardFailure=yes",  # a port someone else took is an error, not a tunnel to nowhere
            "-N", "-L", f"{HOST}:{local_port}:127.0.0.1:{GUEST_PORT}", "-p", str(t.port), "-l", user, t.guest_ip]


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` has a socket listening on 127.0.0.1:`port` (read from /proc, nothing connects)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    if not inodes:
        return False
    want = f"0100007F:{port:04X}"  # /proc/net/tcp: little-endian IPv4 address, port in hex
    with contextlib.suppress(OSError), open(f"/proc/{pid}/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if len(cols) > 9 and cols[1] == want and cols[3] == "0A" and cols[9] in inodes:
                return True
    return False


class Closed(Exception):
    """SIGTERM/SIGHUP while the tunnel is open: close it like Ctrl-C does."""


@contextlib.contextmanager
def _signals_close() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise Closed(signal.Signals(signum).name)

    with handled((signal.SIGTERM, signal.SIGHUP), handler):
        yield


class Tunnel:
    """The running `ssh -N -L` of one `sealbox rdp`; a context manager that always ends it."""

    def __init__(self, state: StateDir, name: str, *, port: int | None = None, user: str | None = None) -> None:
        from sealbox.sandbox import control

        self.target = control.ssh_target(state, name)  # a running sandbox with its key and pinned host keys
        self.user, password = desktop_login(state.sandbox_dir(name), name, user)
        fp = guest_fingerprint(self.target)
        self.info = RdpInfo(name=name, port=pick_port(port), user=self.user, password=password, fingerprint=fp)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Tunnel:
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(_signals_close())
        try:
            self.open()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
        self._stack.close()

    def open(self, timeout: float = LISTEN_TIMEOUT) -> None:
        argv = tunnel_argv(self.target, self.info.port, self.user)
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)  # its errors (LogLevel ERROR) reach the user
        deadline = time.monotonic() + timeout
        while not listening(self.proc.pid, self.info.port):
            if self.proc.poll() is not None:
                raise SandboxError(f"the SSH tunnel to {self.info.name!r} ended (ssh exit {self.proc.returncode}) "
                                   f"before it listened on {self.info.address}", hint="ssh's message above says why")
            if time.monotonic() >= deadline:
                raise SandboxError(f"the SSH tunnel to {self.info.name!r} did not listen on {self.info.address} within {timeout:g}s")
            time.sleep(0.1)

    def wait(self) -> int:
        """Block until ssh ends (the sandbox stopped, the connection dropped); its exit status."""
        assert self.proc is not None
        return self.proc.wait()

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
