"""Stand-ins for the integration tests of sandbox networking. None of this is product code.

- GuestStandIn: stands in for the VM. A "guest" netns holds a TAP `eth0` configured exactly like
  the real guest (MAC, address, default route via the host side); a relay thread copies Ethernet
  frames between that TAP and the sandbox's real `tap0` (opened by name, as a VMM does). So every
  packet goes through the real tap0, the real sandbox netns and the real nft rules, and the guest
  side runs a real TCP/IP stack (the kernel's).
- InternetStandIn: stands in for "outside": a netns attached to the root namespace by a veth, with
  listeners on a few 198.18.0.0/15 (benchmark range) addresses and on 169.254.169.254. The root
  namespace routes a nat sandbox's traffic there with policy rules that match only that sandbox's
  veth (`iif`), so nothing a test sends can leave this machine.
- Listener: TCP server in any namespace that answers each connection with the peer address it saw.
- Peer / attach: a plain namespace joined to the (stand-in) host by a veth, e.g. a LAN or an uplink.
- DnsStandIn: an upstream resolver (UDP and TCP 53) answering `*.sealbox.test` with one A record and
  logging who asked; `tcp-*` names are answered truncated over UDP, so a real client retries over TCP.
  dns_query: a minimal DNS client in any namespace.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import ipaddress
import os
import select
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sealbox.sandbox.host import dns, netnames, nft
from sealbox.sandbox.host.netlink import delete_link, list_links
from sealbox.sandbox.host.netns import list_netns, netns_exists, remove_netns, run_in_netns, socket_in_netns
from sealbox.sandbox.model import GuestNet

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=check)


def open_tap(name: str, flags: int = IFF_TAP | IFF_NO_PI) -> int:
    """TUNSETIFF in the calling thread's netns: attaches to an existing TAP or creates a transient one."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


# --- TCP helpers ---------------------------------------------------------------------------------
class Listener:
    """Accepts connections on (addr, port) inside `netns` (None = root) and replies '<peer ip>\\n'."""

    def __init__(self, netns: str | None, addr: str, port: int) -> None:
        self.peers: list[str] = []
        self.sock = socket_in_netns(netns) if netns else socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + 600  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                conn, peer = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.peers.append(peer[0])
            with conn, contextlib.suppress(OSError):
                conn.sendall(f"{peer[0]}\n".encode())

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.sock.close()


def tcp_probe(netns: str, host: str, port: int, timeout: float = 0.8) -> str:
    """'ok:<peer seen by server>' | 'timeout' | 'refused' | 'unreachable' | 'error:<e>' from inside netns."""
    s = socket_in_netns(netns)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        data = s.recv(100)
        return "ok:" + data.decode().strip()
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        if e.errno in (113, 101):  # EHOSTUNREACH, ENETUNREACH
            return "unreachable"
        return f"error:{e}"
    finally:
        s.close()


def probe_many(probes: dict[str, tuple[str, str, int]], timeout: float = 0.8) -> dict[str, str]:
    """Run many probes concurrently (each bounded by `timeout`) so negative checks stay fast."""
    results: dict[str, str] = {}

    def one(key: str, netns: str, host: str, port: int) -> None:
        results[key] = tcp_probe(netns, host, port, timeout)

    threads = [threading.Thread(target=one, args=(k, *v), daemon=True) for k, v in probes.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 10)
    return results


def bulk_bytes(sender_ns: str, receiver_ns: str, addr: str, port: int, seconds: float) -> int:
    """Bytes a TCP receiver in receiver_ns got within `seconds` while a sender in sender_ns pushed
    as fast as it could."""
    return bulk_samples(sender_ns, receiver_ns, addr, port, seconds)[-1][1]


def bulk_samples(sender_ns: str, receiver_ns: str, addr: str, port: int, seconds: float) -> list[tuple[float, int]]:
    """(seconds since the first byte, bytes received so far) after every read, while a sender in
    sender_ns pushes as fast as it can for `seconds`. Every blocking call has a timeout; both sides
    stop at the deadline."""
    srv = socket_in_netns(receiver_ns)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1)
    srv.settimeout(5)
    stop = threading.Event()

    def send() -> None:
        s = socket_in_netns(sender_ns)
        s.settimeout(0.5)
        chunk = b"x" * 65536
        try:
            s.connect((addr, port))
            while not stop.is_set():
                try:
                    s.send(chunk)
                except TimeoutError:
                    continue
        except OSError:
            pass
        finally:
            s.close()

    t = threading.Thread(target=send, daemon=True)
    t.start()
    got, samples, t0 = 0, [(0.0, 0)], None
    try:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(0.2)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                try:
                    data = conn.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    break
                now = time.monotonic()
                t0 = now if t0 is None else t0
                got += len(data)
                samples.append((now - t0, got))
    finally:
        stop.set()
        t.join(5)
        srv.close()
    return samples


def rate_between(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Bytes/second received between two moments of a bulk_samples series."""
    before = max((b for t, b in samples if t <= start), default=0)
    after = max((b for t, b in samples if t <= end), default=0)
    return (after - before) / (end - start)


# --- plain namespaces joined to the host ------------------------------------------------------------
@dataclass
class Peer:
    """A namespace joined to the host by a veth: host side .1, peer side .2 of `net`."""

    netns: str
    host_if: str
    net: ipaddress.IPv4Network

    @property
    def host_ip(self) -> str:
        return str(self.net.network_address + 1)

    @property
    def ip(self) -> str:
        return str(self.net.network_address + 2)

    def close(self) -> None:
        if netns_exists(self.netns):
            remove_netns(self.netns)  # the veth goes with it


def attach(netns: str, host_if: str, net: str, *, extra: tuple[str, ...] = ()) -> Peer:
    """Create `netns` with eth0 = .2 (plus `extra` /32 addresses), joined to the current namespace's
    `host_if` = .1, default route via the host."""
    p = Peer(netns=netns, host_if=host_if, net=ipaddress.IPv4Network(net))
    sh("ip", "netns", "add", netns)
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", netns)
        sh("ip", "addr", "add", f"{p.host_ip}/{p.net.prefixlen}", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        ip = ("ip", "-n", netns)
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "addr", "add", f"{p.ip}/{p.net.prefixlen}", "dev", "eth0")
        for addr in extra:
            sh(*ip, "addr", "add", f"{addr}/32", "dev", "eth0")
        sh(*ip, "link", "set", "eth0", "up")
        sh(*ip, "route", "add", "default", "via", p.host_ip)
    except BaseException:
        p.close()
        raise
    return p


# --- raw frames (for packets a real guest kernel would never send, e.g. to 127.0.0.1) ------------
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def syn_frame(src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int) -> bytes:
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 12345, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", _csum(s + d + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s, d)
    ip = ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00"
    return eth + ip + tcp


def is_synack(frame: bytes, src: str, sport: int, dport: int) -> bool:
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return False
    ihl = (frame[14] & 0xF) * 4
    tcp = frame[14 + ihl:]
    sp, dp = struct.unpack("!HH", tcp[:4])
    return frame[26:30] == ipaddress.IPv4Address(src).packed and sp == sport and dp == dport and tcp[13] & 0x12 == 0x12


# --- the guest stand-in ----------------------------------------------------------------------------
@dataclass
class GuestStandIn:
    net: GuestNet
    netns: str  # the stand-in's own namespace ("the inside of the VM")
    tap_fd: int = -1  # our end of the sandbox's tap0 (what a VMM holds)
    eth_fd: int = -1  # the stand-in guest kernel's eth0
    captured: collections.deque[bytes] = field(default_factory=lambda: collections.deque(maxlen=2000))
    _stop: threading.Event = field(default_factory=threading.Event)
    _relay: threading.Thread | None = None

    @classmethod
    def start(cls, net: GuestNet, netns: str) -> GuestStandIn:
        sh("ip", "netns", "add", netns)
        g = cls(net=net, netns=netns)
        try:
            run_in_netns(netns, lambda: Path("/proc/sys/net/ipv6/conf/default/disable_ipv6").write_text("1"))
            g.eth_fd = run_in_netns(netns, lambda: open_tap("eth0"))
            g.tap_fd = run_in_netns(net.netns, lambda: open_tap(net.tap))
            ip = ("ip", "-n", netns)
            sh(*ip, "link", "set", "lo", "up")
            sh(*ip, "link", "set", "eth0", "address", net.guest_mac)
            sh(*ip, "addr", "add", f"{net.guest_ip}/{net.prefixlen}", "dev", "eth0")
            sh(*ip, "link", "set", "eth0", "up")
            sh(*ip, "route", "add", "default", "via", str(net.host_ip))
            g._relay = threading.Thread(target=g._run, daemon=True, name=f"relay:{netns}")
            g._relay.start()
        except BaseException:
            g.close()
            raise
        return g

    def _run(self) -> None:
        deadline = time.monotonic() + 900
        poller = select.poll()
        poller.register(self.tap_fd, select.POLLIN)
        poller.register(self.eth_fd, select.POLLIN)
        while not self._stop.is_set() and time.monotonic() < deadline:
            for fd, _ in poller.poll(100):
                try:
                    frame = os.read(fd, 65536)
                    if fd == self.tap_fd:
                        self.captured.append(frame)
                        os.write(self.eth_fd, frame)
                    else:
                        os.write(self.tap_fd, frame)
                except OSError:
                    pass  # e.g. EIO while an interface is down: a dropped frame, like a real NIC

    def inject(self, frame: bytes) -> None:
        """A frame 'sent by the guest' that bypasses the stand-in kernel."""
        os.write(self.tap_fd, frame)

    def tap_mac(self) -> str:
        return sh("ip", "-n", self.net.netns, "-br", "link", "show", self.net.tap).stdout.split()[2]

    def close(self) -> None:
        self._stop.set()
        if self._relay is not None:
            self._relay.join(5)
        for fd in (self.tap_fd, self.eth_fd):
            if fd >= 0:
                os.close(fd)
        self.tap_fd = self.eth_fd = -1
        if netns_exists(self.netns):
            remove_netns(self.netns)


# --- the internet stand-in ---------------------------------------------------------------------------
@dataclass
class InternetStandIn:
    netns: str
    root_if: str
    subnet: ipaddress.IPv4Network  # a /24 out of 198.18.0.0/15
    extra: tuple[str, ...] = ("169.254.169.254",)
    routed_veths: list[tuple[str, int]] = field(default_factory=list)

    @property
    def gateway(self) -> str:  # root side; also the address masquerading must produce
        return str(self.subnet.network_address + 1)

    def addr(self, i: int) -> str:
        return str(self.subnet.network_address + i)

    def start(self) -> None:
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.root_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.root_if)
        sh("ip", "link", "set", self.root_if, "up")
        ip = ("ip", "-n", self.netns)
        sh(*ip, "link", "set", "lo", "up")
        sh(*ip, "addr", "add", f"{self.addr(2)}/{self.subnet.prefixlen}", "dev", "eth0")
        for i in (3, 4, 5):
            sh(*ip, "addr", "add", f"{self.addr(i)}/32", "dev", "eth0")
        for a in self.extra:
            sh(*ip, "addr", "add", f"{a}/32", "dev", "eth0")
        sh(*ip, "link", "set", "eth0", "up")
        sh(*ip, "route", "add", "default", "via", self.gateway)

    def route_sandbox(self, veth: str, table: int) -> None:
        """Send everything the sandbox's veth forwards (but not host-local or connected destinations) here."""
        sh("ip", "route", "add", "default", "via", self.addr(2), "dev", self.root_if, "table", str(table))
        sh("ip", "rule", "add", "iif", veth, "lookup", "main", "suppress_prefixlength", "0", "priority", str(table))
        sh("ip", "rule", "add", "iif", veth, "lookup", str(table), "priority", str(table + 1))
        self.routed_veths.append((veth, table))

    def close(self) -> None:
        for _veth, table in self.routed_veths:
            sh("ip", "rule", "del", "priority", str(table), check=False)
            sh("ip", "rule", "del", "priority", str(table + 1), check=False)
            sh("ip", "route", "flush", "table", str(table), check=False)
        self.routed_veths.clear()
        sh("ip", "link", "del", self.root_if, check=False)
        if netns_exists(self.netns):
            remove_netns(self.netns)


def scrub(prefix: str, names: list[str]) -> list[str]:
    """Remove every host object of this test run; returns what had to be removed (should be empty)."""
    removed = []
    for pid, owner in dns.find_forwarders():
        name = owner.rpartition(":")[2]
        if name in names or name.startswith(prefix):
            dns.stop_forwarders(owner)
            removed.append(f"dns forwarder {pid} of {name}")
    for ns in list_netns():
        if ns.startswith((prefix, netnames.NETNS_PREFIX + prefix)):
            remove_netns(ns)
            removed.append(f"netns {ns}")
    veths = {netnames.veth_name(n) for n in names}
    for line in sh("ip", "rule").stdout.splitlines():
        prio, _, rest = line.partition(":")
        if any(f"iif {v} " in rest + " " for v in veths):
            sh("ip", "rule", "del", "priority", prio.strip(), check=False)
            removed.append(f"rule {line.strip()}")
    for ifname, _kind in list_links():
        if ifname in veths or ifname.startswith(prefix):
            delete_link(ifname)
            removed.append(f"link {ifname}")
    for family, table in nft.list_tables():
        if family == "inet" and table.startswith(netnames.TABLE_PREFIX + prefix):
            nft.apply(nft.delete_table_doc(table))
            removed.append(f"table {table}")
    return removed


# --- DNS -------------------------------------------------------------------------------------------------
ANSWER = "203.0.113.77"


def dns_message(name: str, qid: int = 0x5EB0, qtype: int = 1) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + q + struct.pack("!HH", qtype, 1)


def _qname(msg: bytes) -> tuple[str, int]:
    labels, i = [], 12
    while msg[i]:
        labels.append(msg[i + 1:i + 1 + msg[i]].decode())
        i += 1 + msg[i]
    return ".".join(labels), i + 5  # name, offset after qtype/qclass


def dns_answer_ips(reply: bytes) -> list[str]:
    an = struct.unpack("!H", reply[6:8])[0]
    _, i = _qname(reply)
    ips = []
    for _ in range(an):
        i += 2  # compressed name pointer (the stand-in and real resolvers use one here)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", reply[i:i + 10])
        if rtype == 1 and rdlen == 4:
            ips.append(str(ipaddress.IPv4Address(reply[i + 10:i + 14])))
        i += 10 + rdlen
    return ips


class DnsStandIn:
    """Upstream resolver stand-in on (addr, 53) inside `netns`."""

    def __init__(self, netns: str, addr: str) -> None:
        self.asked: list[tuple[str, str, str]] = []  # (transport, peer, name)
        self.udp = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket_in_netns(netns)
        self.udp.bind((addr, 53))
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, 53))
        self.tcp.listen(8)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def reply(self, query: bytes, truncate: bool) -> bytes:
        name, end = _qname(query)
        qid = query[:2]
        if not name.endswith(".sealbox.test"):
            return qid + struct.pack("!HHHHH", 0x8183, 1, 0, 0, 0) + query[12:end]  # NXDOMAIN
        if truncate:
            return qid + struct.pack("!HHHHH", 0x8380, 1, 0, 0, 0) + query[12:end]  # TC set, no answer
        rr = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + ipaddress.IPv4Address(ANSWER).packed
        return qid + struct.pack("!HHHHH", 0x8180, 1, 1, 0, 0) + query[12:end] + rr

    def _loop(self) -> None:
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            ready, _, _ = select.select([self.udp, self.tcp], [], [], 0.1)
            try:
                if self.udp in ready:
                    q, peer = self.udp.recvfrom(4096)
                    name = _qname(q)[0]
                    self.asked.append(("udp", peer[0], name))
                    self.udp.sendto(self.reply(q, name.startswith("tcp-")), peer)
                if self.tcp in ready:
                    conn, peer = self.tcp.accept()
                    with conn:
                        conn.settimeout(2)
                        n = struct.unpack("!H", conn.recv(2))[0]
                        q = conn.recv(n)
                        self.asked.append(("tcp", peer[0], _qname(q)[0]))
                        r = self.reply(q, False)
                        conn.sendall(struct.pack("!H", len(r)) + r)
            except (OSError, struct.error, IndexError):
                continue

    def close(self) -> None:
        self._stop.set()
        self._t.join(5)
        self.udp.close()
        self.tcp.close()


def dns_query(netns: str, server: str, name: str, *, tcp: bool = False, timeout: float = 2.0) -> list[str] | str:
    """A records for `name` asked from inside `netns`, or 'timeout' / 'refused' / 'error:...'."""
    q = dns_message(name)
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((server, 53))
        if tcp:
            s.sendall(struct.pack("!H", len(q)) + q)
            n = struct.unpack("!H", s.recv(2))[0]
            reply = s.recv(n)
        else:
            s.send(q)
            reply = s.recv(4096)
        return dns_answer_ips(reply)
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"error:{e}"
    finally:
        s.close()
