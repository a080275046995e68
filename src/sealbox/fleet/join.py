"""A host joining (or heading) a fleet: `sealbox fleet join` / `sealbox fleet head`.

join: `doctor` decides the labels the host can honestly declare (sealbox.kvm, sealbox.tdx; the user adds
more and may lower those, never raise them), then a Ray worker node starts with the host's sandbox capacity as resources (sealbox_vcpus,
sealbox_memory_mib) and those labels, then this process, as a short-lived driver on that node, starts the
host agent (agent.start) and lets go. The process stays in the foreground as the host's membership: SIGTERM
or Ctrl-C stops the Ray node by its process id (the agent with it); the sandboxes stay on the host, and the
fleet lists them as lost until the host joins again and its agent re-adopts them.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from sealbox.errors import UsageError
from sealbox.fleet import rayenv
from sealbox.fleet.rayenv import LABEL_PREFIX, RES_MEMORY, RES_VCPUS, RayNode

# Ray's node label syntax (Kubernetes'): an optional DNS prefix and '/', then a name; values alike or empty
_LABEL_NAME = r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^([a-z0-9]([a-z0-9.-]{{0,251}}[a-z0-9])?/)?{_LABEL_NAME}$")
LABEL_VALUE = re.compile(rf"^({_LABEL_NAME})?$")


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """--label KEY=VALUE items as a host's labels (Ray's syntax: letters, digits, '-', '_', '.'; 63 at most)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not LABEL_KEY.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise UsageError(f"host label {item!r} is not KEY=VALUE in Ray's label syntax",
                             hint="letters, digits, '-', '_', '.', up to 63 each, starting and ending alphanumeric; e.g. zone=b")
        out[key] = value
    return out


def default_capacity() -> tuple[int, int]:
    """All CPUs, and 80 % of the RAM, as sandbox capacity."""
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:"))
    return os.cpu_count() or 1, int(mem_kib / 1024 * 0.8)


FACTS = ("kvm", "tdx")  # labels doctor decides: sealbox.kvm (vCPUs ran in the functional probe), sealbox.tdx


def host_labels(state_dir: Path | None, name: str, extra: Mapping[str, str], *, probe: bool = True) -> dict[str, str]:
    """sealbox.host=NAME, sealbox.kvm/tdx as doctor finds them, and the user's own (prefixed sealbox.).

    A user's label may add to these and may lower a fact (kvm=false keeps KVM work off a host whose KVM
    works), never raise one: callers select hosts by them (Fleet.selector), so a false claim would place
    `--accel kvm` or `--tdx` sandboxes where they cannot run. Without the probe (tests) no fact is set, and
    none can be claimed. The host's name is --name, not a label."""
    labels = {LABEL_PREFIX + "host": name}
    if probe:
        from sealbox import doctor
        from sealbox.sandbox.state import state_root

        checks = {c.name: c.status for c in doctor.run_checks(state_root(state_dir))}
        for fact in FACTS:
            labels[LABEL_PREFIX + fact] = "true" if checks.get(fact) == "ok" else "false"
    for k, v in parse_labels([f"{k}={v}" for k, v in extra.items()]).items():
        key = k if "." in k or "/" in k else LABEL_PREFIX + k
        if key == LABEL_PREFIX + "host":
            raise UsageError(f"host label {k}={v}: the host's name is not set by a label", hint="use --name NAME")
        fact = labels.get(key, "")
        if key.removeprefix(LABEL_PREFIX) in FACTS and v != fact and v != "false":
            raise UsageError(f"host label {k}={v}: {key} is what doctor found on this host ({fact or 'not probed'}), not a claim",
                             hint=f"leave {k} out, or lower it with {k}=false; 'sealbox doctor' says why it is false")
        labels[key] = v
    return labels


def _hold(node: RayNode, on_ready: Callable[[], None] | None) -> int:
    """Stay until the node ends or a signal asks us to leave; then stop the node by its pid."""
    leave = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        leave.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        if on_ready:
            on_ready()
        while not leave.wait(0.5):
            if node.proc.poll() is not None:
                return 1
        return 0
    finally:
        node.stop()
        for s, h in old.items():
            signal.signal(s, h)


def head(*, node_ip: str, port: int, temp_dir: Path, on_ready: Callable[[], None] | None = None) -> int:
    rayenv.require_ray()
    node = RayNode.start(rayenv.start_argv(node_ip=node_ip, temp_dir=temp_dir, head=True, port=port), temp_dir)
    return _hold(node, on_ready)


def join(address: str, *, node_ip: str, temp_dir: Path, cpus: int | None = None, memory_mib: int | None = None,
         labels: Mapping[str, str] | None = None, name: str | None = None, state_dir: Path | None = None,
         host_factory: str | None = None, probe: bool = True, on_ready: Callable[[], None] | None = None) -> int:
    rayenv.require_ray()
    rayenv.start_argv(node_ip=node_ip, temp_dir=temp_dir, address=address)  # its checks, before anything runs
    dc, dm = default_capacity()
    cpus, memory_mib = cpus or dc, memory_mib or dm
    if cpus < 1 or memory_mib < 64:
        raise UsageError(f"capacity {cpus} vCPUs / {memory_mib} MiB is too small", hint="--cpus 1 or more, --memory 64 or more")
    resources = {RES_VCPUS: float(cpus), RES_MEMORY: float(memory_mib)}
    node_labels = host_labels(state_dir, name or socket.gethostname(), labels or {}, probe=probe)
    node = RayNode.start(rayenv.start_argv(node_ip=node_ip, temp_dir=temp_dir, address=address, resources=resources,
                                           labels=node_labels), temp_dir)
    try:
        from sealbox.fleet import agent

        ray = rayenv.connect(address, node_ip=node_ip)
        agent.start(ray.get_runtime_context().get_node_id(), host_factory=host_factory)
        ray.shutdown()
    except BaseException:
        node.stop()
        raise
    return _hold(node, on_ready)
