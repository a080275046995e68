"""Bench: a sandbox restored from a QEMU snapshot against a cold boot, both to ready, measured in the same run (root).

  cold     Sandbox.create (what `sealbox run` calls) of the image, wall time until ready (SEALBOX-READY, host key pinned, SSH answers), --cold times
  restore  one more cold boot is snapshotted (save time and size reported), then Sandbox.restore --count times,
           wall time until ready (the agent renewed the guest's secrets, its signed answer checked, SSH answers)
Target: median restore <= 0.25 x median cold boot, same accelerator (TCG here), memory and image. Also reported: the
part of each that is sealbox's own host setup (the same steps for both), and how long the agent's renewal took.
Sandboxes run one at a time; everything is removed at the end (private state dir, names sbsnap-*).

Usage: python bench/snapshot_bench.py IMAGE_DIR [--cold N] [--count N] [--memory MIB] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sealbox.sandbox import manager
from sealbox.sandbox import snapshot as snap
from sealbox.sandbox.state import StateDir
from sealbox.sdk import LocalHost, Sandbox

PREFIX = "sbsnap"


def _timed_run(state: StateDir, image: Path, snapshot: Path | None = None, **kw: Any) -> dict[str, Any]:
    host = LocalHost(state.root)
    t0 = time.perf_counter()
    sb = Sandbox.restore(snapshot, image, host=host, **kw) if snapshot is not None else Sandbox.create(image, host=host, **kw)
    wall = time.perf_counter() - t0
    guest = state.load(sb.name).guest
    return {"wall_s": wall, "setup_s": guest.get("setup_s"), "vmm_start_s": guest.get("vmm_start_s"),
            "ready_s": guest.get("ready_s"), "renewed_s": guest.get("renewed_s")}


def bench(image: Path, state: StateDir, cold: int, count: int, memory: int) -> dict[str, Any]:
    common: dict[str, Any] = {"accel": "tcg", "memory_mib": memory, "timeout_s": 600.0}
    colds = []
    for i in range(cold):
        name = f"{PREFIX}-cold{i}"
        colds.append(_timed_run(state, image, name=name, **common))
        manager.remove(state, name, force=True)
    src = f"{PREFIX}-src"
    _timed_run(state, image, name=src, **common)
    t0 = time.perf_counter()
    taken = snap.take(state, src, state.root / "snapshots" / "bench")
    take_s = time.perf_counter() - t0
    manager.remove(state, src, force=True)
    restores = []
    for i in range(count):
        name = f"{PREFIX}-r{i}"
        restores.append(_timed_run(state, image, taken.path, name=name, timeout_s=600.0))
        manager.remove(state, name, force=True)
    cold_med = statistics.median(r["wall_s"] for r in colds)
    rest_med = statistics.median(r["wall_s"] for r in restores)
    return {
        "memory_mib": memory, "accel": "tcg",
        "cold_s": [round(r["wall_s"], 3) for r in colds], "cold_median_s": round(cold_med, 3),
        "restore_s": [round(r["wall_s"], 3) for r in restores], "restore_median_s": round(rest_med, 3),
        "ratio_restore_to_cold": round(rest_med / cold_med, 3), "target_ratio": 0.25,
        "snapshot_save_s": taken.save_s, "snapshot_command_s": round(take_s, 3), "snapshot_mib": round(taken.size / 2**20, 1),
        "cold_setup_s": statistics.median(r["setup_s"] for r in colds),
        "restore_setup_s": statistics.median(r["setup_s"] for r in restores),
        "restore_vmm_start_s": statistics.median(r["vmm_start_s"] for r in restores),
        "restore_renewed_s": statistics.median(r["renewed_s"] for r in restores),
        "load_average": os.getloadavg(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image", type=Path)
    ap.add_argument("--cold", type=int, default=3)
    ap.add_argument("--count", type=int, default=5)
    ap.add_argument("--memory", type=int, default=512)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("the snapshot bench needs root", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="sealbox-snapbench-"))
    state = StateDir(root)
    try:
        figures = bench(a.image, state, a.cold, a.count, a.memory)
    finally:
        for name in state.names():
            manager.remove(state, name, force=True)
        report = manager.collect(state)
        if report.problems:
            print(f"gc after bench: problems {report.problems}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures, indent=2))
    print(f"restore to ready {figures['restore_median_s']:.2f}s vs cold boot to ready {figures['cold_median_s']:.2f}s: "
          f"{figures['ratio_restore_to_cold']:.3f}x (target <= 0.25x); snapshot {figures['snapshot_mib']} MiB saved in "
          f"{figures['snapshot_save_s']:.2f}s")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
