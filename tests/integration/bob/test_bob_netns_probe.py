"""The bob guest's mode rule sets, loaded for real into a namespace this test makes, probed with real sockets.

Two namespaces joined by a veth pair and nothing else (no route out of them): "guest" loads a mode's rule set
(builder/bob_firewall.py) with `nft -j -f`, "peer" stands for everything outside (the builder at .2, another
host at .3). The tables below are the oracle, written from issue 14's list, not from the code: which ports a
connection from the peer reaches in each mode, and which the guest reaches. TCP: the handshake completes; UDP:
the datagram arrives (and, except on the input-only port, its echo comes back).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bobguest import guest_root, load
from sealbox.builder.bob_firewall import SEARCHER_SUBUIDS, SEARCHER_UID, ruleset
from sealbox.spec.bob import Bob

PROBE = str(Path(__file__).with_name("bobprobe.py"))
GUEST, BUILDER, OTHER = "10.59.254.1", "10.59.254.2", "10.59.254.3"
M, P, S = "maintenance", "production", "stopped"
ALL, NONE = {M, P, S}, set()
bm = load("bob_mode")
BOB = Bob(enable=True, builder_bundle=[f"{BUILDER}:8645"], builder_state_diff=[f"{BUILDER}:8646"], workload="w.tar")

# connections from outside into the guest: (proto, guest port) -> modes in which they get through
INBOUND: dict[tuple[str, int], set[str]] = {
    ("tcp", 22): ALL,  # control plane SSH
    ("tcp", 8745): ALL,  # attestation
    ("udp", 27017): ALL,  # input-only channel (arrives; its echo must not come back: see below)
    ("tcp", 9000): ALL, ("udp", 9000): ALL,  # consensus P2P
    ("tcp", 10022): {M},  # data plane SSH
    ("tcp", 8080): {M},  # key registration
    ("tcp", 30303): {M}, ("udp", 30303): {M},  # execution P2P
    ("tcp", 2222): NONE, ("tcp", 80): NONE, ("udp", 53): NONE, ("tcp", 8645): NONE, ("udp", 123): NONE,
}
# connections the guest opens: (proto, remote address, remote port) -> modes in which they get through
OUTBOUND: dict[tuple[str, str, int], set[str]] = {
    ("tcp", BUILDER, 8645): ALL,  # bundle submission, to the builder only
    ("tcp", OTHER, 8645): NONE,
    ("tcp", BUILDER, 8646): {P},  # state-diff stream, production only, from the builder only
    ("tcp", OTHER, 8646): NONE,
    ("udp", OTHER, 123): ALL,  # NTP
    ("tcp", OTHER, 9000): ALL, ("udp", OTHER, 9000): ALL,  # consensus P2P
    ("udp", OTHER, 53): {M}, ("tcp", OTHER, 53): {M},  # DNS
    ("tcp", OTHER, 80): {M}, ("tcp", OTHER, 443): {M},  # HTTP(S)
    ("tcp", OTHER, 30303): {M}, ("udp", OTHER, 30303): {M},  # execution P2P
    ("tcp", OTHER, 22): NONE, ("tcp", OTHER, 25): NONE, ("udp", OTHER, 27017): NONE, ("tcp", OTHER, 8080): NONE,
}
# sent from the input-only port itself, to ports open in every mode: never leaves
FROM_QUIET = [("udp", OTHER, 123), ("tcp", BUILDER, 8645)]
# the same connections opened by the searcher's processes (its uid: rootless podman's slirp4netns sends the
# container's traffic from the guest's own sockets as searcher; or one of its subordinate ids): consensus P2P and NTP
# are the node's and the system's, never the searcher's, or production would let the container send anywhere
SEARCHER_NOT = {("udp", OTHER, 123), ("tcp", OTHER, 9000), ("udp", OTHER, 9000)}
OUTBOUND_SEARCHER = {key: (NONE if key in SEARCHER_NOT else modes) for key, modes in OUTBOUND.items()}

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("ip"), reason="needs root, nft and ip")]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def netns() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    guest, peer = f"sbtbob{tag}g", f"sbtbob{tag}p"
    made = []
    try:
        for ns in (guest, peer):
            _ip("netns", "add", ns)
            made.append(ns)
        # the veth is made inside the guest namespace: it never exists in the root namespace
        _ip("-n", guest, "link", "add", "vg", "type", "veth", "peer", "name", "vp", "netns", peer)
        _ip("-n", guest, "addr", "add", f"{GUEST}/24", "dev", "vg")
        _ip("-n", peer, "addr", "add", f"{BUILDER}/24", "dev", "vp")
        _ip("-n", peer, "addr", "add", f"{OTHER}/24", "dev", "vp")
        for ns, dev in ((guest, "vg"), (peer, "vp")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield guest, peer
    finally:
        for ns in made:  # deleting the namespace removes its end of the veth, and with it the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


class Server:
    def __init__(self, ns: str, specs: list[str]) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-I", PROBE, "serve", *specs],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def arrivals(self) -> set[tuple[str, int, int]]:
        """(proto, port, the sender's source port) of everything that arrived."""
        out, _ = self.proc.communicate(timeout=30)  # closes its stdin: the server stops
        return {(p, int(port), int(src)) for p, port, src in (line.split() for line in out.splitlines())}


def _probe(ns: str, targets: list[str], uid: int | None = None) -> dict[str, str]:
    if uid is not None:  # as another uid: the system's python3 (the venv's may live under /root), the script on stdin
        argv = ["ip", "netns", "exec", ns, "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "/usr/bin/python3", "-I", "-", "probe", *targets]
        with open(PROBE, encoding="utf-8") as f:
            out = subprocess.run(argv, input=f.read(), capture_output=True, text=True, check=True, timeout=60).stdout
        return dict(line.rsplit(" ", 1) for line in out.splitlines())  # type: ignore[misc]
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-I", PROBE, "probe", *targets],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return dict(line.rsplit(" ", 1) for line in out.splitlines())  # type: ignore[misc]


def _load(ns: str, mode: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-j", "-f", "-"], input=json.dumps(ruleset(mode, BOB)).encode(),
                   check=True, capture_output=True, timeout=30)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [M, P, S])
def test_inbound_ports_per_mode(netns: tuple[str, str], mode: str) -> None:
    guest, peer = netns
    _load(guest, mode)
    server = Server(guest, sorted({f"{GUEST}:{proto}:{port}" for proto, port in INBOUND}))
    try:
        seen = _probe(peer, [f"{GUEST}:{proto}:{port}" for proto, port in INBOUND])
    finally:
        arrived = server.arrivals()
    got = {(proto, port) for proto, port, _ in arrived}
    want = {key for key, modes in INBOUND.items() if mode in modes}
    assert got == want, f"{mode}: reached {sorted(got)}, the table says {sorted(want)}"
    # an answer came back for every open port but the input-only one: its echo never leaves the guest
    answered = {(proto, port) for proto, port in INBOUND if seen[f"{GUEST}:{proto}:{port}"] == "open"}
    assert answered == want - {("udp", 27017)}


@pytest.mark.parametrize("uid", [SEARCHER_UID, SEARCHER_SUBUIDS[0], SEARCHER_SUBUIDS[-1]])
@pytest.mark.parametrize("mode", [M, P, S])
def test_the_searchers_processes_get_only_the_searchers_openings(netns: tuple[str, str], mode: str, uid: int) -> None:
    guest, peer = netns
    _load(guest, mode)
    server = Server(peer, sorted({f"{host}:{proto}:{port}" for proto, host, port in OUTBOUND}))
    try:
        seen = _probe(guest, [f"{host}:{proto}:{port}" for proto, host, port in OUTBOUND], uid=uid)
    finally:
        server.arrivals()
    got = {key for key in OUTBOUND if seen[f"{key[1]}:{key[0]}:{key[2]}"] == "open"}
    want = {key for key, modes in OUTBOUND_SEARCHER.items() if mode in modes}
    assert got == want, f"{mode}, uid {uid}: reached {sorted(got)}, the table says {sorted(want)}"


@pytest.mark.parametrize("mode", [M, P, S])
def test_outbound_ports_per_mode(netns: tuple[str, str], mode: str) -> None:
    guest, peer = netns
    _load(guest, mode)
    server = Server(peer, sorted({f"{host}:{proto}:{port}" for proto, host, port in [*OUTBOUND, *FROM_QUIET]}))
    try:
        seen = _probe(guest, [f"{host}:{proto}:{port}" for proto, host, port in OUTBOUND]
                      + [f"{BOB.input_only_udp_port}@{host}:{proto}:{port}" for proto, host, port in FROM_QUIET])
    finally:
        arrived = server.arrivals()
    got = {key for key in OUTBOUND if seen[f"{key[1]}:{key[0]}:{key[2]}"] == "open"}
    want = {key for key, modes in OUTBOUND.items() if mode in modes}
    assert got == want, f"{mode}: reached {sorted(got)}, the table says {sorted(want)}"
    quiet = [k for k in FROM_QUIET if seen[f"{BOB.input_only_udp_port}@{k[1]}:{k[0]}:{k[2]}"] != "closed"]
    assert not quiet, f"{mode}: sent from the input-only port and answered: {quiet}"
    assert not [a for a in arrived if a[2] == BOB.input_only_udp_port], "something sent from the input-only port arrived"


@pytest.mark.parametrize("mode", [M, P, S])
def test_the_input_only_port_does_not_even_say_that_nothing_listens(netns: tuple[str, str], mode: str) -> None:
    """No ICMP port unreachable leaves for a datagram to the input-only port while nothing listens on it."""
    guest, peer = netns
    target = f"{GUEST}:udp:{BOB.input_only_udp_port}"
    subprocess.run(["ip", "netns", "exec", guest, "nft", "flush", "ruleset"], check=True, timeout=30)
    assert _probe(peer, [target])[target] == "refused"  # the probe does see the kernel's answer without the rule set
    _load(guest, mode)
    assert _probe(peer, [target])[target] == "closed"


class Holder:
    """A connection from the peer to the guest's echo server, kept open across mode switches."""

    def __init__(self, peer: str, target: str, wait: float | None = None) -> None:
        extra = [str(wait)] if wait is not None else []
        self.proc = subprocess.Popen(["ip", "netns", "exec", peer, sys.executable, "-I", PROBE, "hold", target, *extra],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "connected"

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def answered(self, word: str) -> bool:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip() == f"echo {word}"

    def echoes(self, word: str) -> bool:
        self.send(word)
        return self.answered(word)

    def close(self) -> None:
        self.proc.communicate(timeout=30)


def test_a_mode_switch_cuts_the_old_modes_connections(netns: tuple[str, str], tmp_path: Path) -> None:
    """bob-mode (the guest script) with the real nft and conntrack in the guest namespace: a data-plane connection
    made in maintenance is dead after the switch to production; the same switch without the flush leaves it alive."""
    guest, peer = netns
    root = guest_root(tmp_path, dwell=0, bob=BOB)
    calls: list[str] = []

    def in_guest(argv: list[str], flush: bool = True) -> int:
        calls.append(Path(argv[0]).name)
        if argv[0] == "conntrack" and not flush:
            return 0
        if calls[-1] == "bob-netguard":  # a stand-in: no container here (test_bob_container_rules.py checks the verifier)
            return 0
        return subprocess.run(["ip", "netns", "exec", guest, *argv], capture_output=True, timeout=30).returncode

    modes = bm.Modes(root, run=in_guest)
    assert modes.boot() == "mode maintenance (boot)"
    data_port = f"{GUEST}:{BOB.data_ssh_port}"
    server = subprocess.Popen(["ip", "netns", "exec", guest, sys.executable, "-I", PROBE, "echo", data_port],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        # without the flush (the stand-in runner skips conntrack): the connection outlives maintenance
        held = Holder(peer, data_port)
        assert held.echoes("before")
        modes.run = lambda argv: in_guest(argv, flush=False)
        assert modes.toggle().startswith("mode production")
        assert held.echoes("kept"), "the control case: established connections pass the production rules unless flushed"
        held.close()
        modes.run = in_guest
        assert [modes.toggle().split()[1] for _ in range(2)] == ["stopped", "maintenance"]
        # with the flush, as bob-mode does it: the same connection is cut
        held = Holder(peer, data_port)
        assert held.echoes("before")
        calls.clear()
        assert modes.toggle().startswith("mode production")
        assert calls == ["bob-netguard", "nft", "conntrack", "conntrack"]
        assert not held.echoes("after"), "a maintenance connection survived the switch to production"
        held.close()
    finally:
        server.communicate(timeout=30)
    listed = subprocess.run(["ip", "netns", "exec", guest, "nft", "list", "ruleset"], capture_output=True, text=True,
                            timeout=30, check=True).stdout
    assert "state-diff stream out" in listed and "data plane SSH" not in listed  # production's rules, and only them


def test_the_control_plane_answers_across_a_switch_even_when_the_guest_speaks_first(netns: tuple[str, str],
                                                                                   tmp_path: Path) -> None:
    """The searcher's `toggle` runs over the control SSH connection, and the switch flushes conntrack: the answer
    is then the first packet of that connection the guest's firewall sees, from the control port. It must get out
    (seen in the booted guest: the answer to a toggle into production never came)."""
    guest, peer = netns
    modes = bm.Modes(guest_root(tmp_path, dwell=0, bob=BOB), run=lambda argv: 0 if Path(argv[0]).name == "bob-netguard" else
                     subprocess.run(["ip", "netns", "exec", guest, *argv], capture_output=True, timeout=30).returncode)
    assert modes.boot() == "mode maintenance (boot)"
    control = f"{GUEST}:{BOB.control_ssh_port}"
    server = subprocess.Popen(["ip", "netns", "exec", guest, sys.executable, "-I", PROBE, "echo", control, "4"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        held = Holder(peer, control, wait=20)
        for want in ("production", "stopped", "maintenance"):
            held.send(want)  # the guest answers 4 s later, after this switch and its flush
            assert modes.toggle().startswith(f"mode {want}")
            assert held.answered(want), f"the control plane's answer was lost at the switch to {want}"
        held.close()
    finally:
        server.communicate(timeout=30)
