"""Fleet mode on a real Ray cluster (head + 2 simulated hosts, each in its own network namespace, joined
with `ray start` through sealbox.fleet.join): placement by Ray honours capacity and labels, commands reach
the sandbox's own host, status lists hosts and sandboxes, and removal leaves nothing on any host.

Sandboxes here are the STAND-IN host's (fleet_standin.py: processes, no guests); what is real is Ray,
the placement groups, the KV records, the host agents and the routing of calls and command pipes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fleet_integ import HERE, Fleet, netns_inode, procs_in

pytestmark = pytest.mark.integration


def test_place_exec_status_remove(ray_fleet: Fleet) -> None:
    f = ray_fleet
    proc = f.in_head([sys.executable, str(HERE / "fleet_driver.py"), f.address, "scenario", f.tag], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [f"{f.tag}-b", *(f"{f.tag}-{i}" for i in range(3))]

    # capacity: 2 hosts x 2 vCPUs hold four 1-vCPU sandboxes, and not a fifth
    assert sorted(out["placed"]) == sorted(names)
    assert out["exhausted"] and "full" in out["exhausted"], out["exhausted"]
    # labels: zone=b is host1's
    assert out["placed"][f"{f.tag}-b"] == "host1"
    # both hosts used, two each (a host has room for two only)
    assert sorted(out["placed"].values()) == ["host0", "host0", "host1", "host1"]
    # each command ran in the network namespace of the host the fleet says owns the sandbox
    for name, host in out["placed"].items():
        assert out["ran_at"][name].split() == [f"{f.hosts[host]['ip']}/24"], (name, host, out["ran_at"][name])
    assert out["exec"] == {"exit": 3, "stdout": "through the agent\n", "stderr": "err\n"}
    assert out["listed"] == [[n, "running"] for n in sorted(names)]

    hosts = {h["host"]: h for h in out["status"]["hosts"]}
    assert set(hosts) == {"host0", "host1"}
    for name, h in hosts.items():
        assert h["alive"] and h["agent"]["state"] == "up"
        assert (h["vcpus"], h["used_vcpus"], h["memory_mib"], h["used_memory_mib"]) == (2, 2, 1024, 512)
        assert h["sandboxes"] == sorted(n for n, at in out["placed"].items() if at == name)
        assert h["labels"]["sealbox.zone"] == f.hosts[name]["zone"]
    # `sealbox fleet status`: a line per host with its capacity, what is used and how many sandboxes
    assert out["cli_status"]["code"] == 0, out["cli_status"]
    lines = out["cli_status"]["stdout"].splitlines()
    assert lines[0].split()[:5] == ["HOST", "STATE", "ADDRESS", "VCPUS", "USED"]
    for name in ("host0", "host1"):
        assert [ln.split()[:8] for ln in lines if ln.startswith(name + " ")] == [
            [name, "up", f.hosts[name]["ip"], "2", "2", "1024M", "512M", "2"]]

    # removal: through the owning agents, reservations released, nothing left on the hosts
    assert out["killed"] == [True] * 4
    assert out["listed_after"] == []
    assert out["pgs_after"] == []
    used_after = [(h["used_vcpus"], h["used_memory_mib"], h["sandboxes"]) for h in out["status_after"]["hosts"]]
    assert used_after == [(0, 0, [])] * 2, used_after
    for h in f.hosts.values():
        assert list((Path(h["state"]) / "standin").glob("*.json")) == []
    host_ns = {netns_inode(h["ns"]) for h in f.hosts.values()} - {None}
    sleepers = {pid: cmd for pid, cmd in procs_in(host_ns).items() if cmd.startswith("sleep ")}  # type: ignore[arg-type]
    assert sleepers == {}, sleepers
