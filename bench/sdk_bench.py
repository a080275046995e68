#!/usr/bin/env python3
"""Bench: the SDK against the CLI doing the same, in the same run (root, real QEMU/TCG), and Pool.acquire().

  overhead  per round, alternating which goes first: SDK `Sandbox.create` + `commands.run(["true"])` + `kill()`
            in this process, vs the CLI `sealbox run` + `sealbox exec NAME -- true` + `sealbox rm -f NAME` as
            subprocesses. Prints each phase and the ratio SDK/CLI of the whole (the guest boot dominates both).
            Then, on one booted sandbox, `true` repeated (--repeat): SDK warm (its master connection up) vs
            `sealbox exec` (a process and a new SSH connection each time).
  pool      a Pool of --pool-size kept warm; the latency of acquire() for each of its ready members (target
            <= 50 ms), and of release() (a sandbox removal).

Usage: python bench/sdk_bench.py IMAGE_DIR [overhead|pool|all] [--rounds N] [--repeat N] [--pool-size N]
Private state dir, names sdkbench-*; everything is removed at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealbox.sdk import Pool, Sandbox

PREFIX = "sdkbench"
CLI = [sys.executable, "-m", "sealbox"]


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def cli(env: dict[str, str], *args: str) -> str:
    p = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"sealbox {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()[-400:]}")
    return p.stdout


def sdk_round(image: Path, state: Path, name: str) -> dict[str, float]:
    t_create, sb = timed(lambda: Sandbox.create(image, name=name, accel="tcg", timeout_s=600, state_dir=state))
    try:
        t_run, r = timed(lambda: sb.commands.run(["true"]))
        assert r.exit_code == 0
    finally:
        t_kill, _ = timed(sb.kill)
    return {"create": t_create, "run true": t_run, "kill": t_kill, "boot": float(sb.created["ready_s"])}


def cli_round(image: Path, env: dict[str, str], name: str) -> dict[str, float]:
    t_create, out = timed(lambda: cli(env, "run", str(image), "--name", name, "--accel", "tcg", "--timeout", "600", "--json"))
    try:
        t_run, _ = timed(lambda: cli(env, "exec", name, "--", "true"))
    finally:
        t_kill, _ = timed(lambda: cli(env, "rm", "--force", name))
    return {"create": t_create, "run true": t_run, "kill": t_kill, "boot": float(json.loads(out)["ready_s"])}


def overhead(image: Path, state: Path, env: dict[str, str], rounds: int, repeat: int) -> None:
    sdk: list[dict[str, float]] = []
    cmd: list[dict[str, float]] = []
    for i in range(rounds):
        order = [("sdk", sdk), ("cli", cmd)] if i % 2 == 0 else [("cli", cmd), ("sdk", sdk)]
        for kind, out in order:
            name = f"{PREFIX}-{kind}{i}-{secrets.token_hex(2)}"
            out.append(sdk_round(image, state, name) if kind == "sdk" else cli_round(image, env, name))
    print(f"create + run true + kill, median of {rounds} rounds (alternating order):")
    print(f"  {'phase':<10} {'SDK s':>8} {'CLI s':>8} {'SDK/CLI':>8}")
    for phase in ("create", "run true", "kill"):
        a, b = median([r[phase] for r in sdk]), median([r[phase] for r in cmd])
        print(f"  {phase:<10} {a:8.3f} {b:8.3f} {a / b:8.2f}")
    total = lambda r: r["create"] + r["run true"] + r["kill"]  # noqa: E731
    a, b = median([total(r) for r in sdk]), median([total(r) for r in cmd])
    print(f"  {'total':<10} {a:8.3f} {b:8.3f} {a / b:8.2f}")
    # the guest's boot (VMM start to ready, as each side's own summary reports it) varies most under TCG: without it
    a, b = median([total(r) - r["boot"] for r in sdk]), median([total(r) - r["boot"] for r in cmd])
    print(f"  {'w/o boot':<10} {a:8.3f} {b:8.3f} {a / b:8.2f}   (total minus the guest's boot to ready)")
    name = f"{PREFIX}-warm-{secrets.token_hex(2)}"
    sb = Sandbox.create(image, name=name, accel="tcg", timeout_s=600, state_dir=state)
    try:
        sb.commands.run(["true"])  # the master connection comes up
        warm = [timed(lambda: sb.commands.run(["true"]))[0] for _ in range(repeat)]
        execs = [timed(lambda: cli(env, "exec", name, "--", "true"))[0] for _ in range(repeat)]
    finally:
        sb.kill()
    print(f"`true` on a running sandbox, median of {repeat}: SDK {median(warm) * 1000:.0f} ms, "
          f"`sealbox exec` {median(execs) * 1000:.0f} ms, ratio {median(warm) / median(execs):.2f}")


def pool(image: Path, state: Path, size: int) -> None:
    with Pool(image, size=size, name=f"{PREFIX}-p{secrets.token_hex(2)}", accel="tcg", timeout_s=600, state_dir=state) as p:
        deadline = time.monotonic() + 900
        while p.ready < size and time.monotonic() < deadline:
            time.sleep(0.1)
        if p.ready < size:
            raise SystemExit(f"the pool did not warm up: {p.ready}/{size} ready ({p.last_error})")
        acquired = []
        lat = []
        for _ in range(size):
            t, sb = timed(p.acquire)
            lat.append(t)
            acquired.append(sb)
        first = [timed(lambda sb=sb: sb.commands.run(["true"]))[0] for sb in acquired]
        rel = [timed(lambda sb=sb: p.release(sb))[0] for sb in acquired]
    print(f"Pool(size={size}) warm: acquire() median {median(lat) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms "
          f"(target <= 50 ms); then the first run(['true']) median {median(first) * 1000:.0f} ms; "
          f"release() median {median(rel) * 1000:.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("what", nargs="?", default="all", choices=["overhead", "pool", "all"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--pool-size", type=int, default=3)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the SDK bench boots sandboxes: run it as root")
    state = Path(tempfile.mkdtemp(prefix="sdkbench-state-"))
    env = {**os.environ, "SEALBOX_STATE_DIR": str(state)}
    try:
        if a.what in ("overhead", "all"):
            overhead(a.image.resolve(), state, env, a.rounds, a.repeat)
        if a.what in ("pool", "all"):
            pool(a.image.resolve(), state, a.pool_size)
    finally:
        for info in Sandbox.list(all=True, state_dir=state):
            Sandbox.connect(info.name, state_dir=state).kill()
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
