#!/usr/bin/env python3
"""Bench: how long the `sealbox` command takes to start, against a bare `python -c pass` of the same interpreter
and against `python -c "import click"` (the floor of any click CLI).

Every round runs each command once, in a new random order (seeded), so slow spells of a shared machine fall on all
of them alike; the figures are per command the median and the best of the absolute times and the medians of the
per-round ratios to the two baselines measured in that round. Exit codes and output are checked: a command that
fails fails the bench.

Bytecode caches: a user's installed sealbox has them (pip compiles on install), so every measured process gets them
too: PYTHONPYCACHEPREFIX points at a private temporary directory (filled by an unmeasured warm-up run of each
command; the source tree is not written to) and PYTHONDONTWRITEBYTECODE is dropped. With PYTHONDONTWRITEBYTECODE set
and no cache, sealbox's own modules (not click's or the standard library's, whose caches came with them) would be
compiled from source on every run (10-20 ms more here). --env-as-is measures with the caller's environment unchanged.

The commands (the console script next to sys.executable, as a user runs it; `python -m sealbox` if there is none):
  python -c pass          the baseline: the interpreter with its site (.pth files) and nothing else
  python -c 'import click'  the second baseline: what any click command pays before its own code
  sealbox --version       the CLI's own start-up
  sealbox --help          the command list
  sealbox ps              an empty state dir
  sealbox ps --json       the same, as JSON
  sealbox ps --all        --records records (written by the real writer, SandboxRecord + StateDir.save)
  sealbox ps --all --json the same, as JSON
  sealbox inspect NAME    a stopped sandbox's record (no VMM to ask)
  sealbox logs NAME       its console log
  python -m sealbox --version   the same as the script, through runpy (how much the entry point itself costs)

With --before SRC (the `src` directory of another sealbox, e.g. `git archive main src | tar -x -C DIR`), each sealbox
command also runs from SRC in the same rounds ("before: ..."; the same console script, with SRC first on PYTHONPATH),
the bench first checks that ps, inspect and logs print the same bytes from both, and it prints for each command the
median of the per-round ratios this tree / SRC.

The state dir is a private temporary directory (removed at the end); nothing else is touched.

Usage: .venv/bin/python bench/startup_bench.py [--rounds N] [--records N] [--seed N] [--json FILE] [--before SRC]
                                               [--only LABEL]... [--env-as-is]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "sealbox"
SEALBOX = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "sealbox"]
BASELINE = "python -c pass"
CLICK = "python -c 'import click'"
PS = "sealbox ps"
SAME_OUTPUT = ("ps --all", "ps --all --json", "ps --label i=1", "inspect bench-0", "inspect bench-1", "logs bench-0")


def commands(records: int) -> dict[str, list[str]]:
    return {
        BASELINE: [sys.executable, "-c", "pass"],
        CLICK: [sys.executable, "-c", "import click"],
        "sealbox --version": [*SEALBOX, "--version"],
        "sealbox --help": [*SEALBOX, "--help"],
        PS: [*SEALBOX, "ps"],
        "sealbox ps --json": [*SEALBOX, "ps", "--json"],
        f"sealbox ps --all ({records} records)": [*SEALBOX, "ps", "--all"],
        f"sealbox ps --all --json ({records} records)": [*SEALBOX, "ps", "--all", "--json"],
        "sealbox inspect NAME": [*SEALBOX, "inspect", "bench-0"],
        "sealbox logs NAME": [*SEALBOX, "logs", "bench-0"],
        "python -m sealbox --version": [sys.executable, "-m", "sealbox", "--version"],
    }


def write_records(state_root: Path, count: int) -> None:
    """`count` sandboxes as `sealbox run` (+ `stop`) leave them (a dozen host steps each), one console log: bench-1 is
    running (its "VMM" is this process), bench-2's VMM is gone (exited), the others are stopped."""
    from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
    from sealbox.sandbox.steps import StepEntry

    state = StateDir(state_root)
    for i in range(count):
        name = f"bench-{i}"
        steps = [StepEntry(kind=kind, state="done", params={"name": f"sealbox-{name}", "path": f"/run/x/{name}/{kind}", "n": i},
                           outputs={"pid": 1000 + i} if kind == "vmm" else {})
                 for kind in ("registry", "netns", "veth", "nft", "forward", "cgroup", "consolefs", "instance-disk",
                              "uid", "dns", "jail", "vmm")]
        record = SandboxRecord(
            name=name, status="running" if i in (1, 2) else "stopped", created_at=time.time() - 3600 * i - 600,
            spec={"name": name, "cpus": 2, "memory_mib": 512, "net": "isolated", "labels": {"team": "bench", "i": str(i)}},
            image={"name": "default", "kernel_version": "6.1.0-bench", "digest": "sha256:" + "ab" * 32},
            network={"subnet": f"10.47.{i}.0/30", "host_ip": f"10.47.{i}.1", "guest_ip": f"10.47.{i}.2",
                     "guest_mac": "02:00:00:00:00:02", "tap": "tap0", "netns": f"sealbox-{name}"},
            vmm={"backend": "qemu", "accel": "tcg", **({"pid": os.getpid(), "start_time": process_start_time(os.getpid())} if i == 1 else
                                                       {"pid": 999_999, "start_time": 1})},
            guest={"user": "root", "known_hosts": f"{state_root}/sandboxes/{name}/known_hosts"},
        )
        record.steps.entries.extend(steps)
        state.reserve(record)
    console = state.sandbox_dir("bench-0") / "console" / "console.log"
    console.parent.mkdir()
    console.write_text("".join(f"[    {i / 10:.6f}] a line of kernel output, number {i}\n" for i in range(200)))


def run_once(argv: list[str], env: dict[str, str]) -> float:
    if argv[:2] == ["BEFORE", "--"]:  # a command of the --before tree
        argv, env = argv[3:], {**env, "PYTHONPATH": argv[2]}
    t0 = time.perf_counter()
    p = subprocess.run(argv, env=env, capture_output=True, timeout=120)
    dt = time.perf_counter() - t0
    if p.returncode != 0 or (argv[-1] not in ("pass", "import click") and not p.stdout):
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[-400:]}")
    return dt


def before_commands(cmds: dict[str, list[str]], src: Path) -> dict[str, list[str]]:
    """The sealbox commands again, run from the `src` tree of another sealbox."""
    out = {}
    for label, argv in cmds.items():
        if label.startswith("sealbox "):
            args = argv[len(SEALBOX):]
            out[f"before: {label}"] = ["BEFORE", "--", str(src), *SEALBOX, *args]
    return out


def same_output(src: Path, env: dict[str, str]) -> None:
    """ps, inspect and logs print the same bytes (and exit codes) from this tree and from `src`."""
    for args in SAME_OUTPUT:
        now, before = (subprocess.run(argv, env=e, capture_output=True, timeout=120) for argv, e in (
            ([*SEALBOX, *args.split()], env), ([*SEALBOX, *args.split()], {**env, "PYTHONPATH": str(src)})))
        if (now.returncode, now.stdout, now.stderr) != (before.returncode, before.stdout, before.stderr):
            raise SystemExit(f"sealbox {args}: the output differs from {src}'s:\n{before.stdout[:2000]!r}\n{now.stdout[:2000]!r}")
    print(f"same output as {src}: " + ", ".join(f"sealbox {a}" for a in SAME_OUTPUT))


def measure(cmds: dict[str, list[str]], rounds: int, seed: int, env: dict[str, str]) -> dict[str, Any]:
    rng = random.Random(seed)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for argv in cmds.values():  # warm the page cache and the bytecode caches once, unmeasured
        run_once(argv, env)
    for _ in range(rounds):
        order = list(cmds)
        rng.shuffle(order)
        for label in order:
            times[label].append(run_once(cmds[label], env))

    def per_round(label: str, base: str) -> float:  # the median of this round's ratios to a command of the same round
        return statistics.median(t / b for t, b in zip(times[label], times[base], strict=True))

    out = {label: {"median_ms": statistics.median(times[label]) * 1000, "min_ms": min(times[label]) * 1000,
                   "median_ratio": per_round(label, BASELINE), "median_ratio_click": per_round(label, CLICK),
                   "median_added_ms": statistics.median(t - b for t, b in zip(times[label], times[BASELINE], strict=True)) * 1000}
           for label in cmds}
    for label in cmds:  # with --before: this tree against the other one, round by round
        if f"before: {label}" in cmds:
            out[label]["median_ratio_before"] = per_round(label, f"before: {label}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--records", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--before", type=Path, help="the src directory of another sealbox to compare with (same rounds)")
    ap.add_argument("--only", action="append", default=[], metavar="LABEL",
                    help="measure only the sealbox commands whose label starts with LABEL (repeatable; the baselines always)")
    ap.add_argument("--env-as-is", action="store_true", help="no private bytecode cache: the caller's environment as it is")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="sealbox-startup-bench-"))
    try:
        empty, full = root / "empty", root / "full"
        write_records(full, a.records)
        empty.mkdir(mode=0o700)
        cmds = commands(a.records)
        env = {**os.environ, "SEALBOX_STATE_DIR": str(full)}
        env.pop("SEALBOX_DEBUG", None)
        if not a.env_as_is:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        for label in (PS, "sealbox ps --json"):
            cmds[label] = [*cmds[label], "--state-dir", str(empty)]
        if a.only:
            cmds = {k: v for k, v in cmds.items() if k in (BASELINE, CLICK, PS) or k.startswith(tuple(a.only))}
        if a.before:
            same_output(a.before.absolute(), env)
            cmds.update(before_commands(cmds, a.before.absolute()))
        load = os.getloadavg()[0]
        figures = measure(cmds, a.rounds, a.seed, env)
        load_end = os.getloadavg()[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    caches = "the caller's environment" if a.env_as_is else "bytecode caches in a private PYTHONPYCACHEPREFIX"
    print(f"{a.rounds} interleaved rounds, load average {load:.2f} at the start and {load_end:.2f} at the end, "
          f"{os.cpu_count()} CPUs; {caches}; sealbox = {' '.join(SEALBOX)}")
    print(f"{'command':<46} {'median':>9} {'best':>8} {'/pass':>7} {'/click':>7} {'added':>9}")
    for label, f in figures.items():
        print(f"{label:<46} {f['median_ms']:7.1f}ms {f['min_ms']:6.1f}ms {f['median_ratio']:6.2f}x "
              f"{f['median_ratio_click']:6.2f}x {f['median_added_ms']:7.1f}ms")
    if a.before:
        print("this tree / the --before tree (median of the per-round ratios): " + ", ".join(
            f"{label} {f['median_ratio_before']:.3f}x" for label, f in figures.items() if "median_ratio_before" in f))
    ps, base, click = figures[PS], figures[BASELINE], figures[CLICK]
    print(f"sealbox ps (empty state dir): median {ps['median_ms']:.1f} ms, best {ps['min_ms']:.1f} ms; "
          f"python -c pass median {base['median_ms']:.1f} ms, import click median {click['median_ms']:.1f} ms; "
          f"ps / import click {ps['median_ratio_click']:.2f}x (median of the per-round ratios)")
    if a.json:
        a.json.write_text(json.dumps({"rounds": a.rounds, "records": a.records, "load": load, "load_end": load_end,
                                      "bytecode_cache": not a.env_as_is, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
