"""Callers of a fleet, on a real Ray cluster (head + 2 simulated hosts, stand-in host runtime as in
test_fleet_cluster.py): files and pools through the fleet, and callers that die (SIGKILL, a separate driver
process) while a create is in flight or while their pool holds sandboxes: afterwards nothing is left — no
record, no placement group, no sandbox on any host (the agents' sweep: records.py, agent.py)."""

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

import pytest
from fleet_integ import HERE, Fleet, in_ns, last_json, netns_inode, procs_in, until

pytestmark = pytest.mark.integration


def caller(f: Fleet, *args: str, timeout: float = 120) -> Any:
    proc = f.in_head([sys.executable, str(HERE / "fleet_caller.py"), f.address, *args], timeout=timeout)
    assert proc.returncode == 0, f"caller {args}: {proc.stderr[-3000:]}"
    return last_json(proc.stdout)


@contextlib.contextmanager
def running_caller(f: Fleet, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A caller process the test kills (nsenter execs it: its pid is the driver's)."""
    argv = [*in_ns(f.head_ns), sys.executable, str(HERE / "fleet_caller.py"), f.address, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=open(f.tmp / f"caller-{args[1]}.log", "w"),  # noqa: SIM115
                            text=True, env=f.env(SEALBOX_STATE_DIR=str(f.tmp / "caller")))
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(30)


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 90) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        assert line or proc.poll() is None, f"the caller ended before {prefix!r}"
    raise AssertionError(f"no {prefix!r} from the caller within {timeout}s")



def mine(f: Fleet, prefix: str) -> dict[str, Any]:
    st = caller(f, "state")
    return {"records": {n: r for n, r in st["records"].items() if n.startswith(prefix)},
            "pgs": [p for p in st["pgs"] if p.startswith("sealbox:" + prefix)]}


def on_hosts(f: Fleet, prefix: str) -> dict[str, list[str]]:
    """What the stand-in runtime has of these sandboxes on each host: records, and their processes."""
    inodes = {netns_inode(h["ns"]) for h in f.hosts.values()} - {None}
    sleepers = [cmd for cmd in procs_in(inodes).values() if cmd.startswith("sleep ")]  # type: ignore[arg-type]
    found = {name: sorted(p.name for p in (Path(h["state"]) / "standin").glob(prefix + "*")) for name, h in f.hosts.items()}
    return {k: v for k, v in found.items() if v} | ({"sleepers": sleepers} if len(sleepers) else {})


def test_caller_killed_while_its_sandbox_is_created(ray_fleet: Fleet) -> None:
    f = ray_fleet
    name = f"{f.tag}-slow"
    with running_caller(f, "create-slow", name, "12") as proc:
        wait_line(proc, "progress placed on")  # the reservation is made; the host's create runs for 12 s
        rec = until("the record in state creating", lambda: mine(f, name)["records"].get(name, {}).get("state") == "creating")
        assert rec
        assert any(f"{name}.json" in v for v in on_hosts(f, name).values())  # half made on its host
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    t0 = time.monotonic()
    until("nothing left of the dead caller's sandbox", lambda: mine(f, name) == {"records": {}, "pgs": []}, timeout=120)
    assert on_hosts(f, name) == {}
    print(f"cleaned {time.monotonic() - t0:.1f}s after the caller died")


def test_caller_killed_while_waiting_for_room(ray_fleet: Fleet) -> None:
    f = ray_fleet
    name = f"{f.tag}-wait"
    with running_caller(f, "create-wait", name, "3") as proc:  # 3 vCPUs: no host has them; the caller waits
        wait_line(proc, "connected")
        until("a pending reservation", lambda: mine(f, name) == {"records": {name: {"state": "placing", "node": None, "host": None,
                                                                                   "pg": "sealbox:" + name, "held": False}},
                                                                 "pgs": ["sealbox:" + name]})
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    until("no record, no reservation", lambda: mine(f, name) == {"records": {}, "pgs": []}, timeout=60)


def test_pool_owner_killed(ray_fleet: Fleet) -> None:
    f = ray_fleet
    name = f"{f.tag}-hp"
    with running_caller(f, "pool-hold", name) as proc:
        assert wait_line(proc, "ready") == "ready 2"
        held = mine(f, name)
        assert len(held["records"]) == 2 and all(r["state"] == "running" and r["held"] for r in held["records"].values()), held
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    until("the dead owner's members removed", lambda: mine(f, name) == {"records": {}, "pgs": []}, timeout=60)
    assert on_hosts(f, name) == {}


def test_files_reach_the_owning_host(ray_fleet: Fleet) -> None:
    f = ray_fleet
    name = f"{f.tag}-files"
    out = caller(f, "files", name, "b", timeout=180)
    home = Path(f.hosts["host1"]["state"]) / "standin" / f"{name}.d"  # zone b: host1; commands run in the sandbox's dir
    assert (out["host"], out["cwd"]) == ("host1", str(home))
    assert out["wrote"] == 22 and out["read"] == "hello from the caller\n"
    assert out["wrote_big"] == (3 << 20) + 3 and out["big_same"] is True
    assert out["listed"] == [["big.bin", False], ["notes", True]]
    assert (out["exists"], out["exists_after"]) == ([True, False], False)
    assert on_hosts(f, name) == {}


def test_pool_over_the_fleet(ray_fleet: Fleet) -> None:
    f = ray_fleet
    name = f"{f.tag}-pool"
    out = caller(f, "pool", name, timeout=180)
    assert out["ready"] == 2 and out["ran"] == ["pooled\n"] * 2, out
    assert set(out["hosts"]) <= {"host0", "host1"}
    assert out["listed_closed"] == []  # closing removed every member, the refills too
    assert mine(f, name) == {"records": {}, "pgs": []}
    assert on_hosts(f, name) == {}
    print(f"pool acquire: {', '.join(f'{s * 1000:.0f} ms' for s in out['acquire_s'])}")


def test_agent_killed_while_it_creates(ray_fleet: Fleet) -> None:
    """The host agent dies (SIGKILL) with a create half done: the caller gets an error, and the restarted
    agent undoes the half-made sandbox instead of adopting it (the caller was told it failed)."""
    f = ray_fleet
    name = f"{f.tag}-ak"
    with running_caller(f, "create-slow", name, "12") as proc:
        wait_line(proc, "progress placed on")
        host = until("the record in state creating", lambda: (r := mine(f, name)["records"].get(name, {})).get("state") == "creating"
                     and r["host"])
        agent = next(h["agent"] for h in f.step("status")["hosts"] if h["host"] == host)
        assert any(f"{name}.json" in v for v in on_hosts(f, name).values())  # half made
        os.kill(agent["pid"], signal.SIGKILL)
        assert proc.wait(120) != 0
    err = (f.tmp / f"caller-{name}.log").read_text()
    assert "the host agent failed during the create" in err, err[-2000:]

    def restarted() -> Any:
        now = next(h["agent"] for h in f.step("status")["hosts"] if h["host"] == host)
        return now if now.get("pid") not in (None, agent["pid"]) and now["state"] == "up" else None

    new = until("the agent restarted", restarted)
    assert name not in new["adopted"] and new["undone"] == [name], new
    until("nothing left of the half-made sandbox", lambda: mine(f, name) == {"records": {}, "pgs": []} and on_hosts(f, name) == {},
          timeout=30)
