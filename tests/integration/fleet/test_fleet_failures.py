"""Fleet failure behaviour on a real Ray cluster (head + 2 simulated hosts, stand-in host runtime as in
test_fleet_cluster.py): a host agent killed with SIGKILL is restarted by Ray on its node and re-adopts the
host's sandboxes; a host that leaves the fleet has its sandboxes listed as lost (not missing), and removing a
lost sandbox forgets it. A sandbox outlives the caller (Ray job) that created it."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest
from fleet_integ import Fleet, until

pytestmark = pytest.mark.integration


def _host(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(h for h in status["hosts"] if h["host"] == name)



def test_agent_restart_and_host_leaving(ray_fleet: Fleet) -> None:
    f = ray_fleet
    a, b = f"{f.tag}-a", f"{f.tag}-b"
    assert f.step("create", a, "a") == "host0"  # each step is a caller (Ray job) of its own that then ends
    assert f.step("create", b, "b") == "host1"
    assert f.step("list") == [[a, "running", None], [b, "running", None]]

    # kill -9 of host0's agent: Ray restarts it on its node, and its start re-adopts the sandbox
    old = _host(f.step("status"), "host0")["agent"]
    assert old["state"] == "up" and old["adopted"] == []
    os.kill(old["pid"], signal.SIGKILL)
    def restarted() -> Any:
        agent = _host(f.step("status"), "host0")["agent"]
        return agent if agent.get("pid") not in (None, old["pid"]) else None

    new = until("host0's agent restarted", restarted)
    assert new["state"] == "up" and new["adopted"] == [a], new
    assert f.step("where", a).split() == [f"{f.hosts['host0']['ip']}/24"]  # commands reach it through the new agent

    # host1 leaves (its membership process ends, its Ray node stopped by pid): b is lost, not missing
    f.joins["host1"].send_signal(signal.SIGTERM)
    assert f.joins["host1"].wait(60) == 0
    def lost() -> Any:
        rows = f.step("list")
        return rows if rows[-1][:2] == [b, "lost"] else None

    listed = until("b listed as lost", lost)
    assert listed[0] == [a, "running", None] and "host1" in listed[1][2], listed
    def left() -> Any:  # Ray notices a node's end within seconds; `status` shows it as left, not missing
        st = f.step("status")
        return st if not next((h["alive"] for h in st["hosts"] if h["host"] == "host1"), True) else None

    st = until("host1 shown as left", left)
    assert _host(st, "host0")["alive"] is True
    assert st["lost"] == [b] and _host(st, "host0")["used_vcpus"] == 1

    assert f.step("kill", b) is True  # forgets the lost sandbox's record
    assert f.step("kill", a) is True
    assert f.step("list") == []
