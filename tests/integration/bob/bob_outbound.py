"""Outbound probes of a booted bob guest, seen from the host side of its link (test helper).

The guest has no root shell, so the probes start in the searcher's container: its workload reads commands from
the input-only UDP port ("tcp ADDR PORT", "udp ADDR PORT [SPORT]") and tries each connection in the background.
The "outside" addresses are documentation ranges that never leave this machine: a test-only nat table in the
sandbox's own namespace (made by sealbox, removed with it) rewrites each probed ADDR:PORT to a listener of its own
on the host side of the link, where the arrivals are recorded. A probe that arrives got through every wall on the
way (the container's rules, the guest's mode rule set, sealbox's host-side table); one that does not was dropped.

The oracle, written from issue 14's list (not from builder/bob_firewall.py): which outbound connections reach
the outside in which mode.
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
# the probes from the input-only port go to a host of their own: rootless podman's slirp4netns sends the container's
# traffic from its own sockets (other source ports), so the host side tells them apart by where they go
FROM_INPUT = "198.51.100.27"
M, P, S = "maintenance", "production", "stopped"
ALL = frozenset({M, P, S})
INPUT_ONLY = 27017

# (proto, address, port, source port or 0) -> the modes in which it reaches the outside
OUTBOUND: dict[tuple[str, str, int, int], frozenset[str]] = {
    ("udp", OTHER, 53, 0): frozenset({M}), ("tcp", OTHER, 53, 0): frozenset({M}),  # DNS
    ("tcp", OTHER, 80, 0): frozenset({M}), ("tcp", OTHER, 443, 0): frozenset({M}),  # HTTP(S)
    ("tcp", BUILDER, 443, 0): frozenset({M}),  # HTTPS goes anywhere, the builder too, in maintenance only
    ("tcp", OTHER, 30303, 0): frozenset({M}), ("udp", OTHER, 30303, 0): frozenset({M}),  # execution P2P
    ("tcp", OTHER, 9000, 0): ALL, ("udp", OTHER, 9000, 0): ALL,  # consensus P2P
    ("udp", OTHER, 123, 0): ALL,  # NTP
    ("tcp", BUILDER, 8645, 0): ALL,  # bundle submission, to the builder only
    ("tcp", OTHER, 8645, 0): frozenset(),
    ("tcp", BUILDER, 8646, 0): frozenset({P}),  # the state-diff stream
    ("tcp", BUILDER, 8647, 0): frozenset(),
    ("tcp", OTHER, 22, 0): frozenset(), ("tcp", OTHER, 25, 0): frozenset(), ("tcp", OTHER, 8080, 0): frozenset(),
    ("udp", OTHER, 514, 0): frozenset(),
    # nothing with the input-only port as its source, in any mode, though consensus P2P goes anywhere in every mode
    ("tcp", FROM_INPUT, 9000, INPUT_ONLY): frozenset(), ("udp", FROM_INPUT, 9000, INPUT_ONLY): frozenset(),
}
Probe = tuple[str, str, int, int]


def expected(mode: str) -> dict[Probe, str]:
    return {k: ("arrived" if mode in modes else "silent") for k, modes in OUTBOUND.items()}


def command(probe: Probe) -> bytes:
    proto, addr, port, sport = probe
    return f"{proto} {addr} {port}{f' {sport}' if sport else ''}\n".encode()


@dataclass
class Listeners:
    """One listener per probe on the host side of the link, and the nat table that sends each probe to its own."""

    netns: str
    host_ip: str
    first_port: int = 41000
    ports: dict[int, Probe] = field(default_factory=dict)
    arrived: set[Probe] = field(default_factory=set)
    _socks: list[tuple[socket.socket, Probe]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i, probe in enumerate(OUTBOUND):
            lport = self.first_port + i
            kind = socket.SOCK_STREAM if probe[0] == "tcp" else socket.SOCK_DGRAM
            s = socket_in_netns(self.netns, socket.AF_INET, kind)
            s.bind((self.host_ip, lport))
            if kind == socket.SOCK_STREAM:
                s.listen(16)
            s.setblocking(False)
            self.ports[lport] = probe
            self._socks.append((s, probe))
        nft.apply(self._nat_doc(), self.netns)
        threading.Thread(target=self._serve, daemon=True).start()

    def _nat_doc(self) -> dict[str, object]:
        table = {"family": "ip", "table": "bobtest"}
        rules: list[dict[str, object]] = [
            {"add": {"table": {"family": "ip", "name": "bobtest"}}},
            {"add": {"chain": {**table, "name": "pre", "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}},
        ]
        for lport, (proto, addr, port, _sport) in self.ports.items():
            expr = [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": addr}},
                    {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "dport"}}, "right": port}},
                    {"dnat": {"addr": self.host_ip, "port": lport}}]
            rules.append({"add": {"rule": {**table, "chain": "pre", "expr": expr}}})
        return {"nftables": rules}

    def _serve(self) -> None:
        socks = dict(self._socks)
        deadline = time.monotonic() + 3600  # bounded: the module's whole run is far shorter
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select(list(socks), [], [], 0.5)
            for s in ready:
                probe = socks[s]
                try:
                    if probe[0] == "tcp":
                        conn, _ = s.accept()
                        conn.close()
                    else:
                        s.recvfrom(512)
                except OSError:
                    continue
                with self._lock:
                    self.arrived.add(probe)

    def take(self) -> set[Probe]:
        with self._lock:
            got, self.arrived = self.arrived, set()
        return got

    def close(self) -> None:
        self._stop.set()
        for s, _ in self._socks:
            s.close()


def probe_all(netns: str, guest_ip: str, listeners: Listeners, wait: float = 20.0) -> dict[str, str]:
    """Send every probe to the container, wait for the arrivals; a table "proto addr:port[ sport]" -> outcome."""
    listeners.take()
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        for probe in OUTBOUND:  # a socket made in the namespace sends from it, whichever thread calls
            s.sendto(command(probe), (guest_ip, INPUT_ONLY))
            time.sleep(0.05)
    time.sleep(wait)  # each probe gives up after 6 s in the container; TCG is slow to start them all
    got = listeners.take()
    return {label(p): ("arrived" if p in got else "silent") for p in OUTBOUND}


def label(probe: Probe) -> str:
    proto, addr, port, sport = probe
    return f"{proto} {addr}:{port}" + (f" from {sport}" if sport else "")


def expected_table(mode: str) -> dict[str, str]:
    return {label(p): outcome for p, outcome in expected(mode).items()}


def differences(seen: dict[str, str], mode: str) -> dict[str, tuple[str, str]]:
    """Probe -> (seen, expected) wherever the two differ."""
    want = expected_table(mode)
    return {k: (seen.get(k, "?"), want[k]) for k in want if seen.get(k) != want[k]}
