"""A fleet caller for the fleet integration test: run inside the head node's network namespace (a Ray
driver must share a node with a raylet), it does one scenario through the public API (sealbox.Fleet,
sealbox.Sandbox) and prints what it saw as one JSON object on stdout. Not product code."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from ray.util import placement_group_table

from sealbox.errors import ResourceExhausted
from sealbox.fleet.client import Fleet
from sealbox.fleet.status import table
from sealbox.sdk import Sandbox

IMAGE = "/nonexistent/standin-image"  # the stand-in host boots nothing


def where(sb: Sandbox) -> str:
    """The IPv4 addresses of the namespace a command in the sandbox runs in (its host's)."""
    return sb.commands.run(["sh", "-c", "ip -o -4 addr show scope global | awk '{print $4}'"], timeout=60).check().stdout


def main(address: str, prefix: str) -> dict[str, Any]:
    fleet = Fleet(address)
    out: dict[str, Any] = {"placed": {}, "ran_at": {}, "exhausted": None}
    boxes = []
    # a label constraint first: zone=b exists on one host only
    sb = Sandbox.create(IMAGE, name=f"{prefix}-b", cpus=1, memory_mib=256, host=fleet.requiring(zone="b"), labels={"run": prefix})
    boxes.append(sb)
    for i in range(3):  # fills the fleet: 2 hosts x 2 vCPUs
        boxes.append(Sandbox.create(IMAGE, name=f"{prefix}-{i}", cpus=1, memory_mib=256, host=fleet, labels={"run": prefix}))
    try:
        boxes.append(Sandbox.create(IMAGE, name=f"{prefix}-over", cpus=1, memory_mib=256, host=fleet, labels={"run": prefix}))
    except ResourceExhausted as e:
        out["exhausted"] = e.message
    for b in boxes:
        out["placed"][b.name] = fleet.host_of(b.name)
        out["ran_at"][b.name] = where(b)
    res = boxes[1].commands.run("cat; echo err >&2; exit 3", stdin=b"through the agent\n", timeout=60)
    out["exec"] = {"exit": res.exit_code, "stdout": res.stdout, "stderr": res.stderr}
    out["listed"] = sorted((r.name, r.status) for r in Sandbox.list(host=fleet, labels={"run": prefix}))
    status = fleet.status()
    cli = subprocess.run([sys.executable, "-m", "sealbox", "fleet", "status", "--address", address], capture_output=True, text=True,
                         timeout=120)
    out["cli_status"] = {"code": cli.returncode, "stdout": cli.stdout, "stderr": cli.stderr[-2000:]}
    out["status"] = status
    out["table"] = table(status)
    out["killed"] = [b.kill() for b in boxes]
    out["listed_after"] = [r.name for r in Sandbox.list(host=fleet, all=True)]
    # Ray frees a removed reservation asynchronously (resource reports): poll, bounded
    deadline = time.monotonic() + 15
    while True:
        out["status_after"] = fleet.status()
        if all(h["used_vcpus"] == 0 for h in out["status_after"]["hosts"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    out["pgs_after"] = sorted(pg["name"] for pg in placement_group_table().values() if pg["state"] != "REMOVED")
    return out


def step(address: str, what: str, *args: str) -> Any:
    """One call through the public API, for tests that act on the fleet between calls (each run is a new
    Ray job: a sandbox outlives the job that made it)."""
    fleet = Fleet(address)
    if what == "create":  # NAME ZONE
        sb = Sandbox.create(IMAGE, name=args[0], cpus=1, memory_mib=256, host=fleet.requiring(zone=args[1]))
        return fleet.host_of(sb.name)
    if what == "boot":  # IMAGE NAME: a real guest on whichever host Ray picks; a command in it; removed
        t0 = time.monotonic()
        with Sandbox.create(args[0], name=args[1], cpus=1, memory_mib=1024, timeout_s=600, host=fleet) as sb:
            booted_s = time.monotonic() - t0
            res = sb.commands.run(["uname", "-r"], timeout=120)
            return {"host": fleet.host_of(sb.name), "booted_s": booted_s, "exit": res.exit_code, "stdout": res.stdout,
                    "status": sb.status, "listed": [r.name for r in Sandbox.list(host=fleet)]}
    if what == "list":
        return sorted((r.name, r.status, r.reason) for r in Sandbox.list(host=fleet, all=True))
    if what == "status":
        return fleet.status()
    if what == "where":
        return where(Sandbox(args[0], fleet))
    if what == "kill":
        return Sandbox(args[0], fleet).kill()
    raise SystemExit(f"unknown step {what}")


if __name__ == "__main__":
    if sys.argv[2] == "scenario":
        print(json.dumps(main(sys.argv[1], sys.argv[3])))
    else:
        print(json.dumps(step(sys.argv[1], *sys.argv[2:])))
