#!/usr/bin/env python3
"""Edit → rebuild: ratios against a cold build measured in the same run (these machines are noisy).

One spec (default: the built-in default image, every output format, plus one files[] entry), one pinned lock,
one warm .deb cache shared by every build (a warm-up build fills it and writes the lock, untimed). Per round:
  baseline  a cold build by the sealbox of --baseline-rev (its src/ taken with git archive): "today"
  cold      a cold build by this sealbox, with an empty build cache (target: no slower than the baseline)
  edits     rebuilds from that cold build's cache, each after one edit of a fresh copy of the project:
            files[] content (target <= 0.15 x cold), the kernel command line, a new user, an added package
            (--update-lock: the bootstrap reruns; target: the segments it does not touch keep their bytes)
Baseline and cold alternate in order between rounds; figures are medians over rounds. Also: initrd.cpio.zst as
segments (this build) against one stream (the baseline's) for the same spec and lock (target <= 15 MB), and the
per-step seconds of the files[] rebuild.

Run as root: .venv/bin/python bench/edit_bench.py --baseline-rev REV [--rounds N] [--spec FILE] [--keep DIR] [--json FILE]
REV is a revision without the build cache (e.g. the commit this branch started from). --keep DIR keeps the last
round's baseline and cold outputs (DIR/baseline, DIR/cold) for bench/initrd_boot_bench.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SPEC = """\
include = ["default"]
name = "bench"

[[files]]
source = "files/app.conf"
dest = "/etc/app.conf"
"""
EDITS = {
    "files": lambda p: (p / "files/app.conf").write_text("setting = 2\n"),
    "cmdline": lambda p: _append(p, '\n[kernel]\ncmdline = ["console=ttyS0", "quiet", "panic=-1", "loglevel=4"]\n'),
    "user": lambda p: _append(p, "\n[users.benchuser]\nuid = 1600\n"),
    # not in the default image, with libraries (curl is not: libsasl2's plugin needs libdb-5.3, which [strip] removes)
    "package": lambda p: _append(p, '\n[packages]\ninclude = ["jq"]\n'),
}


def _append(project: Path, text: str) -> None:
    with open(project / "bench.toml", "a") as f:
        f.write(text)


def build(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    """Wall seconds of one `sealbox build ... --json` and its summary."""
    t0 = time.monotonic()
    p = subprocess.run([*argv, "--json"], env=env, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"build failed: {' '.join(argv)}\n{p.stderr[-2000:]}")
    return wall, json.loads(p.stdout)


def baseline_src(rev: str, dest: Path) -> Path:
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        t.extractall(dest, filter="data")
    return dest / "src"


def project_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build"))
    return dest / "bench.toml"


def one_round(r: int, work: Path, project: Path, env: dict[str, str], old_src: Path) -> dict[str, Any]:
    new = [sys.executable, "-m", "sealbox", "build"]
    spec, lock = project / "bench.toml", project / "bench.lock"
    out: dict[str, Any] = {}
    order = ["baseline", "cold"] if r % 2 == 0 else ["cold", "baseline"]
    for which in order:
        if which == "baseline":
            out["baseline_s"], _ = build([*new, str(spec), "--lock", str(lock), "--output", str(work / f"baseline{r}")],
                                         {**env, "PYTHONPATH": str(old_src)})
        else:
            out["cold_s"], out["cold"] = build([*new, str(spec), "--lock", str(lock), "--output", str(work / f"cold{r}"),
                                                "--layer-cache", str(work / f"layers{r}")], env)
    for kind, edit in EDITS.items():
        copy = project_copy(project, work / f"edit{r}-{kind}")
        edit(copy.parent)
        extra = ["--update-lock"] if kind == "package" else []
        out[f"{kind}_s"], out[kind] = build([*new, str(copy), "--output", str(copy.parent / "build/bench"),
                                             "--layer-cache", str(work / f"layers{r}"), *extra], env)
    return out


def segments_of(summary: dict[str, Any]) -> dict[str, list[str]]:
    for e in summary["cache"]:
        if e["kind"] == "initrd":
            return {"reused": e["reused"], "recompressed": e["compressed"]}
    return {"reused": [], "recompressed": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-rev", required=True)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--spec", type=Path, help="a spec instead of the default one (its files beside it are copied too)")
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("building images needs root", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sealbox-editbench-", dir="/var/tmp"))
    try:
        project = work / "project"
        if a.spec:
            shutil.copytree(a.spec.resolve().parent, project, ignore=shutil.ignore_patterns("build", "*.lock"))
            (project / a.spec.name).rename(project / "bench.toml")
        else:
            (project / "files").mkdir(parents=True)
            (project / "bench.toml").write_text(SPEC)
        (project / "files").mkdir(exist_ok=True)
        (project / "files/app.conf").write_text("setting = 1\n")
        old_src = baseline_src(a.baseline_rev, work / "baseline-src")
        # this sealbox is the bench's own checkout (REPO/src), not whatever the interpreter has installed
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SEALBOX_CACHE_DIR": str(work / "cache"),
               "SEALBOX_WORK_DIR": str(work / "tmp"), "HOME": "/root", "PYTHONPATH": str(REPO / "src")}
        print(f"warm-up build (fills the .deb cache, writes the lock; untimed) in {work}", flush=True)
        build([sys.executable, "-m", "sealbox", "build", str(project / "bench.toml"), "--output", str(work / "warm"),
               "--layer-cache", str(work / "warm-layers")], env)
        shutil.rmtree(work / "warm-layers")
        rounds = []
        for r in range(a.rounds):
            rounds.append(one_round(r, work, project, env, old_src))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in rounds[-1].items() if k.endswith("_s")), flush=True)
        last = a.rounds - 1
        result = report(rounds, work, last, a.baseline_rev)
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            for name, src in (("baseline", work / f"baseline{last}"), ("cold", work / f"cold{last}")):
                shutil.rmtree(a.keep / name, ignore_errors=True)
                shutil.copytree(src, a.keep / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0


def report(rounds: list[dict[str, Any]], work: Path, last: int, rev: str) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    def ratio(key: str, base: str) -> float:
        return statistics.median(r[key] / r[base] for r in rounds)

    def initrd(d: Path) -> int:
        return json.loads((d / "manifest.json").read_text())["artifacts"]["initrd.cpio.zst"]["size"]

    seg_bytes, one_stream = initrd(work / f"cold{last}"), initrd(work / f"baseline{last}")
    res: dict[str, Any] = {
        "baseline_rev": rev, "rounds": len(rounds), "baseline_cold_s": round(med("baseline_s"), 1), "cold_s": round(med("cold_s"), 1),
        "cold_over_baseline": round(ratio("cold_s", "baseline_s"), 3),
        "rebuild_s": {k: round(med(f"{k}_s"), 1) for k in EDITS},
        "rebuild_over_cold": {k: round(ratio(f"{k}_s", "cold_s"), 3) for k in EDITS},
        "package_segments": segments_of(rounds[-1]["package"]),
        "files_segments": segments_of(rounds[-1]["files"]),
        "files_steps_s": {s["step"]: s["seconds"] for s in rounds[-1]["files"]["steps"] if s["state"] == "done"},
        "cold_steps_s": {s["step"]: s["seconds"] for s in rounds[-1]["cold"]["steps"] if s["state"] == "done"},
        "initrd_segmented_bytes": seg_bytes, "initrd_one_stream_bytes": one_stream,
        "segments": json.loads((work / f"cold{last}" / "manifest.json").read_text()).get("initrd_segments"),
        "targets": {"cold_over_baseline": 1.0, "files_rebuild_over_cold": 0.15, "initrd_bytes": 15_000_000},
    }
    print(f"cold build {res['cold_s']:.1f} s vs baseline ({rev}) {res['baseline_cold_s']:.1f} s -> ratio "
          f"{res['cold_over_baseline']:.2f} (target <= 1.0; median of {len(rounds)})")
    for k in EDITS:
        target = " (target <= 0.15)" if k == "files" else ""
        print(f"rebuild after a {k} edit {res['rebuild_s'][k]:6.1f} s -> {res['rebuild_over_cold'][k]:.3f} x cold{target}")
    print(f"added package: segments kept {res['package_segments']['reused']}, recompressed {res['package_segments']['recompressed']}")
    print("files[] rebuild steps (s): " + ", ".join(f"{k} {v:.1f}" for k, v in res["files_steps_s"].items()))
    print(f"initrd.cpio.zst: {seg_bytes} bytes as {len(res['segments'] or [])} segments vs {one_stream} as one stream "
          f"({seg_bytes - one_stream:+d} bytes, {100 * (seg_bytes / one_stream - 1):+.2f} %; target <= 15 MB)")
    return res


if __name__ == "__main__":
    sys.exit(main())
