"""The container-side drop rules (bob-netguard) with the real nft, nsenter and sockets, in namespaces this test makes.

"container" stands for the searcher's container's network namespace (a process sleeping in it plays the container,
its pid written where podman's --pidfile would put it); "outside" for everything beyond, joined by a veth pair and
nothing else. bob-netguard (the guest script, in-process, with its real runner) loads the rules through the pid's
namespace and reads them back; the oracle is nft's own listing and what real UDP/TCP sockets get through.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bobguest import guest_root, load

ng = load("bob_netguard")
PROBE = str(Path(__file__).with_name("bobprobe.py"))
CONTAINER, OUTSIDE = "10.63.254.1", "10.63.254.2"
PORT = 27017

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not all(shutil.which(t) for t in ("nft", "ip", "nsenter")),
                                 reason="needs root, nft, ip and nsenter")]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


def _nft(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *argv], check=True, capture_output=True, text=True,
                          timeout=30).stdout


@pytest.fixture(scope="module")
def nets() -> Iterator[tuple[str, str]]:
    tag = secrets.token_hex(3)
    ctr, out = f"sbtbobw{tag}c", f"sbtbobw{tag}o"
    made = []
    try:
        for ns in (ctr, out):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", ctr, "link", "add", "vc", "type", "veth", "peer", "name", "vo", "netns", out)
        _ip("-n", ctr, "addr", "add", f"{CONTAINER}/24", "dev", "vc")
        _ip("-n", out, "addr", "add", f"{OUTSIDE}/24", "dev", "vo")
        for ns, dev in ((ctr, "vc"), (out, "vo")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield ctr, out
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def guard(nets: tuple[str, str], tmp_path: Path) -> Iterator[object]:
    """A guest root whose pidfile names a process in the container namespace; its /proc is the real one."""
    ctr, _ = nets
    _nft(ctr, "flush", "ruleset")
    root = guest_root(tmp_path / "root")
    (root / "proc").rename(root / "proc.fake")
    (root / "proc").symlink_to("/proc")
    sleeper = subprocess.Popen(["ip", "netns", "exec", ctr, "sleep", "120"])
    try:
        (root / "run/sealbox-bob-work").mkdir(parents=True)
        (root / ng.PIDFILE).write_text(f"{sleeper.pid}\n")
        for _ in range(100):  # `ip netns exec` execs sleep in the namespace: wait until the pid is in it
            if os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
                break
            subprocess.run(["sleep", "0.05"], check=True)
        yield ng.Guard(root, user=pwd.getpwuid(os.getuid()).pw_name)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)


def _udp_echo_answered(nets: tuple[str, str]) -> tuple[bool, bool]:
    """A datagram from outside to the container's input-only port: (it arrived, its echo came back)."""
    ctr, out = nets
    server = subprocess.Popen(["ip", "netns", "exec", ctr, sys.executable, "-I", PROBE, "serve", f"{CONTAINER}:udp:{PORT}"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        target = f"{CONTAINER}:udp:{PORT}"
        seen = subprocess.run(["ip", "netns", "exec", out, sys.executable, "-I", PROBE, "probe", target],
                              capture_output=True, text=True, check=True, timeout=60).stdout
    finally:
        arrived, _ = server.communicate(timeout=30)
    return bool(arrived.strip()), seen.split()[-1] == "open"


def _tcp_from_port(nets: tuple[str, str]) -> str:
    """A TCP connection the container opens from the input-only port to a listener outside: open or closed."""
    ctr, out = nets
    server = subprocess.Popen(["ip", "netns", "exec", out, sys.executable, "-I", PROBE, "serve", f"{OUTSIDE}:tcp:8645"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        seen = subprocess.run(["ip", "netns", "exec", ctr, sys.executable, "-I", PROBE, "probe",
                               f"{PORT}@{OUTSIDE}:tcp:8645"], capture_output=True, text=True, check=True, timeout=60).stdout
    finally:
        server.communicate(timeout=30)
    return seen.split()[-1]


def test_applied_rules_stop_replies_and_the_verifier_sees_them(nets: tuple[str, str], guard: object) -> None:
    g: ng.Guard = guard  # type: ignore[name-defined]
    # the control case, no rules: the channel answers, and TCP leaves from its port
    assert _udp_echo_answered(nets) == (True, True)
    assert _tcp_from_port(nets) == "open"
    with pytest.raises(ng.Failed, match="lacks: no tcp/udp source-port 27017 drop in the output hook"):
        g.verify()
    assert "loaded and verified" in g.apply()
    listed = json.loads(_nft(nets[0], "-j", "list", "ruleset"))  # what nft itself says is there
    assert {c["chain"]["hook"] for c in listed["nftables"] if "chain" in c} == {"output", "forward"}
    assert "present" in g.verify()
    # input arrives, nothing with its source port leaves
    assert _udp_echo_answered(nets) == (True, False)
    assert _tcp_from_port(nets) == "closed"
    assert g.apply()  # applying again replaces, never duplicates
    assert _nft(nets[0], "list", "ruleset").count("th sport 27017") == 2


@pytest.mark.parametrize("hook", ["output", "forward"])
def test_a_missing_rule_is_detected(nets: tuple[str, str], guard: object, hook: str) -> None:
    g: ng.Guard = guard  # type: ignore[name-defined]
    g.apply()
    listed = json.loads(_nft(nets[0], "-j", "list", "ruleset"))
    [handle] = [r["rule"]["handle"] for r in listed["nftables"] if "rule" in r and r["rule"]["chain"] == hook]
    _nft(nets[0], "delete", "rule", "inet", ng.TABLE, hook, "handle", str(handle))
    with pytest.raises(ng.Failed, match=f"no tcp/udp source-port 27017 drop in the {hook} hook"):
        g.verify()


def test_an_accept_placed_before_the_drop_is_detected(nets: tuple[str, str], guard: object) -> None:
    g: ng.Guard = guard  # type: ignore[name-defined]
    g.apply()
    _nft(nets[0], "insert", "rule", "inet", ng.TABLE, "output", "udp", "sport", str(PORT), "accept")
    with pytest.raises(ng.Failed, match="output hook"):
        g.verify()
    assert _udp_echo_answered(nets) == (True, True)  # and indeed the echo gets out again: the verifier was right


def test_the_guests_own_namespace_is_not_taken_for_the_containers(guard: object) -> None:
    g: ng.Guard = guard  # type: ignore[name-defined]
    (g.root / ng.PIDFILE).write_text(f"{os.getpid()}\n")  # a process in the host's (here: the guest's) namespace
    with pytest.raises(ng.Failed, match="not the searcher's container"):
        g.verify()


def test_a_dormant_table_is_not_taken_for_rules(nets: tuple[str, str], guard: object) -> None:
    """A table switched off (`flags dormant`) keeps its rules in the listing but applies none of them."""
    g: ng.Guard = guard  # type: ignore[name-defined]
    g.apply()
    subprocess.run(["ip", "netns", "exec", nets[0], "nft", "-f", "-"], input=f"table inet {ng.TABLE} {{ flags dormant; }}\n",
                   text=True, check=True, capture_output=True, timeout=30)
    assert _udp_echo_answered(nets) == (True, True)  # the rules are listed, yet the echo gets out
    with pytest.raises(ng.Failed, match="output hook"):
        g.verify()
