"""Fixtures for networking integration tests: root + real tools, a unique name prefix per run, and
a scrubber that removes everything carrying that prefix even when a test fails half-way."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealbox.sandbox.host import forward
from sealbox.sandbox.host.netns import read_sysctl, write_sysctl
from sealbox.sandbox.host.registry import Registry


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


@pytest.fixture(scope="session")
def original_ip_forward() -> str:
    return read_sysctl("net.ipv4.ip_forward")


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, original_ip_forward: str) -> Iterator[Path]:
    """One host registry for the whole session, so the ip_forward count is shared by all tests."""
    original = original_ip_forward
    d = tmp_path_factory.mktemp("run")
    yield d
    leftover = forward.users(Registry(d).host_dir)
    if leftover or read_sysctl("net.ipv4.ip_forward") != original:
        write_sysctl("net.ipv4.ip_forward", original)
    assert not leftover, f"ip_forward users left behind: {leftover}"
