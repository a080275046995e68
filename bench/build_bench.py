#!/usr/bin/env python3
"""Builder benchmarks, as ratios against baselines measured in the same run (these machines are noisy).

- cold build of the default image (no caches at all) / raw `mmdebstrap` of the same package set and
  mirrors (target <= 1.3)
- warm rebuild with nothing changed (target <= 2 s), shown next to `sealbox --version` start-up
- sizes of the artifacts (target: initrd.cpio.zst <= 15 MB)
- where the cold build's time goes: the per-step seconds `sealbox build --json` reports (median over rounds)

Run as root: `.venv/bin/python bench/build_bench.py [--rounds N] [--spec FILE] [--json]`; `--spec` measures
another spec (e.g. one that includes "default" with a lower `output.compression_level`) against the same baseline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(argv: list[str], **kw) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    return time.monotonic() - t0


def timed_build(argv: list[str], **kw) -> tuple[float, dict[str, float]]:
    """Wall time of a `sealbox build ... --json` and the per-step seconds it reports."""
    t0 = time.monotonic()
    p = subprocess.run([*argv, "--json"], check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)
    wall = time.monotonic() - t0
    steps = {s["step"]: s["seconds"] for s in json.loads(p.stdout).get("steps", []) if s.get("state") == "done"}
    return wall, steps


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1, help="cold build/baseline pairs (alternated)")
    ap.add_argument("--spec", type=Path, help="spec to build instead of the built-in default")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from sealbox.builder.sources import resolve_sources
    from sealbox.spec import load_spec

    spec = load_spec(args.spec).spec
    spec_arg = [str(args.spec.resolve())] if args.spec else []
    sources = resolve_sources(spec.distribution)
    sealbox = [sys.executable, "-m", "sealbox"]
    work = Path(tempfile.mkdtemp(prefix="sealbox-bench-", dir="/var/tmp"))
    cold, raw, steps = [], [], []
    try:
        for r in range(args.rounds):
            out, cache = work / f"out{r}", work / f"cache{r}"
            wall, step_s = timed_build([*sealbox, "build", *spec_arg, "--no-cache", "--output", str(out / "default"),
                                        "--lock", str(out / "lock")], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                                            "SEALBOX_CACHE_DIR": str(cache)})
            cold.append(wall)
            steps.append(step_s)
            raw.append(timed(["mmdebstrap", "--variant=essential", f"--include={','.join(sorted(spec.packages.include))}",
                              spec.distribution.suite, str(work / f"raw{r}.tar"), *sources.lines()]))
            (work / f"raw{r}.tar").unlink(missing_ok=True)
        last = work / f"out{args.rounds - 1}"
        warm = [timed([*sealbox, "build", *spec_arg, "--output", str(last / "default"), "--lock", str(last / "lock")],
                      env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SEALBOX_CACHE_DIR": str(work / "cache0")}) for _ in range(3)]
        startup = [timed([*sealbox, "--version"]) for _ in range(3)]
        manifest = json.loads((last / "default" / "manifest.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sizes = {n: a["size"] for n, a in manifest["artifacts"].items()}
    result = {
        "cold_build_s": round(statistics.median(cold), 1), "raw_mmdebstrap_s": round(statistics.median(raw), 1),
        "cold_ratio": round(statistics.median(c / r for c, r in zip(cold, raw, strict=True)), 2),
        "warm_rebuild_s": round(min(warm), 2), "cli_startup_s": round(min(startup), 2),
        "warm_over_startup": round(min(warm) / min(startup), 2), "sizes_bytes": sizes,
        "cold_steps_s": {n: round(statistics.median(s.get(n, 0.0) for s in steps), 2) for n in steps[-1]},
        "targets": {"cold_ratio": 1.3, "warm_rebuild_s": 2.0, "initrd_mb": 15.0},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"cold build        {result['cold_build_s']:7.1f} s   raw mmdebstrap {result['raw_mmdebstrap_s']:.1f} s"
              f"   ratio {result['cold_ratio']:.2f} (target <= 1.3)")
        print(f"warm rebuild      {result['warm_rebuild_s']:7.2f} s   CLI start-up {result['cli_startup_s']:.2f} s"
              f"   ratio {result['warm_over_startup']:.2f} (target <= 2 s absolute)")
        print("cold build steps (median s): " + ", ".join(f"{n} {t:.1f}" for n, t in result["cold_steps_s"].items()))
        for n, size in sorted(sizes.items()):
            print(f"  {n:<18} {size / 1e6:8.2f} MB" + ("   (target <= 15 MB)" if n == "initrd.cpio.zst" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
