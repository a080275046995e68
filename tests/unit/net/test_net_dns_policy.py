"""DNS: the resolver decision (host/dns.py) and the forwarder's handling of hostile input (host/dnsfwd.py),
on loopback with a STAND-IN upstream (the real path through namespaces: tests/integration/net/test_net_dns.py)."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.sandbox.host import dns, dnsfwd, egress
from sealbox.sandbox.model import EgressRule

HOST_IP = ipaddress.IPv4Address("10.213.0.1")
BLOCKED = egress.METADATA + tuple(egress.host_blocked([ipaddress.IPv4Interface("192.168.7.10/24")], ipaddress.IPv4Network("10.213.0.0/16")))


def query(name: str = "a.test", qid: int = 0x1234, flags: int = 0x0100, counts: tuple[int, int, int, int] = (1, 0, 0, 0)) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    return struct.pack("!HH4H", qid, flags, *counts) + q


def test_host_resolvers_parsed_from_resolv_conf(tmp_path: Path) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("# c\nsearch x\nnameserver 127.0.0.53\nnameserver bogus\nnameserver fe80::1%eth0\nnameserver 2001:db8::1\n"
                  "nameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n")
    assert [str(a) for a in dns.host_resolvers(rc)] == ["127.0.0.53", "2001:db8::1", "10.0.0.2"]  # at most 3, no dups
    assert dns.host_resolvers(tmp_path / "missing") == []


def test_resolv_conf_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEALBOX_RESOLV_CONF", raising=False)
    assert dns.resolv_conf_path() == Path("/etc/resolv.conf")
    monkeypatch.setenv("SEALBOX_RESOLV_CONF", str(tmp_path / "r"))
    assert dns.resolv_conf_path() == tmp_path / "r"


def test_plan_isolated_nat_and_allow_list(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 168.63.129.16\nnameserver 2001:db8::1\n")
    assert dns.plan(nat=False, dns=(), egress=(), host_ip=HOST_IP, resolv_conf=rc) == ((), [])
    ann, ups = dns.plan(nat=True, dns=(), egress=(), host_ip=HOST_IP, resolv_conf=rc)
    assert ann == (HOST_IP,) and [str(u) for u in ups] == ["168.63.129.16", "2001:db8::1"]  # blocked for guests, fine for the relay
    ann, ups = dns.plan(nat=True, dns=(), egress=(EgressRule.parse("168.63.129.16/32:53"),), host_ip=HOST_IP, resolv_conf=rc)
    assert ann == (HOST_IP,) and [str(u) for u in ups] == ["168.63.129.16"]
    ann, ups = dns.plan(nat=True, dns=(), egress=(EgressRule.parse("0.0.0.0/0:443"),), host_ip=HOST_IP, resolv_conf=rc)
    assert (ann, ups) == ((), []) and "no DNS resolver" in caplog.text and "--allow-egress RESOLVER/32:53" in caplog.text


def test_dns_flag_checks(tmp_path: Path) -> None:
    ip = ipaddress.IPv4Address
    dns.check(nat=True, dns=(ip("198.51.100.53"),), egress=(), blocked=BLOCKED)
    dns.check(nat=True, dns=(ip("192.168.7.1"),), egress=(EgressRule.parse("192.168.7.1/32:53"),), blocked=BLOCKED)
    bad = [
        ({"nat": False, "dns": (ip("198.51.100.53"),), "egress": ()}, "only applies to --net nat"),
        ({"nat": True, "dns": (ip("169.254.169.253"),), "egress": ()}, "blocked for guests"),
        ({"nat": True, "dns": (ip("192.168.7.1"),), "egress": ()}, "host network"),
        ({"nat": True, "dns": (ip("198.51.100.53"),), "egress": (EgressRule.parse("198.51.100.53/32:443"),)}, "does not allow"),
    ]
    for kw, msg in bad:
        with pytest.raises(UsageError, match=msg):
            dns.check(blocked=BLOCKED, **kw)  # type: ignore[arg-type]
    assert dns.plan(nat=True, dns=(ip("198.51.100.53"),), egress=(), host_ip=HOST_IP) == ((ip("198.51.100.53"),), [])


def test_query_shape() -> None:
    assert dnsfwd.is_query(query(), 512)
    assert not dnsfwd.is_query(query(flags=0x8180), 512)  # a response
    assert not dnsfwd.is_query(query(flags=0x2100), 512)  # opcode 4 (NOTIFY)
    assert not dnsfwd.is_query(query(counts=(2, 0, 0, 0)), 512)
    assert not dnsfwd.is_query(query(counts=(1, 1, 0, 0)), 512)
    assert not dnsfwd.is_query(query(counts=(1, 0, 0, 2)), 512)
    assert dnsfwd.is_query(query(counts=(1, 0, 0, 1)), 512)  # EDNS OPT
    assert not dnsfwd.is_query(b"\x12\x34", 512) and not dnsfwd.is_query(query() + b"x" * 600, 512)
    assert dnsfwd.is_reply_to(b"\x12\x34\x81\x80" + b"\0" * 8, query()) and not dnsfwd.is_reply_to(b"\x12\x35\x81\x80" + b"\0" * 8, query())


class Upstream:
    """STAND-IN upstream on 127.0.0.3: answers each query with its id and QR set, after `junk` first."""

    def __init__(self, junk: bytes = b"") -> None:
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.3", 0))
        self.port = self.udp.getsockname()[1]
        self.udp.settimeout(0.2)
        self.junk = junk
        self.seen: list[bytes] = []
        self.stop = threading.Event()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while not self.stop.is_set():
            try:
                q, peer = self.udp.recvfrom(4096)
            except OSError:
                continue
            self.seen.append(q)
            if self.junk:
                self.udp.sendto(self.junk, peer)
            self.udp.sendto(q[:2] + b"\x81\x80" + q[4:], peer)


@pytest.fixture
def fwd() -> Iterator[tuple[dnsfwd.Forwarder, Upstream, socket.socket]]:
    up = Upstream(junk=b"\x00\x00\x81\x80" + b"\0" * 8)  # a wrong-id reply arrives first: must be skipped
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.2", 0))
    tcp = socket.socket()
    tcp.bind(("127.0.0.2", 0))
    tcp.listen(4)
    f = dnsfwd.Forwarder(udp, tcp, "127.0.0.1", ["127.0.0.3"], port=up.port)
    threading.Thread(target=f.serve, daemon=True).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(1.0)
    client.connect(udp.getsockname())
    yield f, up, client
    f.stop.set()
    up.stop.set()
    for s in (udp, tcp, client, up.udp):
        s.close()


def test_forwarder_relays_queries_and_drops_everything_else(fwd: tuple[dnsfwd.Forwarder, Upstream, socket.socket]) -> None:
    f, up, client = fwd
    client.send(query(qid=0x4242))
    reply = client.recv(4096)
    assert reply[:2] == b"\x42\x42" and reply[2] & 0x80  # the matching reply, not the junk that came first
    client.settimeout(0.3)  # below: nothing may come back
    for bad in (query(flags=0x8180), query(counts=(3, 0, 0, 0)), b"\xff" * 5, b"x" * 5000):
        client.send(bad)
        with pytest.raises(TimeoutError):
            client.recv(4096)
    assert len(up.seen) == 1  # nothing malformed reached the upstream
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # not the guest's address
    other.bind(("127.0.0.9", 0))
    other.settimeout(0.3)
    other.sendto(query(), f.udp.getsockname())
    with pytest.raises(TimeoutError):
        other.recv(4096)
    other.close()
    assert len(up.seen) == 1
