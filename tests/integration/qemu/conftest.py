from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        for item in items:
            if str(Path(__file__).parent) in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason="QEMU integration tests need root"))


class StandInNetwork:
    """STAND-IN for the networking helper's NetnsStep/TapStep: a netns with a persistent tap0 whose
    host side has the /30's .1 address. Removed (netns and everything in it) at teardown."""

    def __init__(self, netns: str, tap: str, host_cidr: str) -> None:
        self.netns, self.tap, self.host_cidr = netns, tap, host_cidr

    def ns(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.netns, *argv], check=True, capture_output=True, text=True, timeout=30)

    def up(self) -> None:
        subprocess.run(["ip", "netns", "add", self.netns], check=True, timeout=30)
        self.ns("ip", "link", "set", "lo", "up")
        self.ns("ip", "tuntap", "add", "dev", self.tap, "mode", "tap", "vnet_hdr")
        self.ns("ip", "addr", "add", self.host_cidr, "dev", self.tap)
        self.ns("ip", "link", "set", self.tap, "up")

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns], check=False, timeout=30)


@pytest.fixture
def stand_in_network(request: pytest.FixtureRequest) -> StandInNetwork:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    net = StandInNetwork(f"sealbox-t{os.getpid()}", "tap0", "10.213.250.1/30")
    request.addfinalizer(net.down)
    net.up()
    return net
