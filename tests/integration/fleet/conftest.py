"""A Ray fleet on this machine for the fleet tests: a head node and two simulated hosts, each in a network
namespace of the test's own (joined over a bridge in the head's namespace, addresses in this run's
SEALBOX_SUBNET_POOL), each host with its own state directory. Every Ray node is stopped by its process id;
at the end no process may be left in any of the namespaces, and the namespaces are deleted."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fleet_integ  # noqa: E402

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = fleet_integ.missing()
    if why:
        for item in items:
            if str(HERE) in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="module")
def ray_fleet() -> Iterator[fleet_integ.Fleet]:
    yield from fleet_integ.ray_fleet()
