"""Fixtures for networking integration tests: root + real tools, a unique name prefix per run, a
stand-in host namespace per test module, and a scrubber that removes everything carrying the prefix
even when a test fails half-way.

The stand-in host: sealbox treats the namespace it runs in as "the host" (its net.ipv4.ip_forward,
its nft tables, the root end of every nat veth, its addresses and routes). Each test module runs with
pytest's main thread moved into a fresh network namespace that plays that part (threads, `nft`, `ip`
and pyroute2's helpers started afterwards inherit it), so no test ever changes the machine's real
root namespace: not its forwarding switch, not its firewall, not its routes. The stand-in host has a
"global" address on an uplink whose other end sits alone in an empty namespace (a default route into
nothing; no dummy module here) and no link to the real root
namespace, so nothing a test sends can leave the machine. As a second belt, while the tests run the
metadata ranges are also dropped on the machine's real uplinks (forward path only, so the host's own
use of them is untouched).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealbox.sandbox.host import dns, forward, nft
from sealbox.sandbox.host.netns import NETNS_RUN_DIR, read_sysctl, remove_netns, write_sysctl
from sealbox.sandbox.host.nsenter import enter_net
from sealbox.sandbox.host.registry import Registry

STAND_IN_UPLINK = ("uplink0", "203.0.113.10/24", "203.0.113.1")  # TEST-NET-3: the stand-in host's own address
METADATA_RANGES = ("169.254.0.0/16", "168.63.129.16", "100.100.100.200")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("nft", "ip"):
        if not shutil.which(tool):
            return f"needs {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@pytest.fixture(autouse=True, scope="module")
def _need_root() -> None:
    why = _missing()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="session")
def prefix() -> str:
    return "sbt" + secrets.token_hex(3)  # 9 chars: leaves room for short suffixes within IFNAMSIZ


def _sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def real_uplink_guard(prefix: str) -> Iterator[None]:
    """Drop the metadata ranges when forwarded out of the machine's real uplinks (in the real root
    namespace, before any test moves into a stand-in host)."""
    if _missing():
        pytest.skip(str(_missing()))
    out = subprocess.run(["ip", "-o", "route", "show", "default"], capture_output=True, text=True, timeout=10).stdout
    devs = sorted({w[i + 1] for w in (line.split() for line in out.splitlines()) for i, x in enumerate(w[:-1]) if x == "dev"})
    table = f"{prefix}-leakguard"
    ref = {"family": "inet", "table": table}
    v4 = {"set": [{"prefix": {"addr": r.split("/")[0], "len": int(r.split("/")[1])}} if "/" in r else r for r in METADATA_RANGES]}
    cmds: list[dict[str, Any]] = [
        {"add": {"table": {"family": "inet", "name": table}}},
        {"add": {"chain": {**ref, "name": "fwd", "type": "filter", "hook": "forward", "prio": -300, "policy": "accept"}}},
    ]
    for dev in devs:
        for proto, dst in (("ip", v4), ("ip6", "fd00:ec2::254")):
            match = [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": dev}},
                     {"match": {"op": "==", "left": {"payload": {"protocol": proto, "field": "daddr"}}, "right": dst}}]
            cmds.append({"add": {"rule": {**ref, "chain": "fwd", "expr": [*match, {"counter": None}, {"drop": None}]}}})
    doc = {"nftables": cmds}
    nft.apply(doc)
    try:
        yield
    finally:
        nft.apply(nft.delete_table_doc(table))


@pytest.fixture(autouse=True, scope="module")
def stand_in_host(prefix: str, real_uplink_guard: None, request: pytest.FixtureRequest) -> Iterator[str]:
    """Move pytest's main thread into a fresh namespace playing the host for this module."""
    # not named with `prefix`: the tests' scrubbers remove everything that is
    name = f"sbhost{prefix[3:]}-{abs(hash(request.module.__name__)) % 10000}"
    void = f"{name}-void"
    _sh("ip", "netns", "add", name)
    _sh("ip", "netns", "add", void)
    real = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    host = os.open(NETNS_RUN_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter_net(host)
        dev, addr, gw = STAND_IN_UPLINK
        _sh("ip", "link", "set", "lo", "up")
        _sh("ip", "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", void)
        _sh("ip", "-n", void, "link", "set", "eth0", "up")
        _sh("ip", "addr", "add", addr, "dev", dev)
        _sh("ip", "link", "set", dev, "up")
        _sh("ip", "route", "add", "default", "via", gw)
        write_sysctl("net.ipv4.ip_forward", "0")
        yield name
    finally:
        enter_net(real)
        os.close(real)
        os.close(host)
        remove_netns(name)
        remove_netns(void)


@pytest.fixture(autouse=True, scope="module")
def stand_in_resolv_conf(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The host resolvers a DNS forwarder relays to: a TEST-NET address nothing answers in the stand-in
    host, never this machine's real resolvers (tests that need answers pass their own stand-in)."""
    path = tmp_path_factory.mktemp("resolv") / "resolv.conf"
    path.write_text("nameserver 192.0.2.53\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(dns, "RESOLV_CONF", path)
        yield path


@pytest.fixture(scope="module")
def original_ip_forward(stand_in_host: str) -> str:
    return read_sysctl("net.ipv4.ip_forward")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, original_ip_forward: str) -> Iterator[Path]:
    """One host registry per module (per stand-in host), so the ip_forward count is shared by its tests."""
    d = tmp_path_factory.mktemp("run")
    yield d
    leftover = forward.users(Registry(d).host_dir)
    assert not leftover, f"ip_forward users left behind: {leftover}"
    assert read_sysctl("net.ipv4.ip_forward") == original_ip_forward


@pytest.fixture
def used(prefix: str) -> Iterator[list[str]]:
    """Sandbox names a test sets up; whatever carries them afterwards is scrubbed, and a leftover fails the test."""
    from sbnet_standins import scrub

    names: list[str] = []
    yield names
    left = scrub(prefix, names)
    assert not left, f"test left host objects behind: {left}"
