"""A whole simulated host killed with SIGKILL (every process of its network namespace, by pid: its membership
process, raylet, workers, agent and its stand-in sandboxes, as a power cut would do), on a real Ray cluster
(head + 2 simulated hosts, stand-in host runtime as in test_fleet_cluster.py):

- its sandboxes are reported `lost` by the Fleet API and by `sealbox fleet status` (not silently missing);
- the rest of the fleet keeps working: a new sandbox is placed on the surviving host at once;
- when the host joins again (same state dir), its agent's start-up gc leaves nothing of the dead sandboxes on
  it, the lost records stay listed (with the reason) until `rm` forgets them, and no reservation is left.

The head's health checks run every second (Ray's default: 3 s) so that Ray declares the dead node within
seconds; a live node is still declared dead only after 5 missed checks in a row."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fleet_integ
import pytest
from fleet_integ import HERE, Fleet, kill_host, last_json, netns_inode, procs_in, rejoin, until

pytestmark = pytest.mark.integration
HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}


@pytest.fixture(scope="module")
def crash_fleet() -> Iterator[Fleet]:
    yield from fleet_integ.ray_fleet(head_env=HEALTH, capacity=(3, 1536))


def caller(f: Fleet, *args: str, timeout: float = 120) -> Any:
    proc = f.in_head([sys.executable, str(HERE / "fleet_caller.py"), f.address, *args], timeout=timeout)
    assert proc.returncode == 0, f"caller {args}: {proc.stderr[-3000:]}"
    return last_json(proc.stdout)



def test_a_whole_host_killed(crash_fleet: Fleet) -> None:
    f = crash_fleet
    a, b, c = (f"{f.tag}-{x}" for x in ("a", "b", "c"))
    assert f.step("create", a, "a") == "host0"
    assert f.step("create", b, "b") == "host1"  # host1 keeps a free vCPU: Ray could place c there if it were up
    dead = f.hosts["host1"]
    standin = Path(dead["state"]) / "standin"
    assert sorted(p.name for p in standin.glob("*.json")) == [f"{b}.json"]

    killed = kill_host(f, "host1")
    kinds = " ".join(killed.values())
    assert "raylet" in kinds and "sleep 600" in kinds and "fleet_join.py" in kinds, killed
    t0 = time.monotonic()

    # the rest of the fleet works: a new sandbox goes to the surviving host, whether or not Ray noticed yet
    assert caller(f, "create", c) == "host0"

    def lost() -> Any:
        rows = f.step("list")
        return rows if [r[:2] for r in rows] == [[a, "running"], [b, "lost"], [c, "running"]] else None

    rows = until("the dead host's sandboxes listed as lost", lost)
    print(f"lost after {time.monotonic() - t0:.1f}s")
    assert "host1" in rows[1][2], rows
    st = f.step("status")
    assert st["lost"] == [b]
    # a host that left and joined again (another test of this module may have done that) also has a dead entry
    assert [h["alive"] for h in st["hosts"] if h["host"] == "host1"] == [False] * sum(h["host"] == "host1" for h in st["hosts"])
    hosts = {h["host"]: h for h in st["hosts"] if h["alive"]}
    assert "host1" not in hosts and "host0" in hosts, st["hosts"]
    assert (hosts["host0"]["used_vcpus"], sorted(hosts["host0"]["sandboxes"])) == (2, sorted([a, c]))
    cli = f.in_head([sys.executable, "-m", "sealbox", "fleet", "status", "--address", f.address], timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    lines = cli.stdout.splitlines()
    host1 = [ln.split()[:2] for ln in lines if ln.startswith("host1 ")]  # (a Ray node per time it joined)
    assert host1 and all(x == ["host1", "left"] for x in host1), cli.stdout
    assert lines[-1] == f"lost (their host left the fleet): {b}", cli.stdout

    # the host comes back (a new Ray node, the same state dir): its agent's gc removes what died with it
    rejoin(f, "host1")
    assert list(standin.glob("*")) == [], sorted(p.name for p in standin.glob("*"))
    inode = netns_inode(dead["ns"])
    assert inode is not None
    assert {p: cmd for p, cmd in procs_in({inode}).items() if cmd.startswith("sleep ")} == {}
    rows = f.step("list")  # still reported (the user learns they are gone), until rm forgets them
    assert [r[:2] for r in rows] == [[a, "running"], [b, "lost"], [c, "running"]], rows
    assert caller(f, "create", f"{f.tag}-d") in ("host0", "host1")  # room again: 3 vCPUs free in the fleet

    for name in (a, b, c, f"{f.tag}-d"):
        assert f.step("kill", name) is True
    end = caller(f, "state")
    assert end == {"records": {}, "pgs": []}, end
    for h in f.hosts.values():
        assert list((Path(h["state"]) / "standin").glob("*")) == []


def test_a_host_whose_ray_died_comes_back(crash_fleet: Fleet) -> None:
    """Only Ray's processes of a host die (SIGKILL: membership, raylet, workers, agent); its sandboxes live on.
    While it is away they are lost; two of them are removed (`rm`), and the name of one reused by a new sandbox
    on the other host. When the host joins again its agent re-adopts the one still known as its own, and removes
    (instead of adopting) the removed ones: the new sandbox of the reused name stays untouched."""
    f = crash_fleet
    a, b, c = f"{f.tag}-ra", f"{f.tag}-rb", f"{f.tag}-rc"
    assert f.step("create", a, "b") == "host1"
    assert f.step("create", b, "b") == "host1"
    assert f.step("create", c, "b") == "host1"
    dead = f.hosts["host1"]
    inode = netns_inode(dead["ns"])
    assert inode is not None
    sandboxes = {p for p, cmd in procs_in({inode}).items() if cmd.startswith("sleep ")}
    ray_of_host = {p for p in procs_in({inode}) if p not in sandboxes}
    for pid in ray_of_host:  # by pid, the host's Ray only (its sandboxes are not Ray's)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        f.joins["host1"].wait(10)

    def lost() -> Any:  # once Ray declared the node dead (before, a call to its agent fails: "did not answer")
        st = f.step("status")
        return st["lost"] == [a, b, c] and not any(h["alive"] for h in st["hosts"] if h["host"] == "host1")

    until("all three lost, host1 left", lost)
    assert f.step("kill", b) is True  # removed while its host is away: the name is free
    assert f.step("kill", c) is True
    assert f.step("create", b, "a") == "host0"  # a new sandbox of that name, elsewhere
    assert [r[:2] for r in f.step("list")] == [[a, "lost"], [b, "running"]]

    rejoin(f, "host1")
    rows = f.step("list")
    assert [r[:2] for r in rows] == [[a, "running"], [b, "running"]], rows
    assert f.step("where", a).split() == [f"{dead['ip']}/24"]  # re-adopted: reached on host1 again
    assert f.step("where", b).split() == [f"{f.hosts['host0']['ip']}/24"]  # the new b, untouched
    hello = next(h["agent"] for h in f.step("status")["hosts"] if h["host"] == "host1" and h["alive"])
    assert (hello["adopted"], sorted(hello["undone"])) == ([a], [b, c]), hello
    standin = Path(dead["state"]) / "standin"
    assert sorted(p.name for p in standin.glob("*.json")) == [f"{a}.json"]
    assert len([c for c in procs_in({inode}).values() if c.startswith("sleep ")]) == 1
    for name in (a, b):
        assert f.step("kill", name) is True
    assert caller(f, "state") == {"records": {}, "pgs": []}


def test_a_host_leaving_is_gone_at_once(crash_fleet: Fleet) -> None:
    """A host that leaves (SIGTERM to its membership process) stops its Ray node gracefully: the node says it
    goes, so Ray shows it dead as soon as the process ended, not after its health checks fail (a node that was
    killed instead: `ray start` waits for a drain that a node holding the agent never finishes)."""
    f = crash_fleet
    f.joins["host0"].send_signal(signal.SIGTERM)
    assert f.joins["host0"].wait(60) == 0
    st = f.step("status")
    assert [h["alive"] for h in st["hosts"] if h["host"] == "host0"] == [False], st["hosts"]
    log = (f.tmp / "ray-host0" / "ray-start.log").read_text()
    assert "did not finish draining" not in log, log[-2000:]
    rejoin(f, "host0")
