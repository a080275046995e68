"""The SDK's exception hierarchy is raised where the failure happens (the sandbox layer), not guessed from messages."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest

from sealbox.errors import NotFound, ResourceExhausted, SandboxError, SandboxTimeout, SealboxError
from sealbox.sandbox import lifecycle
from sealbox.sandbox.host import ipam, users
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.state import StateDir


def test_hierarchy() -> None:
    for cls in (NotFound, ResourceExhausted, SandboxTimeout):
        assert issubclass(cls, SandboxError) and issubclass(cls, SealboxError)
    assert issubclass(SandboxTimeout, TimeoutError)
    e = SandboxTimeout("slow  guest", hint="wait longer")
    assert str(e) == "slow guest (wait longer)" and e.exit_code == 1


def test_missing_sandbox_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no such sandbox"):
        StateDir(tmp_path).load("nope")


def test_address_pool_exhausted() -> None:
    pool = ipaddress.IPv4Network("10.9.0.0/29")  # two /30s
    holders = {ipaddress.IPv4Network("10.9.0.0/30"): "a", ipaddress.IPv4Network("10.9.0.4/30"): "b"}
    with pytest.raises(ResourceExhausted, match="exhausted"):
        ipam.plan(pool, holders, nat=False)


def test_uid_range_exhausted() -> None:
    with pytest.raises(ResourceExhausted, match="no free sandbox uid"):
        users.free_uid(taken=[0x7F000000, 0x7F000001], rng=(0x7F000000, 0x7F000001), subids=[])


def test_guest_not_ready_in_time_is_a_timeout(tmp_path: Path) -> None:
    net = GuestNet(subnet="10.9.0.0/30", host_ip="10.9.0.1", guest_ip="10.9.0.2", guest_mac="02:00:00:00:00:01",
                   tap="tap0", netns="sealbox-nonexistent-test")
    console = tmp_path / "console.log"
    console.write_bytes(b"booting\n")
    with pytest.raises(SandboxTimeout, match="not ready within"):
        lifecycle.wait_ready(net, console, None, None, known_hosts=tmp_path / "kh", alias="sealbox-x",
                             deadline=time.monotonic() + 0.3, timeout=0.3)
