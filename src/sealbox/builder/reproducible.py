"""`sealbox verify-reproducible`: build twice, the second time under varied conditions, compare every artifact.

The second build varies at least what reprotest varies, so that only declared inputs can reach the output:
- build path: the spec's directory is seen through disorderfs at another path, which also shuffles the order
  in which directory entries are listed (reprotest's fileordering); the work tree is on a tmpfs, whose
  readdir order differs from the first build's file system;
- umask 0002; one CPU (taskset, like reprotest's num_cpus); hostname (own UTS namespace);
- environment: time zone, LANG/LC_ALL/LANGUAGE (fr_CH, as reprotest's locales: apt honours LANGUAGE),
  HOME, USER, an extra PATH entry and unrelated variables;
- wall clock: it runs later (a time-shifting preload is not used: apt rejects Release files whose dates do
  not fit the clock).
Both builds use the same lock (a temporary one if the spec has none yet) and the same content-addressed .deb
cache (inputs, verified by hash); neither reuses an output, and each has a build cache of its own that starts
empty, so both are cold. The second build's first log line states the conditions it actually ran under.

Then the layered path: a third build from the first build's cache restores its bootstrap layer and reuses its
kernel, modules, loader and initrd segments, but configures, strips and writes the tree again (the tree layer is not
reused), as a rebuild after an edit does; its artifacts must equal the first build's too.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealbox.builder.builder import BuildOptions, default_lock_path, default_output, work_base
from sealbox.builder.compare import explain
from sealbox.builder.interrupt import signals_raise
from sealbox.builder.manifest import read_manifest
from sealbox.builder.output import WorkDir, sweep_work_dirs
from sealbox.errors import BuildError, SealboxError
from sealbox.spec.load import LoadedSpec
from sealbox.util.run import run, which

VARIED = {"TZ": "Pacific/Chatham", "LANG": "fr_CH.UTF-8", "LC_ALL": "fr_CH.UTF-8", "LANGUAGE": "fr_CH:fr",
          "HOME": "/nonexistent-sealbox-repro", "SEALBOX_REPRO_NOISE": "x" * 17, "USER": "reprotest", "LOGNAME": "reprotest",
          "COLUMNS": "43", "CAPTURE_ENVIRONMENT": "i_capture_the_environment"}
EXTRA_PATH = "/nonexistent-sealbox-repro/bin"
BUILD_TIMEOUT = 7200.0

# Run by `sh` inside new UTS, mount and PID namespaces; paths come in as arguments, never inside the text:
# $1 work dir (gets a tmpfs), $2 where the spec's directory appears, $3 the spec's directory, $4 the one CPU,
# then the build's argv. When sh ends, the PID namespace ends, and disorderfs and the mounts with it.
SECOND_BUILD = """
hostname sealbox-repro-b || exit 1
mount -t tmpfs -o mode=0755 tmpfs "$1" || exit 1
mkdir -p "$2" && disorderfs -q --shuffle-dirents=yes --multi-user=yes "$3" "$2" || exit 1
umask 0002
echo "conditions: umask=$(umask) cpus=$(taskset -c "$4" nproc) LANGUAGE=$LANGUAGE LC_ALL=$LC_ALL TZ=$TZ HOME=$HOME" \
  "PATH=$PATH hostname=$(hostname) spec=$2 (disorderfs, shuffled readdir) work=$1 (tmpfs)"
cpu=$4
shift 4
taskset -c "$cpu" "$@"
rc=$?
fusermount3 -u "${0%/}" 2>/dev/null
exit $rc
"""


LAYERED_REUSE = "bootstrap,kernel,modules,loader,segment"  # everything but the configured tree


def _build_argv(spec: Path | None, profiles: list[str], out: Path, lock: Path, work: Path, layers: Path, *more: str) -> list[str]:
    argv = [sys.executable, "-m", "sealbox", "build"]
    if spec is not None:
        argv.append(str(spec))
    if profiles:
        argv += ["--profile", ",".join(profiles)]
    return argv + ["--output", str(out), "--lock", str(lock), "--work-dir", str(work), "--layer-cache", str(layers), "--json", *more]


def _passed_on() -> dict[str, str]:
    """What both builds get from the caller: where the .deb cache and sealbox itself live, nothing else."""
    return {k: os.environ[k] for k in ("SEALBOX_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV") if k in os.environ}


def _run_build(argv: list[str], env: dict[str, str], label: str, log: Path) -> None:
    try:
        run(argv, env=env, cwd=Path("/"), log_file=log, timeout=BUILD_TIMEOUT, what=f"{label} build")
    except SealboxError as e:
        raise BuildError(e.message, hint=f"full log: {log}") from None


def _second_build(spec: Path | None, profiles: list[str], base: Path, lock: Path) -> list[str]:
    """argv of the second build, wrapped in the namespaces and conditions that vary it."""
    cpu = str(min(os.sched_getaffinity(0)))
    spec_b = None
    if spec is not None:
        spec_b = base / "src-b" / spec.name
    inner = _build_argv(spec_b, profiles, base / "b" / "out", lock, base / "work-b", base / "layers-b")
    src = spec.resolve().parent if spec is not None else base / "no-spec-dir"
    src.mkdir(exist_ok=True)
    which("disorderfs")
    which("taskset")
    return [which("unshare"), "--uts", "--mount", "--propagation", "private", "--pid", "--kill-child", "--mount-proc",
            "sh", "-c", SECOND_BUILD, str(base / "src-b"), str(base / "work-b"), str(base / "src-b"), str(src), cpu, *inner]


def verify(loaded: LoadedSpec, spec_path: Path | None, profiles: list[str], work_dir: Path | None, keep: bool,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    with signals_raise():
        return _verify(loaded, spec_path, profiles, work_dir, keep, progress or (lambda _m: None))


def _verify(loaded: LoadedSpec, spec_path: Path | None, profiles: list[str], work_dir: Path | None, keep: bool,
            say: Callable[[str], None]) -> dict[str, Any]:
    base_dir = work_dir or work_base(BuildOptions())
    sweep_work_dirs(base_dir)
    wd = WorkDir(base_dir, prefix="sealbox-repro-")
    base = wd.path
    try:
        user_lock = default_lock_path(loaded, default_output(loaded))
        lock = base / "repro.lock"
        if user_lock.is_file():
            shutil.copyfile(user_lock, lock)
        for d in ("a", "b", "c", "work-a", "work-b", "work-c"):
            (base / d).mkdir()
        out_a, out_b = base / "a" / "out", base / "b" / "out"
        spec_a = spec_path.resolve() if spec_path is not None else None
        t0 = time.monotonic()
        say(f"first build → {out_a}")
        _run_build(_build_argv(spec_a, profiles, out_a, lock, base / "work-a", base / "layers-a"), _passed_on(), "first",
                   base / "build-a.log")
        t1 = time.monotonic()
        say(f"  done in {t1 - t0:.0f}s; second build (varied: path, readdir order, umask, CPUs, TZ, locale, LANGUAGE, "
            "hostname, env, time)")
        env_b = {**_passed_on(), **VARIED, "PATH": f"{os.environ.get('PATH', '')}:{EXTRA_PATH}"}
        _run_build(_second_build(spec_path, profiles, base, lock), env_b, "second", base / "build-b.log")
        t2 = time.monotonic()
        say(f"  done in {t2 - t1:.0f}s; layered rebuild from the first build's cache (bootstrap layer, kernel, modules, loader, segments)")
        layered = _layered_build(spec_a, profiles, base, lock)
        say(f"  done in {time.monotonic() - t2:.0f}s; comparing")
        report = _compare(out_a, out_b, base)
        layered["artifacts"] = _compare(out_a, base / "c" / "out", base)["artifacts"]
        layered["seconds"] = round(time.monotonic() - t2, 1)
        report["layered"] = layered
        report["reproducible"] = report["reproducible"] and all(v["identical"] for v in layered["artifacts"].values())
        report["varied"] = {"env": VARIED, "path_extra": EXTRA_PATH, "umask": "0002", "hostname": "sealbox-repro-b",
                            "cpus": 1, "fs": "spec directory through disorderfs (shuffled readdir), work tree on tmpfs",
                            "spec_dir": [str(spec_a.parent) if spec_a else None, str(base / "src-b")],
                            "output": [str(out_a), str(out_b)]}
        report["seconds"] = {"first": round(t1 - t0, 1), "second": round(time.monotonic() - t1, 1)}
        if keep:
            report["kept"] = str(base)
        return report
    finally:
        wd.close(keep=keep)


def _layered_build(spec: Path | None, profiles: list[str], base: Path, lock: Path) -> dict[str, Any]:
    """The third build: from the first build's cache, everything but the configured tree. Its summary says what it
    reused; a build that could not restore the bootstrap layer did not check the layered path, which is an error."""
    import json

    argv = _build_argv(spec, profiles, base / "c" / "out", lock, base / "work-c", base / "layers-a", "--reuse", LAYERED_REUSE)
    try:
        proc = run(argv, env=_passed_on(), cwd=Path("/"), timeout=BUILD_TIMEOUT, what="layered build")
    except SealboxError as e:
        raise BuildError(e.message, hint=f"the first build's cache is in {base / 'layers-a'}") from None
    (base / "build-c.log").write_bytes(proc.stderr or b"")
    summary = json.loads(proc.stdout)
    hits = sorted({e["kind"] for e in summary.get("cache", []) if e.get("action") == "hit"})
    if "bootstrap" not in hits:
        raise BuildError("the layered rebuild could not restore the first build's bootstrap layer, so the layered path was "
                         f"not checked (it reused: {', '.join(hits) or 'nothing'})", hint=f"its log: {base / 'build-c.log'}")
    recompressed: list[str] = next((e.get("compressed", []) for e in summary["cache"] if e.get("kind") == "initrd"), [])
    return {"reused": hits, "recompressed_segments": recompressed, "output": str(base / "c" / "out")}


def _compare(out_a: Path, out_b: Path, base: Path) -> dict[str, Any]:
    ma, mb = read_manifest(out_a), read_manifest(out_b)
    if ma is None or mb is None:
        raise BuildError("a build finished without a manifest", hint=str(base))
    artifacts: dict[str, Any] = {}
    for name in sorted(set(os.listdir(out_a)) | set(os.listdir(out_b))):
        a, b = out_a / name, out_b / name
        if not a.exists() or not b.exists():
            artifacts[name] = {"identical": False, "differences": [f"only in the {'first' if a.exists() else 'second'} build"]}
            continue
        same = a.read_bytes() == b.read_bytes()
        artifacts[name] = {"identical": same}
        if not same:
            artifacts[name]["differences"] = explain(name, a, b, base)
    return {"reproducible": all(v["identical"] for v in artifacts.values()), "artifacts": artifacts}
