"""stdin/stdout <-> a TCP port inside a sandbox netns: the body of `sealbox _proxy NAME`, which
`sealbox ssh-config` uses as ProxyCommand (the root namespace has no route to an isolated guest).

Lifetime: the loop ends when the guest side closes (then we return and the caller exits, which
closes stdout), or after stdin reached EOF *and* the guest then closed its side (stdin EOF is passed
on as a TCP half-close, so the guest can still flush its last bytes). An optional idle timeout
bounds a silent connection; SSH's own keepalives usually make that unnecessary.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket

from sealbox.errors import SandboxError
from sealbox.sandbox.host.netns import connect_in_netns

BUF = 64 * 1024


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def pump(sock: socket.socket, in_fd: int, out_fd: int, idle_timeout: float | None = None) -> str:
    """Copy both ways until the socket side ends. Returns why it stopped (for logs and tests)."""
    sel = selectors.PollSelector()  # poll, unlike epoll, also accepts a regular file as stdin
    sel.register(in_fd, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    try:
        while True:
            events = sel.select(timeout=idle_timeout)
            if not events:
                return "idle timeout"
            for key, _ in events:
                if key.data == "in":
                    data = os.read(in_fd, BUF)
                    if data:
                        sock.sendall(data)
                        continue
                    sel.unregister(in_fd)  # stdin EOF: half-close, keep reading the guest's answer
                    try:
                        sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        return "socket closed"
                else:
                    try:
                        data = sock.recv(BUF)
                    except ConnectionResetError:
                        return "connection reset"
                    if not data:
                        return "remote closed"
                    try:
                        _write_all(out_fd, data)
                    except BrokenPipeError:
                        return "stdout closed"
    finally:
        sel.close()


def proxy(
    netns: str,
    host: str,
    port: int,
    *,
    connect_timeout: float = 10.0,
    in_fd: int = 0,
    out_fd: int = 1,
    idle_timeout: float | None = None,
) -> str:
    try:
        sock = connect_in_netns(netns, host, port, connect_timeout)
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or errno.errorcode.get(e.errno or 0, str(e)))
        raise SandboxError(f"cannot connect to {host}:{port} in {netns}: {reason}", hint="is the sandbox running? see 'sealbox ps'") from None
    with sock:
        return pump(sock, in_fd, out_fd, idle_timeout)
