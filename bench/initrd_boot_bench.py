#!/usr/bin/env python3
"""Boot to ready of two images of one spec, alternated in one run: does the segmented initrd boot as fast?

BASELINE is an image whose initrd.cpio.zst is one stream (e.g. built by the revision before the build cache),
IMAGE the same spec built with the segmented initrd (bench/edit_bench.py --keep DIR leaves both in DIR/baseline
and DIR/cold). Each round boots both with `sealbox run` (QEMU TCG, -m 512, the order alternating between rounds)
until the guest is ready, and removes them again:
  direct  the default direct kernel boot: the VMM gets the decompressed initramfs (sandbox/initrd_cache.py), so
          the kernel unpacks the concatenated archives themselves
  uki     (--uki) the UKI under OVMF: the stub hands the kernel the compressed initrd, several zstd frames
Target: IMAGE's median boot to ready within 5 % of BASELINE's (ratio <= 1.05).

Run as root: .venv/bin/python bench/initrd_boot_bench.py BASELINE IMAGE [--rounds N] [--uki] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sandbox_bench import PREFIX, _boot_to_ready  # noqa: E402

from sealbox.sandbox import manager  # noqa: E402
from sealbox.sandbox.state import StateDir  # noqa: E402


def compare(baseline: Path, image: Path, state: StateDir, rounds: int, **flags: Any) -> dict[str, Any]:
    times: dict[str, list[float]] = {"baseline": [], "image": []}
    for r in range(rounds):
        order = [("baseline", baseline), ("image", image)]
        for label, path in order if r % 2 == 0 else order[::-1]:
            times[label].append(_boot_to_ready(path, state, f"{PREFIX}-ib{r}{label[0]}", 512, **flags)[0])
    base, ours = statistics.median(times["baseline"]), statistics.median(times["image"])
    return {"baseline_s": round(base, 2), "image_s": round(ours, 2), "ratio": round(ours / base, 3), "rounds": rounds, "all": times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline", type=Path)
    ap.add_argument("image", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--uki", action="store_true", help="also boot the UKIs under OVMF")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("booting sandboxes needs root", file=sys.stderr)
        return 2
    for d in (a.baseline, a.image):
        segs = json.loads((d / "manifest.json").read_text()).get("initrd_segments")
        print(f"{d}: initrd {'in ' + str(len(segs)) + ' segments' if segs else 'one stream'}")
    root = Path(tempfile.mkdtemp(prefix="sealbox-bench-"))
    state = StateDir(root)
    figures: dict[str, Any] = {}
    try:
        figures["direct"] = compare(a.baseline, a.image, state, a.rounds)
        if a.uki:
            figures["uki"] = compare(a.baseline, a.image, state, a.rounds, firmware="ovmf")
    finally:
        report = manager.collect(state)
        if report.removed or report.problems:
            print(f"gc after bench: removed {report.removed} problems {report.problems}")
        shutil.rmtree(root, ignore_errors=True)
    for mode, f in figures.items():
        print(f"{mode}: boot to ready {f['image_s']:.2f} s (segmented) vs {f['baseline_s']:.2f} s (one stream) -> ratio "
              f"{f['ratio']:.3f} (target <= 1.05; median of {f['rounds']}, TCG, -m 512)")
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
