"""Fleet callers for the failure, files and pool tests (test_fleet_crash.py, test_fleet_caller.py): run in the
head node's network namespace, one step through the public API (sealbox.Fleet, Sandbox, Pool), printing what
it saw as one JSON line on stdout; the steps that a test kills print progress lines first. Not product code."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from sealbox.fleet.client import Fleet
from sealbox.sdk import Pool, Sandbox

IMAGE = "/nonexistent/standin-image"  # the stand-in host boots nothing


def say(what: str) -> None:
    print(what, flush=True)


def state(fleet: Fleet) -> dict[str, Any]:
    """The fleet's records and the placement groups not removed: what a dead caller must not leave."""
    from ray.util import placement_group_table

    from sealbox.fleet import records

    recs = {n: {"state": r.state, "node": r.node, "host": r.host, "pg": r.pg, "held": r.held}
            for n, r in records.all_records().items()}
    pgs = sorted(pg["name"] for pg in placement_group_table().values() if pg["state"] != "REMOVED")
    return {"records": recs, "pgs": pgs}


def files(fleet: Fleet, name: str, zone: str) -> dict[str, Any]:
    """Files through the owning host's agent: small, large (streamed in chunks both ways), list, exists, remove."""
    big = os.urandom(3 << 20) + b"end"
    with Sandbox.create(IMAGE, name=name, cpus=1, memory_mib=256, host=fleet.requiring(zone=zone)) as sb:
        out: dict[str, Any] = {"host": fleet.host_of(name)}
        out["wrote"] = sb.files.write("notes/hello.txt", "hello from the caller\n")
        out["read"] = sb.files.read_text("notes/hello.txt")
        out["wrote_big"] = sb.files.write("big.bin", big)
        out["big_same"] = sb.files.read("big.bin", max_bytes=8 << 20) == big
        out["listed"] = sorted((e.name, e.is_dir) for e in sb.files.list("."))
        out["exists"] = [sb.files.exists("notes/hello.txt"), sb.files.exists("nothing-here")]
        sb.files.remove("notes", recursive=True)
        out["exists_after"] = sb.files.exists("notes/hello.txt")
        out["cwd"] = sb.commands.run("pwd", timeout=60).check().stdout.strip()
    return out


def pool(fleet: Fleet, name: str) -> dict[str, Any]:
    """A warm pool over the fleet: acquire (timed), a command, release; closing removes every member."""
    out: dict[str, Any] = {"acquire_s": []}
    with Pool(IMAGE, size=2, name=name, host=fleet, cpus=1, memory_mib=256) as p:
        deadline = time.monotonic() + 60
        while p.ready < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        out["ready"] = p.ready
        for _ in range(2):
            t0 = time.monotonic()
            sb = p.acquire(timeout=60)
            out["acquire_s"].append(time.monotonic() - t0)
            out.setdefault("hosts", []).append(fleet.host_of(sb.name))
            out.setdefault("ran", []).append(sb.commands.run("echo pooled", timeout=60).check().stdout)
            p.release(sb)
        out["listed_open"] = sorted(r.name for r in Sandbox.list(host=fleet, labels={"sealbox.pool": name}))
    out["listed_closed"] = sorted(r.name for r in Sandbox.list(host=fleet, all=True, labels={"sealbox.pool": name}))
    return out


def main(address: str, what: str, *args: str) -> Any:
    if what == "create-slow":  # NAME SECONDS: killed by the test while the host's create runs
        fleet = Fleet(address)
        say("connected")
        Sandbox.create(IMAGE, name=args[0], cpus=1, memory_mib=256, host=fleet, labels={"standin.create_s": args[1]},
                       on_progress=lambda line: say(f"progress {line}"))
        return "created"
    if what == "create-wait":  # NAME CPUS: a reservation no host can hold now, waited for; killed by the test
        fleet = Fleet(address, wait=300)
        say("connected")
        Sandbox.create(IMAGE, name=args[0], cpus=int(args[1]), memory_mib=256, host=fleet)
        return "created"
    if what == "pool-hold":  # NAME: a warm pool whose owner the test kills
        fleet = Fleet(address)
        p = Pool(IMAGE, size=2, name=args[0], host=fleet, cpus=1, memory_mib=256)
        deadline = time.monotonic() + 60
        while p.ready < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        say(f"ready {p.ready}")
        time.sleep(600)
        return "not killed"
    fleet = Fleet(address)
    if what == "create":  # NAME: wherever Ray places it
        return fleet.host_of(Sandbox.create(IMAGE, name=args[0], cpus=1, memory_mib=256, host=fleet).name)
    if what == "state":
        return state(fleet)
    if what == "files":
        return files(fleet, args[0], args[1])
    if what == "pool":
        return pool(fleet, args[0])
    raise SystemExit(f"unknown step {what}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], *sys.argv[3:])))
