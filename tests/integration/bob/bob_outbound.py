"""Outbound probes of a booted bob guest, seen from the host side of its link (test helper).

The guest has no root shell, so the probes start in the searcher's container: its workload reads commands from
the input-only UDP port ("VERB ADDR PORT SPORT TAG", VERB tcp or udp, SPORT a source port or "-") and tries each
connection in the background, logging "probe VERB ADDR PORT SPORT TAG rc=N" when it is done. The "outside"
addresses are documentation ranges that never leave this machine: a test-only nat table in the sandbox's own
namespace (made by sealbox, removed with it) rewrites each probed ADDR:PORT to a listener of its own on the host
side of the link, where the arrivals are recorded. A probe that arrives got through every wall on the way (the
container's rules, the guest's mode rule set, sealbox's host-side table); one that does not was dropped. The
container's log, tagged per round, shows that every probe of every round was tried.

The oracle, written from issue 14's list (not from builder/bob_firewall.py): which outbound connections of the
searcher's container reach the outside in which mode. Consensus P2P and NTP are open in every mode for the node and
the system, never for the container: in production the container may send bundles to the builder and nothing else.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from dataclasses import dataclass, field

from sealbox.sandbox.host import nft
from sealbox.sandbox.host.netns import socket_in_netns

OTHER, BUILDER = "198.51.100.7", "192.0.2.10"  # TEST-NET-2 stands for any host outside; TEST-NET-1 for the builder
M, P, S = "maintenance", "production", "stopped"
ALL, NONE = frozenset({M, P, S}), frozenset[str]()
INPUT_ONLY = 27017

# (proto, address, port) -> the modes in which the container's connection reaches the outside
OUTBOUND: dict[tuple[str, str, int], frozenset[str]] = {
    ("udp", OTHER, 53): frozenset({M}), ("tcp", OTHER, 53): frozenset({M}),  # DNS
    ("tcp", OTHER, 80): frozenset({M}), ("tcp", OTHER, 443): frozenset({M}),  # HTTP(S)
    ("tcp", BUILDER, 443): frozenset({M}),  # HTTPS goes anywhere, the builder too, in maintenance only
    ("tcp", OTHER, 30303): frozenset({M}), ("udp", OTHER, 30303): frozenset({M}),  # execution P2P
    ("tcp", BUILDER, 8645): ALL,  # bundle submission, to the builder only
    ("tcp", OTHER, 8645): NONE,
    ("tcp", BUILDER, 8646): frozenset({P}),  # the state-diff stream
    ("tcp", BUILDER, 8647): NONE,
    ("tcp", OTHER, 9000): NONE, ("udp", OTHER, 9000): NONE, ("udp", OTHER, 123): NONE,  # the node's and the system's
    ("tcp", OTHER, 22): NONE, ("tcp", OTHER, 25): NONE, ("tcp", OTHER, 8080): NONE, ("udp", OTHER, 514): NONE,
}
# a second round, alone so that its arrivals cannot be taken for the first's (slirp4netns sends from sockets of its
# own, so the source port does not survive to the host side): the same connections from the input-only port, to
# ones the first round shows open (bundles in every mode, DNS in maintenance), never arrive
FROM_INPUT: list[tuple[str, str, int]] = [("tcp", BUILDER, 8645), ("udp", OTHER, 53)]
Key = tuple[str, str, int]


def command(key: Key, sport: int | None, tag: str) -> bytes:
    proto, addr, port = key
    return f"{proto} {addr} {port} {sport or '-'} {tag}\n".encode()


def label(key: Key) -> str:
    return f"{key[0]} {key[1]}:{key[2]}"


def log_line(key: Key, sport: int | None, tag: str) -> str:
    """The start of the line the workload logs once it tried the probe."""
    return f"probe {key[0]} {key[1]} {key[2]} {sport or '-'} {tag} rc="


def expected_table(mode: str) -> dict[str, str]:
    return {label(k): ("arrived" if mode in modes else "silent") for k, modes in OUTBOUND.items()}


def differences(seen: dict[str, str], mode: str) -> dict[str, tuple[str, str]]:
    """Probe -> (seen, expected) wherever the two differ."""
    want = expected_table(mode)
    return {k: (seen.get(k, "?"), want[k]) for k in want if seen.get(k) != want[k]}


@dataclass
class Listeners:
    """One listener per probed address and port on the host side of the link, and the nat table leading there."""

    netns: str
    host_ip: str
    first_port: int = 41000
    ports: dict[int, Key] = field(default_factory=dict)
    arrived: set[Key] = field(default_factory=set)
    _socks: list[tuple[socket.socket, Key]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i, key in enumerate(OUTBOUND):
            lport = self.first_port + i
            kind = socket.SOCK_STREAM if key[0] == "tcp" else socket.SOCK_DGRAM
            s = socket_in_netns(self.netns, socket.AF_INET, kind)
            s.bind((self.host_ip, lport))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            s.setblocking(False)
            self.ports[lport] = key
            self._socks.append((s, key))
        nft.apply(self._nat_doc(), self.netns)
        threading.Thread(target=self._serve, daemon=True).start()

    def _nat_doc(self) -> dict[str, object]:
        table = {"family": "ip", "table": "bobtest"}
        rules: list[dict[str, object]] = [
            {"add": {"table": {"family": "ip", "name": "bobtest"}}},
            {"add": {"chain": {**table, "name": "pre", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        ]
        for lport, (proto, addr, port) in self.ports.items():
            expr = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": addr}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": port}},
                    {"dnat": {"addr": self.host_ip, "port": lport}}]
            rules.append({"add": {"rule": {**table, "chain": "pre", "expr": expr}}})
        return {"nftables": rules}

    def _serve(self) -> None:
        socks = dict(self._socks)
        deadline = time.monotonic() + 3600  # bounded: the module's whole run is far shorter
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                ready, _, _ = select.select(list(socks), [], [], 0.5)
            except (OSError, ValueError):  # close() closed a socket under select: the end
                return
            for s in ready:
                key = socks[s]
                try:
                    if key[0] == "tcp":
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        s.recvfrom(512)
                except OSError:
                    continue
                with self._lock:
                    self.arrived.add(key)

    def take(self) -> set[Key]:
        with self._lock:
            got, self.arrived = self.arrived, set()
        return got

    def close(self) -> None:
        self._stop.set()
        time.sleep(0.6)  # one select timeout: the thread sees the stop before its sockets go
        for s, _ in self._socks:
            s.close()


def _send(netns: str, guest_ip: str, commands: list[bytes]) -> None:
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for c in commands:  # a socket made in the namespace sends from it, whichever thread calls
            s.sendto(c, (guest_ip, INPUT_ONLY))
            time.sleep(0.05)


def _round(netns: str, guest_ip: str, listeners: Listeners, keys: list[Key], sport: int | None, tag: str,
           wait: float) -> dict[str, str]:
    listeners.take()
    _send(netns, guest_ip, [command(k, sport, tag) for k in keys])
    time.sleep(wait)  # each probe gives up after 6 s in the container; TCG is slow to start them all
    got = listeners.take()
    return {label(k): ("arrived" if k in got else "silent") for k in keys}


def probe_round(netns: str, guest_ip: str, listeners: Listeners, tag: str, wait: float = 20.0) -> dict[str, str]:
    """Every probe once, tagged `tag`: what arrived."""
    return _round(netns, guest_ip, listeners, list(OUTBOUND), None, tag, wait)


def from_input_round(netns: str, guest_ip: str, listeners: Listeners, tag: str, wait: float = 15.0) -> dict[str, str]:
    """The FROM_INPUT probes from the input-only port, alone, tagged `tag`: what arrived."""
    return _round(netns, guest_ip, listeners, FROM_INPUT, INPUT_ONLY, tag, wait)


def expected_log_lines(tags: dict[str, str]) -> list[str]:
    """For rounds {mode: tag} of both kinds (tag for the main round, tag + "-q" for the input-only one)."""
    lines = []
    for tag in tags.values():
        lines += [log_line(k, None, tag) for k in OUTBOUND]
        lines += [log_line(k, INPUT_ONLY, tag + "-q") for k in FROM_INPUT]
    return lines
