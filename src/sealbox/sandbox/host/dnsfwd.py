"""The DNS forwarder process of one nat sandbox: the guest's resolver on the host side of its own link.

Started by DnsForwarderStep (host/dns.py) as
    python -I -m sealbox.sandbox.host.dnsfwd --udp-fd N --tcp-fd M --ready-fd R --client GUEST_IP
        --upstream IP [--upstream IP...] --owner STATE_DIR:NAME --uid U --gid G
Standard library only (it must start fast and small, and it must not import sealbox's heavier parts).

- Sockets: sealbox binds UDP and TCP port 53 on the link's host address *inside the sandbox's network
  namespace* and hands them over; the process itself lives in the root namespace, so its upstream
  queries use the host's own routes and resolvers (127.0.0.53, a VPC resolver, Azure's 168.63.129.16:
  addresses the guest itself may not reach — it reaches only this relay, and only for DNS).
- Privileges: started as root only to import this module (everything, codecs included, is imported
  up front: the interpreter's own files need not be readable to the unprivileged uid); then it drops to --uid/--gid (no groups),
  sets no_new_privs and makes itself non-dumpable, so another process of that uid cannot ptrace it
  and borrow its root-namespace sockets. --owner is never used: it marks the process as this
  sandbox's, so undo and gc find exactly their own forwarder.
- Input is hostile: only datagrams and connections from the guest's address; only messages shaped
  like one standard query (QR=0, opcode QUERY, one question, no answer/authority records, at most one
  additional record — EDNS); everything else is dropped silently. A reply goes back only if it comes
  from the upstream that was asked, carries the query's id and has QR=1.
- Bounded: MAX_UDP queries in flight, MAX_TCP connections, TRY_S per upstream, TCP_S per connection.
"""

from __future__ import annotations

import argparse
import encodings.idna  # noqa: F401 - getaddrinfo needs it: loaded before privileges are dropped
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence

from sealbox.sandbox.host.helperlib import drop_privileges, serve_when_ready

MAX_UDP, MAX_TCP = 64, 16
TRY_S, TCP_S = 2.0, 10.0
UDP_MAX, TCP_MAX = 4096, 16384  # largest query accepted (a real query is < 300 bytes)


def is_query(msg: bytes, limit: int) -> bool:
    """One standard query (see the module docstring)."""
    if not 12 <= len(msg) <= limit:
        return False
    flags, qd, an, ns, ar = struct.unpack("!HHHHH", msg[2:12])
    return not flags & 0x8000 and (flags >> 11) & 0xF == 0 and qd == 1 and an == 0 and ns == 0 and ar <= 1


def is_reply_to(reply: bytes, query: bytes) -> bool:
    return len(reply) >= 12 and reply[:2] == query[:2] and bool(reply[2] & 0x80)


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def ask_udp(query: bytes, upstreams: Sequence[str], port: int = 53) -> bytes | None:
    for up in upstreams:
        with socket.socket(_family(up), socket.SOCK_DGRAM) as s:
            s.settimeout(TRY_S)
            try:
                s.connect((up, port))  # the kernel then drops datagrams from anyone else
                s.send(query)
                for _ in range(8):  # a few stray datagrams at most, each within the timeout
                    reply = s.recv(65535)
                    if is_reply_to(reply, query):
                        return reply
            except OSError:
                continue
    return None


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def ask_tcp(query: bytes, upstreams: Sequence[str], port: int = 53) -> bytes | None:
    for up in upstreams:
        try:
            with socket.create_connection((up, port), timeout=TRY_S) as s:
                s.sendall(struct.pack("!H", len(query)) + query)
                head = _recv_exact(s, 2)
                reply = _recv_exact(s, struct.unpack("!H", head)[0]) if head else None
                if reply and is_reply_to(reply, query):
                    return reply
        except OSError:
            continue
    return None


class Forwarder:
    def __init__(self, udp: socket.socket, tcp: socket.socket, client: str, upstreams: Sequence[str], port: int = 53) -> None:
        self.udp, self.tcp, self.client, self.upstreams, self.port = udp, tcp, client, list(upstreams), port
        self.udp_slots = threading.BoundedSemaphore(MAX_UDP)
        self.tcp_slots = threading.BoundedSemaphore(MAX_TCP)
        self.stop = threading.Event()

    def _udp_one(self, query: bytes, peer: tuple[str, int]) -> None:
        try:
            reply = ask_udp(query, self.upstreams, self.port)
            if reply is not None:
                self.udp.sendto(reply, peer)
        except OSError:
            pass
        finally:
            self.udp_slots.release()

    def _tcp_one(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(TCP_S)
                head = _recv_exact(conn, 2)
                query = _recv_exact(conn, struct.unpack("!H", head)[0]) if head else None
                if query is None or not is_query(query, TCP_MAX):
                    return
                reply = ask_tcp(query, self.upstreams, self.port)
                if reply is not None:
                    conn.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, struct.error):
            pass
        finally:
            self.tcp_slots.release()

    def _spawn(self, slots: threading.BoundedSemaphore, target: Callable[..., None], *args: object) -> bool:
        if not slots.acquire(blocking=False):
            return False  # saturated: drop, the guest's resolver retries
        threading.Thread(target=target, args=args, daemon=True).start()
        return True

    def serve(self) -> None:
        while not self.stop.is_set():
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.5)
            if self.udp in ready:
                try:
                    query, peer = self.udp.recvfrom(65535)
                except OSError:
                    query, peer = b"", ("", 0)
                if peer[0] == self.client and is_query(query, UDP_MAX):
                    self._spawn(self.udp_slots, self._udp_one, query, peer)
            if self.tcp in ready:
                try:
                    conn, peer = self.tcp.accept()
                except OSError:
                    continue
                if peer[0] != self.client or not self._spawn(self.tcp_slots, self._tcp_one, conn):
                    conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sealbox-dnsfwd")
    p.add_argument("--udp-fd", type=int, required=True)
    p.add_argument("--tcp-fd", type=int, required=True)
    p.add_argument("--ready-fd", type=int, required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--upstream", action="append", required=True)
    p.add_argument("--owner", required=True)
    p.add_argument("--uid", type=int, required=True)
    p.add_argument("--gid", type=int, required=True)
    a = p.parse_args(argv)
    udp = socket.socket(fileno=a.udp_fd)
    tcp = socket.socket(fileno=a.tcp_fd)
    drop_privileges(a.uid, a.gid)
    fwd = Forwarder(udp, tcp, a.client, a.upstream)
    return serve_when_ready(a.ready_fd, fwd.serve, fwd.stop.set)


if __name__ == "__main__":
    sys.exit(main())
