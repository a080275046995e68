"""`sealbox verify-reproducible`: build twice, the second time under varied conditions, compare every artifact.

The second build varies what reprotest varies, so that only declared inputs can reach the output:
build path and work dir (separate temp dirs), file-system ordering (its work tree is on a tmpfs, whose
readdir order differs from ext4's), umask (0002 vs the caller's), timezone, locale, hostname (own UTS
namespace), user environment (a scrubbed environment with unrelated variables and another HOME), and
wall clock (it runs later; a time-shifting preload is not used because apt rejects Release files whose
dates do not fit the clock). Both builds use the same lock (a temporary one if the spec has none yet)
and the same content-addressed .deb cache (inputs, verified by hash); neither reuses an output.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sealbox.builder.builder import default_lock_path, default_output
from sealbox.builder.compare import explain
from sealbox.builder.manifest import read_manifest
from sealbox.errors import BuildError, SealboxError
from sealbox.spec.load import LoadedSpec
from sealbox.util.run import run

VARIED = {"TZ": "Pacific/Chatham", "LANG": "fr_CH.UTF-8", "LC_ALL": "fr_CH.UTF-8", "HOME": "/nonexistent-sealbox-repro",
          "SEALBOX_REPRO_NOISE": "x" * 17, "USER": "reprotest", "LOGNAME": "reprotest", "COLUMNS": "43"}
BUILD_TIMEOUT = 7200.0


def _build_argv(spec_path: Path | None, profiles: list[str], out: Path, lock: Path, work: Path) -> list[str]:
    argv = [sys.executable, "-m", "sealbox", "build"]
    if spec_path is not None:
        argv.append(str(spec_path.resolve()))
    if profiles:
        argv += ["--profile", ",".join(profiles)]
    return argv + ["--output", str(out), "--lock", str(lock), "--work-dir", str(work), "--json"]


def _passed_on() -> dict[str, str]:
    """What both builds get from the caller: where the .deb cache and sealbox itself live, nothing else."""
    return {k: os.environ[k] for k in ("SEALBOX_CACHE_DIR", "PYTHONPATH", "VIRTUAL_ENV") if k in os.environ}


def _run_build(argv: list[str], env: dict[str, str], label: str, log: Path) -> None:
    try:
        run(argv, env=env, cwd=Path("/"), log_file=log, timeout=BUILD_TIMEOUT, what=f"{label} build")
    except SealboxError as e:
        raise BuildError(e.message, hint=f"full log: {log}") from None


def verify(loaded: LoadedSpec, spec_path: Path | None, profiles: list[str], work_dir: Path | None, keep: bool,
           progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    base = Path(tempfile.mkdtemp(prefix="sealbox-repro-", dir=work_dir or os.environ.get("SEALBOX_WORK_DIR", "/var/tmp")))
    try:
        user_lock = default_lock_path(loaded, default_output(loaded))
        lock = base / "sealbox.lock"
        if user_lock.is_file():
            shutil.copyfile(user_lock, lock)
        out_a, out_b = base / "a" / loaded.spec.name, base / "b" / loaded.spec.name
        (base / "work-a").mkdir()
        (base / "work-b").mkdir()
        env_a = _passed_on()
        t0 = time.monotonic()
        say(f"first build → {out_a}")
        _run_build(_build_argv(spec_path, profiles, out_a, lock, base / "work-a"), env_a, "first", base / "build-a.log")
        t1 = time.monotonic()
        say(f"  done in {t1 - t0:.0f}s; second build (varied: path, fs order, umask, TZ, locale, hostname, env, time)")
        inner = " ".join(shlex.quote(a) for a in _build_argv(spec_path, profiles, out_b, lock, base / "work-b"))
        script = (f"hostname sealbox-repro-b && mount -t tmpfs -o mode=0755 tmpfs {shlex.quote(str(base / 'work-b'))} "
                  f"&& umask 0002 && exec {inner}")
        env_b = {**_passed_on(), **VARIED}
        _run_build(["unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c", script], env_b, "second",
                   base / "build-b.log")
        say(f"  done in {time.monotonic() - t1:.0f}s; comparing")
        ma, mb = read_manifest(out_a), read_manifest(out_b)
        if ma is None or mb is None:
            raise BuildError("a build finished without a manifest", hint=str(base))
        names = sorted(set(os.listdir(out_a)) | set(os.listdir(out_b)))
        artifacts: dict[str, Any] = {}
        for name in names:
            a, b = out_a / name, out_b / name
            if not a.exists() or not b.exists():
                artifacts[name] = {"identical": False, "differences": [f"only in the {'first' if a.exists() else 'second'} build"]}
                continue
            same = a.read_bytes() == b.read_bytes()
            artifacts[name] = {"identical": same}
            if not same:
                artifacts[name]["differences"] = explain(name, a, b, base)
        report = {"reproducible": all(v["identical"] for v in artifacts.values()), "artifacts": artifacts,
                  "varied": {"env": VARIED, "umask": "0002", "hostname": "sealbox-repro-b", "fs": "tmpfs work dir",
                             "path": [str(out_a), str(out_b)]},
                  "seconds": {"first": round(t1 - t0, 1), "second": round(time.monotonic() - t1, 1)}}
        if keep:
            report["kept"] = str(base)
        return report
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
