"""The port forwarder process of one sandbox: `sealbox run --publish` (host/publish.py starts it).

    python -I -m sealbox.sandbox.host.portfwd --netns /var/run/netns/sealbox-NAME --target GUEST_IP
        --map FD:tcp:GUEST_PORT [--map FD:udp:GUEST_PORT ...] --ready-fd R --owner MARK --uid U --gid G

Standard library only (it must start fast and small and must not import sealbox's heavier parts).

- Sockets: sealbox binds each published host address and port in the host's network namespace and hands the
  bound sockets over (FD), so the port is reserved by the kernel for exactly as long as this process lives. The
  process itself moves into the sandbox's network namespace before anything else: every socket it opens later
  (towards the guest) is there, where the only way out is the guest's own link. It connects to nothing but
  TARGET at the published guest ports.
- Privileges: root only until it has entered the namespace; then uid/gid U/G (no groups), no_new_privs, not
  dumpable (another process of that uid cannot ptrace it and borrow its host-namespace sockets). Everything it
  imports is imported before that (the interpreter's files need not be readable to U).
- Bytes are relayed, never parsed. Bounded: MAX_TCP connections and MAX_UDP client sessions per process, CONNECT_S
  to reach the guest, UDP sessions forgotten after UDP_IDLE_S without traffic. --owner marks the process as the
  sandbox's, so rm and gc stop exactly their own forwarder.
"""

from __future__ import annotations

import argparse
import contextlib
import encodings.idna  # noqa: F401 - every address tuple goes through the idna codec: loaded while files are readable
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Sequence

from sealbox.sandbox.host.helperlib import drop_privileges, serve_when_ready
from sealbox.sandbox.host.nsenter import enter_net

MAX_TCP, MAX_UDP = 256, 256
CONNECT_S, UDP_IDLE_S = 5.0, 60.0
CHUNK = 65536


def enter_netns(path: str) -> None:
    """Move this (still single-threaded) process into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_net(fd)
    finally:
        os.close(fd)


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until both directions have ended; an EOF is passed on as a half-close."""
    open_in = {a: b, b: a}  # source -> sink, while the source still sends
    try:
        while open_in:
            ready, _, _ = select.select(list(open_in), [], [])
            for src in ready:
                data = src.recv(CHUNK)
                if data:
                    open_in[src].sendall(data)
                    continue
                sink = open_in.pop(src)
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # a reset on either side ends the connection
    finally:
        a.close()
        b.close()


class Forwarder:
    def __init__(self, target: str, tcp: dict[socket.socket, int], udp: dict[socket.socket, int]) -> None:
        self.target, self.tcp, self.udp = target, tcp, udp
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP)
        self.sessions: dict[tuple[socket.socket, tuple[str, int]], tuple[socket.socket, float]] = {}
        self.back: dict[socket.socket, tuple[socket.socket, tuple[str, int]]] = {}
        self.stop = threading.Event()

    def _tcp_one(self, client: socket.socket, port: int) -> None:
        try:
            guest = socket.create_connection((self.target, port), timeout=CONNECT_S)
            guest.settimeout(None)
        except Exception:  # noqa: BLE001 - whatever went wrong, the client is told at once (closed)
            client.close()
        else:
            pump(client, guest)
        finally:
            self.tcp_slots.release()

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _peer = listener.accept()
        except OSError:
            return
        if not self.tcp_slots.acquire(blocking=False):
            client.close()  # saturated
            return
        threading.Thread(target=self._tcp_one, args=(client, self.tcp[listener]), daemon=True).start()

    def _udp_in(self, listener: socket.socket) -> None:
        try:
            data, peer = listener.recvfrom(CHUNK)
        except OSError:
            return
        key = (listener, peer)
        now = time.monotonic()
        session = self.sessions.get(key)
        if session is None:
            if len(self.sessions) >= MAX_UDP:
                return  # saturated: drop, as a busy network would
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                out.connect((self.target, self.udp[listener]))  # replies from anyone else are dropped by the kernel
            except OSError:
                out.close()
                return
            self.back[out] = key
        else:
            out = session[0]
        self.sessions[key] = (out, now)
        with contextlib.suppress(OSError):
            out.send(data)

    def _udp_back(self, out: socket.socket) -> None:
        listener, peer = self.back[out]
        try:
            data = out.recv(CHUNK)
            listener.sendto(data, peer)
        except OSError:
            return
        self.sessions[(listener, peer)] = (out, time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for key, (out, seen) in list(self.sessions.items()):
            if now - seen > UDP_IDLE_S:
                del self.sessions[key]
                del self.back[out]
                out.close()

    def serve(self) -> None:
        while not self.stop.is_set():
            watch = [*self.tcp, *self.udp, *self.back]
            ready, _, _ = select.select(watch, [], [], 1.0)
            for s in ready:
                if s in self.tcp:
                    self._accept(s)
                elif s in self.udp:
                    self._udp_in(s)
                elif s in self.back:
                    self._udp_back(s)
            self._expire()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sealbox-portfwd")
    p.add_argument("--netns", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--map", action="append", required=True, help="FD:tcp|udp:GUEST_PORT")
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--owner", required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    a = p.parse_args(argv)
    tcp: dict[socket.socket, int] = {}
    udp: dict[socket.socket, int] = {}
    for m in a.map:
        fd, proto, port = m.split(":")
        (tcp if proto == "tcp" else udp)[socket.socket(fileno=int(fd))] = int(port)
    enter_netns(a.netns)  # before any thread exists: setns applies to the calling thread only
    drop_privileges(a.uid, a.gid)
    fwd = Forwarder(a.target, tcp, udp)
    return serve_when_ready(a.ready_fd, fwd.serve, fwd.stop.set)


if __name__ == "__main__":
    sys.exit(main())
