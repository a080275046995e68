"""Ray, kept on this machine's side: the environment and flags sealbox uses whenever it starts or joins Ray,
and Ray nodes started and stopped by process id.

Ray would otherwise report usage statistics to its vendor and start a dashboard (a web server). sealbox
turns both off for every node it starts (`ray start` flags and environment) and for every process that
connects to a fleet (`connect`), and binds each node to the address it is given (`--node-ip-address`).
Ray's GCS and raylet listen on every address of the network namespace they run in (Ray has no option to
bind them to one): run fleet nodes on a private network or in a namespace of their own (the tests do).

A node is stopped by its own process id (SIGTERM to `ray start --block`, which stops its children; then
SIGKILL to whatever of its process tree is left), never by `ray stop`, which finds Ray processes by name
and would stop every other Ray on the machine.

This module imports Ray only inside `connect`; the CLI can build `ray start` command lines without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError, UsageError

NAMESPACE = "sealbox"  # Ray namespace of the agents and KV records
RES_VCPUS = "sealbox_vcpus"  # a host's sandbox capacity, as Ray custom resources
RES_MEMORY = "sealbox_memory_mib"
LABEL_PREFIX = "sealbox."  # node labels sealbox sets: sealbox.host, sealbox.kvm, sealbox.tdx, and the user's own

# Set in every Ray process sealbox starts, and in this process before it connects.
SAFE_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage statistics sent anywhere
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
    # `ray start` on SIGTERM first drains its node for up to 30 s (Ray 2.60); a host's node holds the detached
    # agent, so it never drains: the node outlived RayNode.stop's grace, was SIGKILLed, and stayed "alive"
    # until the head's health checks failed. No drain: the raylet says it leaves and Ray shows it dead at once.
    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
}


def safe_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """`base` (default: os.environ) with sealbox's Ray settings forced on."""
    env = dict(os.environ if base is None else base)
    env.update(SAFE_ENV)
    env["RAY_USAGE_STATS_ENABLED"] = "0"  # whatever the caller had
    return env


def apply_safe_env() -> None:
    """Force the settings in this process (before Ray is imported or connected)."""
    os.environ.update(SAFE_ENV)
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


def require_ray() -> None:
    """A one-line UsageError if Ray is not installed (before anything is started)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError("fleet mode needs Ray", hint="install the extra: pip install 'sealbox[fleet]'")


def ray_argv(*args: str) -> list[str]:
    """`ray ARGS` with this interpreter (the venv's Ray, whatever is on PATH)."""
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def _check_ip(ip: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(ip))
    except ValueError:
        raise UsageError(f"--node-ip {ip!r} is not an IP address", hint="the address this node is reached at, e.g. 10.0.0.5") from None


def start_argv(*, node_ip: str, temp_dir: Path, head: bool = False, address: str | None = None, port: int | None = None,
               resources: Mapping[str, float] | None = None, labels: Mapping[str, str] | None = None,
               num_cpus: int = 1) -> list[str]:
    """`ray start --block` for a head (head=True) or a worker joining `address`, with the safe flags."""
    argv = ray_argv("start", "--block", "--node-ip-address", _check_ip(node_ip), "--temp-dir", str(temp_dir),
                    "--disable-usage-stats", "--num-cpus", str(num_cpus), "--include-log-monitor", "false")
    if head:  # only a head runs a dashboard (ray start refuses the flag on a worker)
        argv += ["--head", "--port", str(port or 6380), "--include-dashboard", "false", "--dashboard-host", "127.0.0.1"]
    else:
        if not address:
            raise UsageError("joining a fleet needs its address (HEAD_IP:PORT)")
        argv += ["--address", address]
    if resources:
        argv += ["--resources", json.dumps(dict(resources), sort_keys=True)]
    if labels:
        # Ray 2.60's own form (its JSON form is deprecated); Ray checks the keys and values (Kubernetes syntax)
        argv += ["--labels", ",".join(f"{k}={v}" for k, v in sorted(labels.items()))]
    return argv


@dataclass
class RayNode:
    """A `ray start --block` process this process started, and how to stop exactly it."""

    proc: subprocess.Popen[bytes]
    temp_dir: Path
    log: Path
    pids: set[int] = field(default_factory=set)

    @classmethod
    def start(cls, argv: list[str], temp_dir: Path, *, env: Mapping[str, str] | None = None, timeout: float = 90.0,
              prefix: list[str] | None = None) -> RayNode:
        """Start the node (`prefix`: e.g. an `ip netns exec NS` in tests) and wait until Ray says it runs."""
        temp_dir.mkdir(parents=True, exist_ok=True)
        log = temp_dir / "ray-start.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([*(prefix or []), *argv], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=safe_environ(env), start_new_session=True)
        node = cls(proc, temp_dir, log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_bytes().decode(errors="replace")
            if "Ray runtime started" in text:
                node.pids = node.tree()
                return node
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = " | ".join(log.read_bytes().decode(errors="replace").strip().splitlines()[-3:])
        node.stop()
        raise SandboxError(f"ray start did not come up within {timeout:g}s: {tail[-400:]}", hint=f"see {log}")

    def tree(self) -> set[int]:
        """The node's processes: `ray start` and its descendants (ppid links, read from /proc)."""
        children: dict[int, list[int]] = {}
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(d.name))
        out, todo = set(), [self.proc.pid]
        while todo:
            pid = todo.pop()
            if pid not in out:
                out.add(pid)
                todo += children.get(pid, [])
        return out

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to `ray start` (it stops its node), then SIGKILL to what is left of the tree it had."""
        known = self.pids | self.tree()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        for pid in known | self.tree():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


def check_address(address: str, what: str = "the fleet address") -> tuple[str, int]:
    """HEAD_IP:PORT (an IPv6 head as [IP]:PORT) as (ip, port); a one-line UsageError naming `what` if not."""
    import ipaddress

    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
        if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535 or bracketed != (ip.version == 6):
            raise ValueError
    except ValueError:
        raise UsageError(f"{what} {address!r} is not HEAD_IP:PORT",
                         hint="the head's address and GCS port, e.g. 10.0.0.1:6380") from None
    return str(ip), int(port)


def probe(address: str, timeout: float = 5.0) -> None:
    """One TCP connection to the head's GCS port, bounded in time: a SandboxError in one line if nothing answers
    there (ray.init would retry for minutes, printing warnings)."""
    import socket

    ip, port = check_address(address)
    try:
        socket.create_connection((ip, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__).lower()
        raise SandboxError(f"cannot reach the fleet head at {address}: {why}",
                           hint="is 'sealbox fleet head' running there, and is its port reachable from here?") from None


def connect(address: str | None, *, namespace: str = NAMESPACE, node_ip: str | None = None) -> Any:
    """Join the Ray cluster at `address` as a driver (no-op if this process already is one); returns `ray`.

    node_ip: the node this driver attaches to (its raylet). Ray otherwise picks the node by its own guess
    of this machine's address, which picked another node's raylet when nodes share a filesystem (the
    head's sockets are reachable as files from a host in another network namespace)."""
    apply_safe_env()
    try:
        import ray
    except ImportError:
        raise UsageError("fleet mode needs Ray", hint="install the extra: pip install 'sealbox[fleet]'") from None
    if not ray.is_initialized():
        if address:
            probe(address)
        try:
            extra = {"_node_ip_address": _check_ip(node_ip)} if node_ip else {}
            ray.init(address=address or "auto", namespace=namespace, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.ERROR, configure_logging=True, **extra)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise SandboxError(f"cannot join the fleet at {address or 'auto'}: {' '.join(str(e).split())[:300]}",
                               hint="is a head running there (sealbox fleet head), and does this machine run a fleet node?") from None
    return ray
