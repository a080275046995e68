"""Helpers for the fleet integration tests: a Ray fleet on this machine (see conftest.py). Not product code."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PORT = 6380


def missing() -> str | None:
    if os.geteuid() != 0:
        return "fleet integration tests need root (network namespaces)"
    if shutil.which("ip") is None:
        return "fleet integration tests need ip (iproute2)"
    try:
        import ray  # noqa: F401
    except ImportError:
        return "fleet integration tests need Ray (pip install -e '.[fleet]')"
    return None


def last_json(stdout: str) -> Any:
    """The last line of a driver's stdout that is JSON: Ray prints to a driver's stdout too, from a thread of
    its own, even after the result (e.g. that a node was marked dead)."""
    for line in reversed(stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    raise AssertionError(f"no JSON result in: {stdout[-2000:]!r}")


def until(what: str, probe: Any, timeout: float = 90, every: float = 1.0) -> Any:
    """`probe()`'s first truthy answer; fails the test naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(every)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def in_ns(ns: str) -> list[str]:
    """Run in network namespace `ns` only (not `ip netns exec`: its private /sys hides the host's cgroup mounts,
    which the sandbox runtime of a simulated host needs)."""
    return ["nsenter", f"--net=/run/netns/{ns}", "--"]


def netns_inode(name: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{name}").st_ino
    except OSError:
        return None


def procs_in(inodes: set[int]) -> dict[int, str]:
    """pid -> command line of every process whose network namespace is one of `inodes`."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ino = os.stat(d / "ns" / "net").st_ino
            if ino in inodes:
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200]
        except OSError:
            continue
    return found


@dataclass
class Fleet:
    tag: str
    head_ns: str
    head_ip: str
    tmp: Path
    hosts: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {ns, ip, zone, state}
    joins: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    capacity: tuple[int, int] = (2, 1024)  # each host's vCPUs and MiB

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{PORT}"

    def env(self, **extra: str) -> dict[str, str]:
        from sealbox.fleet.rayenv import safe_environ

        path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {**safe_environ(), "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.tmp), **extra}

    def in_head(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*in_ns(self.head_ns), *argv], capture_output=True, text=True, timeout=timeout,
                              env=self.env(SEALBOX_STATE_DIR=str(self.tmp / "caller")))

    def step(self, *args: str, timeout: float = 120) -> Any:
        """One fleet_driver.py step in the head's namespace; its JSON result."""
        proc = self.in_head([sys.executable, str(HERE / "fleet_driver.py"), self.address, *args], timeout=timeout)
        assert proc.returncode == 0, f"step {args}: {proc.stderr[-3000:]}"
        return last_json(proc.stdout)

    def namespaces(self) -> list[str]:
        return [self.head_ns, *(h["ns"] for h in self.hosts.values())]


def _link(f: Fleet, name: str, i: int, net: ipaddress.IPv4Network, zone: str) -> None:
    ns = f"{f.tag}-{name}"
    ip("netns", "add", ns)
    f.hosts[name] = {"ns": ns, "ip": str(net[10 + i]), "zone": zone, "state": str(f.tmp / name)}
    ip("-n", f.head_ns, "link", "add", f"v{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("-n", f.head_ns, "link", "set", f"v{i}", "master", "br0", "up")
    ip("-n", ns, "addr", "add", f"{net[10 + i]}/{net.prefixlen}", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")


def _join(f: Fleet, name: str, runtime: str, timeout: float = 120.0) -> None:
    h = f.hosts[name]
    argv = [*in_ns(h["ns"]), sys.executable, str(HERE / "fleet_join.py"), f.address, h["ip"],
            str(f.tmp / f"ray-{name}"), name, h["zone"], runtime, *map(str, f.capacity)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(f.tmp / f"join-{name}.log", "wb"),  # noqa: SIM115
                            env=f.env(SEALBOX_STATE_DIR=h["state"], SEALBOX_RUN_DIR=h["state"] + "-run", SEALBOX_SUBNET_POOL=h["pool"]))
    f.joins[name] = proc
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.strip() == b"joined":
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"host {name} did not join: {(f.tmp / f'join-{name}.log').read_text()[-2000:]}")


SWEEP = ("from sealbox.sdk.host import LocalHost\nh = LocalHost()\nnames = [i.name for i in h.list(all_=True)]\n"
         "for n in names:\n    h.remove(n, force=True)\nh.gc()\nprint(names)")


def _sweep_real(f: Fleet) -> list[str]:
    """With the real runtime: remove what a failed test left on each host (in its namespace, with its state);
    the sandboxes found are returned (a leak)."""
    found = []
    for name, h in f.hosts.items():
        env = f.env(SEALBOX_STATE_DIR=h["state"], SEALBOX_RUN_DIR=h["state"] + "-run", SEALBOX_SUBNET_POOL=h["pool"])
        proc = subprocess.run([*in_ns(h["ns"]), sys.executable, "-c", SWEEP], capture_output=True, text=True, timeout=300, env=env)
        out = proc.stdout.strip()
        if proc.returncode != 0 or out not in ("", "[]"):
            found.append(f"{name}: {out or proc.stderr.strip()[-300:]}")
    return found


def _teardown(f: Fleet, head: object | None) -> list[str]:
    """Leave (SIGTERM to each membership process), stop the head by pid; what was left in the namespaces."""
    for proc in f.joins.values():
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    for proc in f.joins.values():
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    if head is not None:
        head.stop()  # type: ignore[attr-defined]
    inodes = {i for i in (netns_inode(ns) for ns in f.namespaces()) if i is not None}
    deadline = time.monotonic() + 20
    while (left := procs_in(inodes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:  # in our own namespaces only: ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ns in f.namespaces():
        if netns_inode(ns) is not None:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return [f"pid {pid}: {cmd}" for pid, cmd in left.items()]


def kill_host(f: Fleet, name: str) -> dict[int, str]:
    """SIGKILL every process of simulated host `name` (all of its network namespace: the membership process,
    its raylet and workers, its agent, its sandboxes' processes), by pid, as a power cut would; bounded. The
    processes killed are returned."""
    inode = netns_inode(f.hosts[name]["ns"])
    assert inode is not None
    killed: dict[int, str] = {}
    deadline = time.monotonic() + 20
    while (found := procs_in({inode})) and time.monotonic() < deadline:  # again: a dying parent may still fork
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(found)
        time.sleep(0.2)
    assert not procs_in({inode}), f"host {name}'s processes did not all die"
    with contextlib.suppress(subprocess.TimeoutExpired):
        f.joins[name].wait(10)  # reap the membership process (our child)
    return killed


def rejoin(f: Fleet, name: str, runtime: str = "standin") -> None:
    """Start simulated host `name` again (a new Ray node, same namespace, state dir and address range)."""
    _join(f, name, runtime)


def ray_fleet(hosts: tuple[tuple[str, str], ...] = (("host0", "a"), ("host1", "b")), runtime: str = "standin",
              head_env: dict[str, str] | None = None, capacity: tuple[int, int] = (2, 1024)) -> Iterator[Fleet]:
    """Bring the fleet up; after the yield, take it down and fail on anything left behind. head_env: extra
    environment of the head node (e.g. Ray's health check settings); capacity: each host's vCPUs and MiB."""
    from sealbox.fleet.rayenv import RayNode, start_argv

    pool = ipaddress.ip_network(os.environ.get("SEALBOX_SUBNET_POOL", "10.200.0.0/16"))
    net = list(pool.subnets(new_prefix=24))[-1]  # the last /24 of the pool: the simulated hosts' link
    base = Path(os.environ.get("TMPDIR", "/var/tmp"))
    tmp = Path(tempfile.mkdtemp(prefix="rf", dir=base))  # short: Ray's unix socket paths live under it
    tag = "sbf" + secrets.token_hex(3)
    f = Fleet(tag=tag, head_ns=f"{tag}-head", head_ip=str(net[1]), tmp=tmp, capacity=capacity)
    head = None
    try:
        ip("netns", "add", f.head_ns)
        ip("-n", f.head_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", f.head_ns, "addr", "add", f"{net[1]}/{net.prefixlen}", "dev", "br0")
        ip("-n", f.head_ns, "link", "set", "br0", "up")
        ip("-n", f.head_ns, "link", "set", "lo", "up")
        for i, (name, zone) in enumerate(hosts):
            _link(f, name, i, net, zone)
            f.hosts[name]["pool"] = str(list(pool.subnets(new_prefix=20))[i])  # its sandboxes' addresses: its own
        head = RayNode.start(start_argv(node_ip=f.head_ip, temp_dir=tmp / "ray-head", head=True, port=PORT), tmp / "ray-head",
                             prefix=in_ns(f.head_ns), env=f.env(**(head_env or {})))
        for name in f.hosts:
            _join(f, name, runtime)
        yield f
    finally:
        swept = _sweep_real(f) if runtime == "local" else []
        left = _teardown(f, head)
        leaked = [ns for ns in f.namespaces() if netns_inode(ns) is not None]
        shutil.rmtree(tmp, ignore_errors=True)
        assert not left, f"processes left in the fleet's namespaces (now killed): {left}"
        assert not leaked, f"namespaces left: {leaked}"
        assert not swept, f"sandboxes left on the hosts (now removed): {swept}"
