"""Stand-ins for Azure and GCP, for booting a cloud-profile disk image as the cloud would. None of this is product code.

A CloudLink is a network namespace made by the test that is the guest's only uplink: a TAP for QEMU (QEMU runs inside
the namespace, as root, with `-netdev tap,ifname=tap0`), the gateway address on it, a real DHCP server (dnsmasq,
no DNS) configured the way the cloud's is, and the cloud's endpoint addresses (169.254.169.254, 168.63.129.16) on
the namespace's loopback, each served by a small HTTP stand-in that records every request. The namespace has no
other interface and does not forward, so no packet of the guest can leave this machine.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sealbox.sandbox.host.netns import remove_netns, run_in_netns, socket_in_netns

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
METADATA, WIRESERVER = "169.254.169.254", "168.63.129.16"
# DMI as each cloud presents it (what the guest's agent recognises the cloud by)
AZURE_SMBIOS = ["-smbios", "type=1,manufacturer=Microsoft Corporation,product=Virtual Machine",
                "-smbios", "type=3,manufacturer=Microsoft Corporation,asset=7783-7084-3265-9085-8269-3286-77"]
GCP_SMBIOS = ["-smbios", "type=1,manufacturer=Google,product=Google Compute Engine", "-smbios", "type=2,manufacturer=Google"]
Reply = tuple[int, dict[str, str], bytes]
Route = Callable[[str, str, dict[str, str], bytes], Reply]  # (method, path, headers, body) -> (status, headers, body)


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, timeout=30).stdout


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class StandInServer:
    """An HTTP server on ADDR:80 inside a namespace; `route` answers, every request is recorded."""

    def __init__(self, netns: str, addr: str, route: Route) -> None:
        self.requests: list[Request] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                n = min(int(self.headers.get("Content-Length") or 0), 1 << 20)
                body = self.rfile.read(n) if n else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append(Request(self.command, self.path, headers, body))
                status, extra, data = route(self.command, self.path, headers, body)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any  # noqa: N815 - http.server's naming

        self.server = ThreadingHTTPServer((addr, 80), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = socket_in_netns(netns)
        self.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.server_bind()
        self.server.server_activate()
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class CloudLink:
    netns: str
    gateway: str = "10.77.0.1"
    guest_ip: str = "10.77.0.50"
    servers: list[StandInServer] = field(default_factory=list)
    dnsmasq: subprocess.Popen[bytes] | None = None
    leases: Path | None = None

    @classmethod
    @contextlib.contextmanager
    def create(cls, tmp: Path, dhcp: list[str]) -> Iterator[CloudLink]:
        """The namespace with tap0, the gateway, both endpoint addresses and dnsmasq (extra options `dhcp`)."""
        link = cls(netns=f"sbcloud-{secrets.token_hex(3)}")
        sh("ip", "netns", "add", link.netns)
        try:
            ip = ("ip", "-n", link.netns)
            sh(*ip, "link", "set", "lo", "up")
            for addr in (METADATA, WIRESERVER):
                sh(*ip, "addr", "add", f"{addr}/32", "dev", "lo")
            sh(*ip, "tuntap", "add", "dev", "tap0", "mode", "tap")
            sh(*ip, "addr", "add", f"{link.gateway}/24", "dev", "tap0")
            sh(*ip, "link", "set", "tap0", "up")
            # a new namespace may inherit the host's forwarding switch: this one routes nothing anywhere
            run_in_netns(link.netns, lambda: Path("/proc/sys/net/ipv4/ip_forward").write_text("0"))
            assert run_in_netns(link.netns, lambda: Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()) == "0"
            link.leases = tmp / "dnsmasq.leases"
            argv = ["ip", "netns", "exec", link.netns, "dnsmasq", "--keep-in-foreground", "--no-daemon", "--port=0",
                    "--interface=tap0", "--bind-interfaces", "--no-resolv", "--no-hosts", "--log-dhcp",
                    f"--dhcp-leasefile={link.leases}", f"--pid-file={tmp / 'dnsmasq.pid'}", *dhcp]
            link.dnsmasq = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(tmp / "dnsmasq.log", "wb"))  # noqa: SIM115
            yield link
        finally:
            for s in link.servers:
                s.close()
            if link.dnsmasq is not None:
                link.dnsmasq.send_signal(signal.SIGTERM)
                try:
                    link.dnsmasq.wait(10)
                except subprocess.TimeoutExpired:
                    link.dnsmasq.kill()
                    link.dnsmasq.wait(5)
            remove_netns(link.netns)

    def serve(self, addr: str, route: Route) -> StandInServer:
        s = StandInServer(self.netns, addr, route)
        self.servers.append(s)
        return s


@dataclass
class Boot:
    proc: subprocess.Popen[bytes]
    console: bytearray
    t0: float

    def text(self) -> str:
        return self.console.decode(errors="replace")

    def wait_for(self, marker: str, timeout: float) -> float:
        """Seconds from QEMU's start until `marker` is on the console; fails on timeout or exit."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while marker not in self.text():
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = " | ".join(self.text().splitlines()[-15:])
                raise AssertionError(f"no {marker!r} on the console within {timeout:.0f}s; tail: {tail}")
            if select.select([self.proc.stdout], [], [], min(1.0, left))[0]:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    continue
                self.console += chunk
        return time.monotonic() - self.t0


@contextlib.contextmanager
def boot(link: CloudLink, tmp: Path, disk: Path, fmt: str, smbios: list[str], extra: list[str] = ()) -> Iterator[Boot]:  # type: ignore[assignment]
    """QEMU q35/OVMF/TCG inside the link's namespace, the image's disk as an NVMe boot disk, the serial console on
    stdout; killed on exit."""
    vars_copy = tmp / "vars.fd"
    vars_copy.write_bytes(OVMF_VARS.read_bytes())
    argv = ["ip", "netns", "exec", link.netns, "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "768", "-smp", "2",
            "-nographic", "-no-reboot", "-nodefaults", "-no-user-config", "-serial", "stdio", "-monitor", "none",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            "-drive", f"if=none,id=os,file={disk},format={fmt},readonly=on",
            "-device", "nvme,drive=os,serial=os-disk,bootindex=0",
            "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off",
            "-device", "virtio-net-pci,netdev=n0,mac=02:00:00:77:00:50,romfile=",
            "-object", "rng-random,id=rng0,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng0",
            *smbios, *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    b = Boot(proc, bytearray(), time.monotonic())
    try:
        yield b
    finally:
        proc.kill()
        proc.wait(10)


def hostkeys(console: str) -> list[str]:
    """'type base64' of each SEALBOX-HOSTKEY line before the ready marker."""
    head = console.split("SEALBOX-READY", 1)[0]
    return [" ".join(line.split()[1:3]) for line in head.splitlines() if line.startswith("SEALBOX-HOSTKEY ")]


class Ssh:
    """The real OpenSSH client inside the link's namespace, pinned to the host keys the console printed."""

    def __init__(self, link: CloudLink, tmp: Path, keys: list[str], boot: Boot) -> None:
        self.link, self.known, self.boot = link, tmp / "known_hosts", boot
        self.known.write_text("".join(f"{link.guest_ip} {k}\n" for k in keys))

    def console_tail(self) -> str:
        """The guest's own lines about provisioning (for failure messages)."""
        return " | ".join(line.strip() for line in self.boot.text().splitlines() if "sealbox-" in line)[-3000:]

    def run(self, key: Path, *cmd: str, user: str = "root", timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.link.netns, "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known}", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10",
                f"{user}@{self.link.guest_ip}", "--", shlex.join(cmd)]  # the remote shell splits it again
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def keypair(tmp: Path, name: str) -> tuple[Path, str]:
    key = tmp / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True, timeout=30)
    return key, (tmp / f"{name}.pub").read_text().strip()
