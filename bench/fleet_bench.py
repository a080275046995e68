#!/usr/bin/env python3
"""Bench: what fleet mode adds on top of a local create, and Pool.acquire() on a fleet (root, Ray, stand-in runtime).

The fleet is the one of tests/integration/fleet: a Ray head and --hosts simulated hosts on this machine, each its own
network namespace with a `ray start` worker node and a host agent, joined through sealbox.fleet.join. Their sandboxes
are the STAND-IN runtime's (tests/integration/fleet/fleet_standin.py: a sandbox is a `sleep` process, no guest boots):
what is measured is the fleet's own work — claiming the name in Ray's key-value store, a placement-group bundle
reserved and placed by Ray, the call to the host's agent, the record — not a boot.

  create  --count sandboxes created one after the other through sealbox.Fleet (1 vCPU each; all kept until the end,
          so Ray spreads them over the hosts), each round also creating and removing one sandbox through the same
          SDK call on the stand-in host in this process (the baseline, same run, same load). Per sandbox: the
          fleet's overhead = fleet create - local create (medians; target <= 100 ms), and the agent's own timing
          of its host's create (local_s) and of the placement (placed_s). The hosts share this machine's cores:
          this is overhead per sandbox, not a speed-up. Then every sandbox is removed (timed).
  pool    Pool(size=--pool-size) warm, over the fleet and over the local stand-in host: acquire() latency of each
          ready member (target <= 50 ms on the fleet), in the same run.

Usage: sudo .venv/bin/python bench/fleet_bench.py [--count N] [--hosts N] [--pool-size N]
Everything (namespaces, Ray nodes by pid, state dirs under $TMPDIR) is removed at the end; the run fails if
anything was left. Run it niced on a shared machine; the load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLEET_TESTS = Path(__file__).resolve().parent.parent / "tests" / "integration" / "fleet"
IMAGE = "/nonexistent/standin-image"  # the stand-in boots nothing


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(0.9 * (len(xs) - 1))] if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def ms(x: float, digits: int = 1) -> str:
    return f"{x * 1000:7.{digits}f}"


# ---- in the head's namespace: a Ray driver ----------------------------------------------------------------------
def creates(fleet: Any, local: Any, count: int) -> None:
    from sealbox.sdk import Sandbox

    fl, lo, agent_local, placed, where, boxes = [], [], [], [], collections.Counter[str](), []
    for i in range(count):
        t, sb = timed(lambda i=i: Sandbox.create(IMAGE, name=f"fbench-l{i}", cpus=1, memory_mib=256, host=local))
        lo.append(t)
        sb.kill()
        t, sb = timed(lambda i=i: Sandbox.create(IMAGE, name=f"fbench-{i}", cpus=1, memory_mib=256, host=fleet))
        fl.append(t)
        agent_local.append(float(sb.created["local_s"]))
        placed.append(float(sb.created["placed_s"]))
        where[str(sb.created["host"])] += 1
        boxes.append(sb)
    over = [f - x for f, x in zip(fl, lo, strict=True)]
    print(f"create, {count} sandboxes one after the other (1 vCPU each, all kept; stand-in runtime), per sandbox in ms:")
    print(f"  {'':<34} {'median':>7} {'p90':>7} {'max':>7}")
    for label, xs in (("local create (SDK, stand-in host)", lo), ("fleet create (SDK, Fleet)", fl),
                      ("  of which: placement", placed), ("  of which: the host's create", agent_local),
                      ("fleet - local, per round", over)):
        print(f"  {label:<34} {ms(median(xs))} {ms(p90(xs))} {ms(max(xs))}")
    print(f"  fleet overhead beyond the local create: median {median(fl) * 1000 - median(lo) * 1000:.1f} ms per sandbox "
          f"(target <= 100 ms); fleet/local ratio {median(fl) / median(lo):.1f}; placed on {dict(sorted(where.items()))}")
    rm = [timed(sb.kill)[0] for sb in boxes]
    print(f"  removal through the fleet: median {median(rm) * 1000:.1f} ms, p90 {p90(rm) * 1000:.1f} ms")


def pool_latency(host: Any, size: int, name: str) -> tuple[list[float], float]:
    from sealbox.sdk import Pool

    with Pool(IMAGE, size=size, name=name, host=host, cpus=1, memory_mib=256, parallel=4) as p:
        t0 = time.monotonic()
        while p.ready < size and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        if p.ready < size:
            raise SystemExit(f"pool {name} did not warm up: {p.ready}/{size} ready ({p.last_error})")
        warm_s = time.monotonic() - t0
        lat, got = [], []
        for _ in range(size):
            t, sb = timed(p.acquire)
            lat.append(t)
            got.append(sb)
        for sb in got:
            p.release(sb)
    return lat, warm_s


def pools(fleet: Any, local: Any, size: int) -> None:
    fl, fl_warm = pool_latency(fleet, size, "fbench-pf")
    lo, lo_warm = pool_latency(local, size, "fbench-pl")
    print(f"Pool(size={size}) warm, acquire() of each ready member in ms:")
    print(f"  {'':<34} {'median':>7} {'max':>7}   warm-up")
    print(f"  {'local stand-in host':<34} {ms(median(lo), 2)} {ms(max(lo), 2)}   {lo_warm:.1f} s")
    print(f"  {'fleet':<34} {ms(median(fl), 2)} {ms(max(fl), 2)}   {fl_warm:.1f} s   (target <= 50 ms)")
    print(f"  fleet/local ratio (medians) {median(fl) / median(lo):.1f}")


def driver(address: str, count: int, pool_size: int) -> int:
    from fleet_standin import StandinHost

    from sealbox.fleet.client import Fleet

    fleet, local = Fleet(address), StandinHost()
    creates(fleet, local, count)
    pools(fleet, local, pool_size)
    return 0


# ---- as root: the fleet --------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--pool-size", type=int, default=8)
    ap.add_argument("--driver", metavar="ADDRESS", help=argparse.SUPPRESS)  # internal: the measuring process
    a = ap.parse_args()
    sys.path.insert(0, str(FLEET_TESTS))
    if a.driver:
        return driver(a.driver, a.count, a.pool_size)
    import fleet_integ

    why = fleet_integ.missing()
    if why:
        raise SystemExit(f"fleet bench: {why}")
    per_host = -(-(a.count + a.pool_size + 2) // a.hosts)  # room for every sandbox, whichever host Ray picks
    hosts = tuple((f"host{i}", "z") for i in range(a.hosts))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    t0 = time.monotonic()
    gen = fleet_integ.ray_fleet(hosts=hosts, capacity=(per_host, per_host * 256))
    f = next(gen)
    print(f"fleet up in {time.monotonic() - t0:.1f} s: a head and {a.hosts} simulated hosts, {per_host} vCPUs each")
    try:
        argv = [*fleet_integ.in_ns(f.head_ns), sys.executable, str(Path(__file__).resolve()), "--driver", f.address,
                "--count", str(a.count), "--pool-size", str(a.pool_size)]
        code = subprocess.run(argv, env=f.env(SEALBOX_STATE_DIR=str(f.tmp / "caller")), timeout=3600).returncode
    finally:
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        gen.close()  # takes the fleet down; raises if anything was left in its namespaces
    return code


if __name__ == "__main__":
    sys.exit(main())
