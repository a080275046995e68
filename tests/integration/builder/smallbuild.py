"""A small real image (systemd + kmod, initrd only, zstd level 1: ~20 s warm on this machine) and helpers to run
`sealbox build` as a separate process, stop it at a step boundary, signal it and check what it left behind."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SPEC = """\
name = "tiny"
[packages]
include = ["systemd", "kmod"]
[kernel]
package = "linux-image-cloud-amd64"
modules = ["virtio_mmio"]
[hardening]
ssh = false
firewall = false
[output]
formats = ["initrd"]
compression_level = 1
[[files]]
source = "files"
dest = "/opt/tiny"
"""

# every step boundary of the small spec's build without a lock, in order (restore needs a lock; rootfs, loader and
# uki are skipped for this spec)
BOUNDARIES = ["check-cache", "bootstrap", "lock", "save-bootstrap", "kernel", "configure", "strip", "link-check", "normalise",
              "save-tree", "initrd", "manifest", "commit", "end"]


def work_base() -> Path:
    return Path(os.environ.get("SEALBOX_WORK_DIR") or "/var/tmp")  # noqa: S108 - the builder's own default


def write_spec(d: Path, extra: str = "") -> Path:
    (d / "files/etc").mkdir(parents=True, exist_ok=True)
    (d / "files/hello").write_text("hello\n")
    (d / "files/etc/tiny.conf").write_text("x = 1\n")
    spec = d / "tiny.toml"
    spec.write_text(SPEC + extra)
    return spec


# sealbox keeps an inherited SIGINT/SIGHUP ignore (a background job's, nohup's): the build under test starts with the
# default dispositions whatever the runner of the tests inherited, so the tests can interrupt it with either
_DEFAULT_SIGNALS = ("import os, signal, sys\n"
                    "for s in (signal.SIGINT, signal.SIGHUP): signal.signal(s, signal.SIG_DFL)\n"
                    "os.execv(sys.executable, [sys.executable, '-m', 'sealbox', *sys.argv[1:]])")


def start(spec: Path, out: Path, logdir: Path, stop_before: str | None = None, env: dict[str, str] | None = None,
          args: tuple[str, ...] = ()) -> tuple[subprocess.Popen[bytes], Path]:
    logdir.mkdir(parents=True, exist_ok=True)
    err = logdir / f"build-{time.monotonic_ns()}.err"
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SEALBOX_TEST_STOP_BEFORE", None)
    if stop_before:
        full_env["SEALBOX_TEST_STOP_BEFORE"] = stop_before
    with open(err, "wb") as e, open(err.with_suffix(".out"), "wb") as o:
        proc = subprocess.Popen([sys.executable, "-c", _DEFAULT_SIGNALS, "build", str(spec), "--output", str(out), "--json", *args],
                                stdout=o, stderr=e, env=full_env, cwd=spec.parent)
    return proc, err


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def wait_stopped(proc: subprocess.Popen[bytes], err: Path, step: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the build ended (rc {proc.returncode}) before step {step}: {err.read_text()[-800:]}")
        if state(proc.pid) == "T" and f"stopped before {step} " in err.read_text():
            return
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"the build did not reach step {step} within {timeout}s")


def signal_stopped(proc: subprocess.Popen[bytes], sig: int) -> int:
    os.kill(proc.pid, sig)
    if sig != signal.SIGKILL:
        os.kill(proc.pid, signal.SIGCONT)  # a stopped process gets the pending signal once continued
    return proc.wait(120)


def digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


def leftovers(out: Path, lock: Path | None = None) -> list[str]:
    """Anything a build may leave behind: staging/old trees and failed logs beside the output, lock temp files,
    and work directories under the work base."""
    found = [p.name for p in out.parent.glob(f".{out.name}.*")] if out.parent.is_dir() else []
    if lock is not None:
        found += [p.name for p in lock.parent.glob(f".{lock.name}.*")]
    found += [p.name for p in work_base().glob("sealbox-build-*")]
    found += [p.name for p in work_base().glob(".sealbox-new-*")]
    layers = layer_cache()  # temp files of the build cache (a build sweeps those of dead builds when it starts)
    found += [p.name for p in layers.glob("blobs/.tmp-*")] + [p.name for p in layers.glob("keys/*/.*.tmp")]
    return sorted(found)


def layer_cache() -> Path:
    return Path(os.environ.get("SEALBOX_CACHE_DIR") or "/var/cache/sealbox") / "layers"  # the builder's default


def assert_absent_or_complete(out: Path, reference: dict[str, str]) -> None:
    """The output path holds nothing, or a complete tree identical to an uninterrupted build's."""
    if out.exists():
        assert digests(out) == reference, f"a partial or different output at {out}"


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("build", "*.lock"))
    return dest / "tiny.toml"
