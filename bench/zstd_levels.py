#!/usr/bin/env python3
"""Bench: the initrd's size/time trade-off across zstd settings, on the image's own uncompressed cpio.

Each setting compresses the same bytes with `zstandard` as the builder does (content checksum on, one worker per
core); figures are absolute (MB, seconds: best of --rounds) plus each setting's time and size relative to the
default (level 19), measured in the same run. Round-trips every output.

A segmented initrd (manifest "initrd_segments") is read whole, all its archives one after the other, and compressed
as one stream: the level-19 row then also says what segmenting costs against one stream of the same bytes.

Usage: .venv/bin/python bench/zstd_levels.py BUILD_DIR [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import zstandard

from sealbox.formats.compress import WORKERS

# (label, level, window_log or 0, long-distance matching)
SETTINGS = [
    ("level 12", 12, 0, False),
    ("level 12, window log 24", 12, 24, False),
    ("level 14, window log 26, long-distance matching", 14, 26, True),
    ("level 15, window log 26", 15, 26, False),
    ("level 16, window log 25", 16, 25, False),
    ("level 17", 17, 0, False),
    ("level 18", 18, 0, False),
    ("level 19 (default)", 19, 0, False),
]


def compress(data: bytes, level: int, wlog: int, ldm: bool) -> bytes:
    """Streamed in 1 MiB writes with the size unknown, as the builder writes its cpio; a plain level is built
    exactly as sealbox.formats.compress.zstd_writer builds it."""
    threads = max(WORKERS, os.cpu_count() or 1)
    if wlog or ldm:
        params = zstandard.ZstdCompressionParameters.from_level(level, window_log=wlog, enable_ldm=ldm, write_checksum=True,
                                                                threads=threads)
        cctx = zstandard.ZstdCompressor(compression_params=params)
    else:
        cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    out = io.BytesIO()
    with cctx.stream_writer(out, closefd=False) as w:
        for i in range(0, len(data), 1 << 20):
            w.write(data[i : i + (1 << 20)])
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    manifest = json.loads((a.build_dir / "manifest.json").read_text())
    with open(a.build_dir / manifest["boot"]["initrd"], "rb") as f:  # every segment (one zstd frame each)
        data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    print(f"input: {manifest['name']} initrd cpio, {len(data) / 1e6:.1f} MB uncompressed, {os.cpu_count()} threads")
    rows = []
    for label, level, wlog, ldm in SETTINGS:
        best, out = float("inf"), b""
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            out = compress(data, level, wlog, ldm)
            best = min(best, time.perf_counter() - t0)
        assert zstandard.ZstdDecompressor().decompress(out, max_output_size=len(data)) == data
        rows.append({"setting": label, "bytes": len(out), "size_mb": len(out) / 1e6, "time_s": best})
    ref = rows[-1]
    built = manifest["artifacts"][manifest["boot"]["initrd"]]["size"]
    segments = manifest.get("initrd_segments")
    if segments:  # the image compresses each segment on its own: what one stream of the same bytes would cost
        print(f"level 19 here, as one stream: {ref['bytes']} bytes; the image's {len(segments)} segments: {built} bytes "
              f"({built - ref['bytes']:+d}, {100 * (built / ref['bytes'] - 1):+.2f} %)")
    else:
        same = "the same as" if ref["bytes"] == built else "NOT the same as"
        print(f"level 19 here: {ref['bytes']} bytes, {same} the image's {manifest['boot']['initrd']} ({built} bytes)")
    for r in rows:
        r["time_vs_default"] = r["time_s"] / ref["time_s"]
        r["size_vs_default"] = r["size_mb"] / ref["size_mb"]
        print(f"{r['setting']:<50} {r['size_mb']:7.2f} MB {r['time_s']:6.1f} s   "
              f"size {r['size_vs_default']:.3f}x  time {r['time_vs_default']:.2f}x of the default")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
