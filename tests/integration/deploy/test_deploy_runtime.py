"""Persistent data disks, published ports and rate limits on real sandboxes (QEMU/TCG, the deploy test image).

Three boots, shared by every check: A (isolated) has a disk with foreign data named `persistent`, a blank disk
nobody names, and a TCP and a UDP port published; B (nat) gets a fresh data disk, formats it, writes a file and
carries every rate limit; C (after B is removed) gets B's disk again. Oracles: Python sockets through the published
ports, the guest's own findmnt/dd, sha256 of the disk files on the host, the CLI's exit status and stderr."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_integ import Sealbox, leftovers, scrub

pytestmark = [pytest.mark.integration, pytest.mark.boot, pytest.mark.in_order]  # B is removed before C reuses its disk
MIB = 1 << 20
NET_RATE, DISK_RATE, DISK_IOPS = MIB, 2 * MIB, 100


@pytest.fixture(scope="module")
def sb(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealbox]:
    prefix = "dp" + secrets.token_hex(2)
    box = Sealbox(state_dir=tmp_path_factory.mktemp("deploy-state"), image=image, prefix=prefix)
    yield box
    box.kill_spawned()
    for name in sorted(p.name for p in (box.state_dir / "sandboxes").glob("*")) if (box.state_dir / "sandboxes").is_dir() else []:
        box("rm", "--force", name, timeout=120)
    box("gc", timeout=120)
    left = scrub(box.state_dir, prefix)
    assert not left, f"left behind (now scrubbed): {left}"


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory, sb: Sealbox) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("disks")
    out = {"foreign": d / "foreign.raw", "bystander": d / "bystander.raw", "data": d / "data.qcow2", "rate": d / "rate.raw"}
    with open(out["foreign"], "wb") as f:  # bytes of no format blkid knows, then a hole
        f.write(os.urandom(MIB))
        f.truncate(64 * MIB)
    for key in ("bystander", "rate"):
        with open(out[key], "wb") as f:
            f.truncate(64 * MIB)
    sb("disk", "create", str(out["data"]), "--size", "256M", "--format", "qcow2", check=True)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ports(sb: Sealbox, name: str) -> dict[str, int]:
    """'8080/tcp' -> host port, from `sealbox ps --json`."""
    row = next(r for r in json.loads(sb("ps", "--json", check=True).stdout) if r["name"] == name)
    return {p.split("->")[1]: int(p.split("->")[0].rsplit(":", 1)[1]) for p in row["ports"]}


def _run(sb: Sealbox, name: str, *extra: str) -> subprocess.CompletedProcess[str]:
    p = sb(*sb.run_args(name, *extra), timeout=420)
    assert p.returncode == 0, p.stderr
    print(f"{name}: {p.stdout.strip()}")
    return p


def _serve(sb: Sealbox, name: str, what: str) -> None:
    """Start a server in the guest, detached from the SSH session: the image's busybox httpd or socat."""
    cmds = {"http": "mkdir -p /tmp/www && head -c 8388608 /dev/zero > /tmp/www/big && echo hello-guest > /tmp/www/index.html"
                    " && setsid -f sh -c 'echo $$ > /tmp/httpd.pid; exec busybox httpd -f -p 8080 -h /tmp/www'",
            "udp": "setsid -f socat UDP4-RECVFROM:9000,fork EXEC:cat",
            "sink": "kill $(cat /tmp/httpd.pid); sleep 0.3; setsid -f socat TCP4-LISTEN:8080,reuseaddr,fork 'EXEC:wc -c'"}
    p = sb.exec(name, "sh", "-c", cmds[what] + " </dev/null >/dev/null 2>&1; sleep 0.5")
    assert p.returncode == 0, p.stderr


def _http(port: int, path: str = "/", host: str = "127.0.0.1") -> bytes:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


def _udp(port: int, payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(payload, ("127.0.0.1", port))
        return s.recvfrom(65535)[0]


def _host_address() -> str | None:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True, timeout=10).stdout
    found = re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return found[0] if found else None


def test_a_isolated_foreign_data_is_left_alone_and_ports_are_published(sb: Sealbox, disks: dict[str, Path]) -> None:
    name = f"{sb.prefix}-a"
    before = {k: _sha(disks[k]) for k in ("foreign", "bystander")}
    with socket.socket() as taken:  # a host port in use: refused in one line, before any VM, nothing left
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        p = sb(*sb.run_args(name, "--publish", f"{port}:8080"), timeout=120)
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
    assert f"host port 127.0.0.1:{port}/tcp is already in use" in p.stderr and leftovers(sb.state_dir, name) == []
    _run(sb, name, "--disk", f"{disks['foreign']}:rw,serial=persistent", "--disk", f"{disks['bystander']}:rw",
         "--publish", "8080", "--publish", "9000/udp")
    mounted = sb.exec(name, "findmnt", "/persistent")
    assert mounted.returncode != 0, mounted.stdout  # nothing mounted
    logs = sb("logs", name, check=True).stdout
    assert "holds data this guest does not recognise, not an ext4 filesystem: not formatted, not mounted" in logs
    _serve(sb, name, "http")
    _serve(sb, name, "udp")
    ports = _ports(sb, name)
    assert set(ports) == {"8080/tcp", "9000/udp"}
    assert _http(ports["8080/tcp"]) == b"hello-guest\n"
    assert _udp(ports["9000/udp"], b"ping") == b"ping"
    inspect = json.loads(sb("inspect", name, check=True).stdout)
    assert [p["guest_port"] for p in inspect["spec"]["publish"]] == [8080, 9000]
    # nothing else of the guest: the host has no route into the guest's link (only its default route, which leaves
    # the machine: no packet is sent to find out; tests/integration/net/test_net_publish.py probes it in a stand-in
    # host), and the published port listens on loopback only
    guest_ip = inspect["network"]["guest_ip"]
    route = subprocess.run(["ip", "-o", "route", "get", guest_ip], capture_output=True, text=True, timeout=10).stdout
    default = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True, timeout=10).stdout
    assert re.search(r" dev (\S+)", route)[1] in re.findall(r" dev (\S+)", default) or "unreachable" in route, route  # type: ignore[index]
    addr = _host_address()
    if addr is not None:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((addr, ports["8080/tcp"]), timeout=2).close()
    assert sb("rm", "--force", name).returncode == 0
    assert leftovers(sb.state_dir, name) == []
    with socket.socket() as s:  # the reservation went with the sandbox (SO_REUSEADDR: only a listener still holding it fails)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", ports["8080/tcp"]))
        s.listen(1)
    # neither disk was written: the foreign one is not ours to format, the bystander is named by nobody
    assert {k: _sha(disks[k]) for k in ("foreign", "bystander")} == before


def test_b_nat_formats_a_blank_disk_and_holds_it(sb: Sealbox, disks: dict[str, Path]) -> None:
    name = f"{sb.prefix}-b"
    _run(sb, name, "--net", "nat", "--disk", f"{disks['data']}:rw,serial=persistent:qcow2", "--disk", f"{disks['rate']}:ro,serial=ratedisk",
         "--publish", "127.0.0.1::8080", "--net-rate", "1MiB/s", "--disk-rate", "2MiB/s", "--disk-iops", str(DISK_IOPS))
    mnt = sb.exec(name, "findmnt", "-n", "-o", "FSTYPE,OPTIONS", "/persistent")
    assert mnt.returncode == 0 and mnt.stdout.split()[0] == "ext4" and {"nosuid", "nodev"} <= set(mnt.stdout.split()[1].split(","))
    assert sb.exec(name, "sh", "-c", "echo kept-across-sandboxes > /persistent/state.txt && sync").returncode == 0
    assert "is blank: making an ext4 filesystem" in sb("logs", name, check=True).stdout
    # the disk is B's while B exists: a second sandbox is refused in one line, before anything is created
    other = f"{sb.prefix}-c"
    p = sb(*sb.run_args(other, "--disk", f"{disks['data']}:rw,serial=persistent:qcow2"), timeout=120)
    assert p.returncode != 0 and p.stderr.count("\n") == 1, p.stderr
    assert p.stderr.startswith(f"sealbox: error: --disk {disks['data']} is in use (rw) by sandbox '{name}' of the state dir"), p.stderr
    assert leftovers(sb.state_dir, other) == []
    _serve(sb, name, "http")
    assert _http(_ports(sb, name)["8080/tcp"]) == b"hello-guest\n"  # published in nat mode too


def _download_rate(port: int, seconds: float = 7.0) -> float:
    """Guest tx: bytes/s the host receives from the guest's httpd through a published port, counted from 2 s into the
    transfer (once the bucket's initial burst is spent) to its end."""
    samples: list[tuple[float, int]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        s.settimeout(1.0)
        t0, got = time.monotonic(), 0
        while (now := time.monotonic() - t0) < seconds:
            try:
                chunk = s.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            got += len(chunk)
            samples.append((now, got))
    start = max((n for t, n in samples if t <= 2.0), default=0)
    end_t, end_n = samples[-1]
    assert end_t > 5.0, f"the transfer ended after {end_t:.1f}s: not rate limited?"
    return (end_n - start) / (end_t - 2.0)


def _upload(port: int, size: int) -> float:
    """Seconds from the first byte to the guest's `wc -c` answer: all `size` bytes arrived in the guest."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(60)
        t0 = time.monotonic()
        s.sendall(b"\0" * size)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
        elapsed = time.monotonic() - t0
    assert int(answer) == size, answer
    return elapsed


def test_b_rates_settle_at_the_set_rate(sb: Sealbox) -> None:
    name = f"{sb.prefix}-b"
    port = _ports(sb, name)["8080/tcp"]
    # guest tx (the host downloads): rate after the first 2 s (the bucket's burst) from the receiving side
    tx = _download_rate(port)
    # guest rx (the host uploads): two sizes, the difference cancels the burst and the fixed costs; the median of three
    # pairs, as a policer's drops make single TCP transfers stall on retransmission timeouts now and then
    _serve(sb, name, "sink")
    pairs = []
    for _ in range(3):
        time.sleep(2.5)  # the bucket refills
        t_small = _upload(port, 2 * MIB)
        time.sleep(2.5)
        t_big = _upload(port, 7 * MIB)
        pairs.append(5 * MIB / (t_big - t_small))
    rx = sorted(pairs)[1]
    # disk: the guest's dd on the rate disk (found by its serial), O_DIRECT: every request reaches QEMU's throttle.
    # Two sizes each, the difference counted: what QEMU lets through before it throttles (a request, the bucket's
    # tenth of a second) is the same in both and cancels
    dd = ("dev=$(grep -l '^ratedisk$' /sys/block/vd*/serial); dev=/dev/$(basename $(dirname $dev)); "
          "for n in 32 64; do dd if=$dev of=/dev/null bs=128k count=$n iflag=direct 2>&1 | tail -n 1; done; "
          "for n in 100 400; do dd if=$dev of=/dev/null bs=4k count=$n skip=8192 iflag=direct 2>&1 | tail -n 1; done")
    p = sb.exec(name, "sh", "-c", dd, timeout=120)
    assert p.returncode == 0, p.stderr
    runs = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(r"^(\d+) bytes .* copied, ([\d.]+) s", p.stdout, re.M)]
    assert len(runs) == 4, p.stdout
    (b1, s1), (b2, s2), (o1, t1), (o2, t2) = runs
    disk_bps, disk_iops = (b2 - b1) / (s2 - s1), ((o2 - o1) / 4096) / (t2 - t1)
    print(f"measured: net tx {tx / MIB:.2f} MiB/s, net rx {rx / MIB:.2f} MiB/s of {[round(r / MIB, 2) for r in pairs]} "
          f"(set {NET_RATE / MIB:.0f} MiB/s); "
          f"disk {disk_bps / MIB:.2f} MiB/s (set {DISK_RATE / MIB:.0f}), {disk_iops:.0f} IOPS (set {DISK_IOPS})")
    for what, got, want in (("net tx", tx, NET_RATE), ("net rx", rx, NET_RATE), ("disk", disk_bps, DISK_RATE), ("iops", disk_iops, DISK_IOPS)):
        assert 0.8 * want <= got <= 1.2 * want, f"{what}: {got:.0f} is not within 20 % of {want}"


def test_c_the_data_outlives_the_sandbox(sb: Sealbox, disks: dict[str, Path]) -> None:
    b, c = f"{sb.prefix}-b", f"{sb.prefix}-c"
    assert sb("rm", "--force", b).returncode == 0 and leftovers(sb.state_dir, b) == []
    _run(sb, c, "--disk", f"{disks['data']}:rw,serial=persistent:qcow2")
    assert sb.exec(c, "cat", "/persistent/state.txt").stdout == "kept-across-sandboxes\n"
    logs = sb("logs", c, check=True).stdout
    assert "making an ext4 filesystem" not in logs and "mounted at /persistent" in logs
    assert sb("rm", "--force", c).returncode == 0 and leftovers(sb.state_dir, c) == []
