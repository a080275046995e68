#!/usr/bin/env python3
"""Bench: `sealbox measure` on a build directory and `sealbox attest` on the vendored public vectors, as whole CLI
commands, each against `sealbox --version` (interpreter + CLI start-up) measured in the same run.

Figures are medians of --runs runs: absolute seconds, and the ratio to the start-up baseline (how much work the
command adds on top of starting sealbox at all). Exit codes are checked (attest on a vector whose certificates have
expired exits 1 with a verdict, which is still a complete run; bad input would exit 2 and fails the bench).

Usage: .venv/bin/python bench/cli_bench.py BUILD_DIR [--runs N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "tdx"
SEALBOX = [sys.executable, "-m", "sealbox"]


def timed(argv: list[str], runs: int, ok: tuple[int, ...] = (0,)) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t0)
        if p.returncode not in ok:
            raise SystemExit(f"{' '.join(argv[2:])}: exit {p.returncode}: {p.stderr.strip()[-300:]}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    at = ["--at", "2026-06-01T00:00:00Z"]  # inside every vector certificate's validity (as the unit tests use)
    commands = {
        "measure BUILD_DIR": ([*SEALBOX, "measure", str(a.build_dir), "--json"], (0,)),
        "attest quote (v4, SPR E4)": ([*SEALBOX, "attest", "quote", str(VECTORS / "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"), *at], (0, 1)),
        "attest quote (v5)": ([*SEALBOX, "attest", "quote", str(VECTORS / "go-tdx-guest/quote_v5_sample.dat"), *at], (0, 1)),
        "attest eventlog + table": ([*SEALBOX, "attest", "eventlog", str(VECTORS / "go-tdx-guest/ccel_ccel_data.dat"),
                                     "--table", str(VECTORS / "go-tdx-guest/ccel_ccel_table.dat")], (0, 1)),
    }
    base = timed([*SEALBOX, "--version"], a.runs)
    figures = {"startup_s": base, "runs": a.runs, "commands": {}}
    print(f"baseline: sealbox --version {base * 1000:.0f} ms (median of {a.runs})")
    for label, (argv, ok) in commands.items():
        t = timed(argv, a.runs, ok)
        figures["commands"][label] = {"s": t, "ratio_to_startup": t / base}
        print(f"{label:<28} {t * 1000:7.0f} ms   {t / base:5.2f}x start-up")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
