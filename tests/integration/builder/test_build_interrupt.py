"""Interrupts, crashes and concurrency never leave a partial or stale output, and the build cache is never stale.

A real `sealbox build` of a small spec is stopped at every step boundary (the SEALBOX_TEST_STOP_BEFORE hook),
then SIGKILLed or SIGTERMed: the output path is empty or complete, a SIGTERMed build leaves nothing, the next
build sweeps what a SIGKILLed one left, and the build that finally completes is byte-identical to an
uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from smallbuild import (
    BOUNDARIES,
    assert_absent_or_complete,
    copy_project,
    digests,
    leftovers,
    signal_stopped,
    start,
    wait_stopped,
    work_base,
)

pytestmark = pytest.mark.integration

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.mark.parametrize("first", [
    signal.SIGTERM, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)], ids=["TERM-first", "KILL-first"])
def test_killed_at_every_step_boundary(small, tmp_path: Path, first: int) -> None:
    """Each boundary once, SIGKILL alternating with a graceful signal (SIGTERM, SIGINT, SIGHUP in turn, each expecting
    exit 128+N and a clean tree); the two runs together cover every boundary both ways (the second is in the `slow`
    set: each boundary after bootstrap costs a bootstrap)."""
    graceful = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # rotated over the boundaries they are sent at
    spec = copy_project(small.project, tmp_path / "project")  # no lock yet: the commit must write it
    lock = spec.with_suffix(".lock")
    out = tmp_path / "project/build/tiny"
    for i, step in enumerate(BOUNDARIES):
        if (i % 2 == 0) == (first == signal.SIGKILL):
            sig = signal.SIGKILL
        else:
            sig = graceful[(i // 2) % len(graceful)]
        proc, err = start(spec, out, tmp_path / "logs", stop_before=step)
        wait_stopped(proc, err, step)
        if step not in ("check-cache", "end"):  # past its sweep: what the last killed build left is gone
            assert len(list(work_base().glob("sealbox-build-*"))) == 1, leftovers(out, lock)
            assert len(list(out.parent.glob(".tiny.staging.*"))) == 1, leftovers(out, lock)
        rc = signal_stopped(proc, sig)
        assert rc == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + sig), err.read_text()[-500:]
        if step == "end":  # committed before the signal: the output and its lock are complete
            assert digests(out) == small.artifacts and lock.read_text() == small.lock
        else:
            assert not out.exists() and not lock.exists(), f"output or lock written by a build killed before {step}"
        if sig != signal.SIGKILL:
            name = signal.Signals(sig).name
            assert leftovers(out, lock) == [], f"{name} before {step} left {leftovers(out, lock)}"
            assert f"interrupted by {name}" in err.read_text()
    # after the walk (the last build committed): the next build is up to date, and nothing is left anywhere
    proc, err = start(spec, out, tmp_path / "logs")
    assert proc.wait(600) == 0, err.read_text()[-500:]
    assert json.loads(err.with_suffix(".out").read_text())["up_to_date"] is True
    assert digests(out) == small.artifacts and leftovers(out, lock) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_killed_at_random_moments(small, tmp_path: Path, sig: int) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    print(f"seed {seed}")
    spec = copy_project(small.project, tmp_path / "project")
    shutil.copyfile(small.project / "tiny.lock", spec.with_suffix(".lock"))
    out = tmp_path / "project/build/tiny"
    for _ in range(3):
        delay = rng.uniform(0.5, small.seconds * 1.1)
        proc, err = start(spec, out, tmp_path / "logs")
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(sig)
        rc = proc.wait(600)
        assert rc in (0, 143, -signal.SIGKILL), f"after {delay:.1f}s: rc {rc}: {err.read_text()[-500:]}"
        assert_absent_or_complete(out, small.artifacts)
        if sig == signal.SIGTERM:
            assert leftovers(out, spec.with_suffix(".lock")) == [], f"SIGTERM after {delay:.1f}s (seed {seed})"
        if out.exists():
            shutil.rmtree(out)  # the next round builds again
    proc, err = start(spec, out, tmp_path / "logs")
    assert proc.wait(1200) == 0, err.read_text()[-500:]
    assert digests(out) == small.artifacts and leftovers(out, spec.with_suffix(".lock")) == []


def test_two_builds_of_one_spec_at_once(small, tmp_path: Path) -> None:
    spec = copy_project(small.project, tmp_path / "project")  # no lock: both would resolve and write it
    out = tmp_path / "project/build/tiny"
    a, err_a = start(spec, out, tmp_path / "logs")
    b, err_b = start(spec, out, tmp_path / "logs")
    assert a.wait(1200) == 0, err_a.read_text()[-500:]
    assert b.wait(1200) == 0, err_b.read_text()[-500:]
    results = [json.loads(e.with_suffix(".out").read_text()) for e in (err_a, err_b)]
    assert sorted(r["up_to_date"] for r in results) == [False, True]  # one built, the other waited and found it done
    assert any("waiting for another build" in e.read_text() for e in (err_a, err_b))
    assert digests(out) == small.artifacts and spec.with_suffix(".lock").read_text() == small.lock
    assert leftovers(out, spec.with_suffix(".lock")) == []


# --- the build cache: every input change invalidates the previous output ---------------------------------------


def _misses(spec: Path, out: Path, logs: Path, env: dict[str, str] | None = None) -> bool:
    """True if a build of `spec` into `out` would rebuild (it reaches restore, its first step after check-cache with
    a lock, where the hook stops it)."""
    proc, err = start(spec, out, logs, stop_before="restore", env=env)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if "stopped before restore " in err.read_text():
            assert signal_stopped(proc, signal.SIGTERM) == 143
            return True
        time.sleep(0.1)
    assert proc.wait(10) == 0, err.read_text()[-500:]
    assert json.loads(err.with_suffix(".out").read_text())["up_to_date"] is True
    return False


def test_every_input_change_invalidates_the_cached_output(small, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(small.project, project)
    spec, lock, out, logs = project / "tiny.toml", project / "tiny.lock", project / "build/tiny", tmp_path / "logs"
    assert not _misses(spec, out, logs), "an unchanged rebuild did not reuse the output"

    spec.write_text(spec.read_text().replace("compression_level = 1", "compression_level = 2"))
    assert _misses(spec, out, logs), "a changed spec reused the old output"
    spec.write_text(spec.read_text().replace("compression_level = 2", "compression_level = 1"))
    (project / "files/hello").write_text("changed\n")
    assert _misses(spec, out, logs), "a changed files[] source reused the old output"
    (project / "files/hello").write_text("hello\n")
    assert not _misses(spec, out, logs)

    doc = json.loads(lock.read_text())
    name = sorted(doc["sections"][0]["packages"])[0]
    doc["sections"][0]["packages"][name]["sha256"] = "0" * 64
    lock.write_text(json.dumps(doc))
    assert _misses(spec, out, logs), "a changed lock reused the old output"
    lock.write_text(small.lock)

    fake = tmp_path / "fakebin"  # the installed mmdebstrap "upgraded": dpkg-query reports another version
    fake.mkdir()
    (fake / "dpkg-query").write_text('#!/bin/sh\ncase "$*" in *mmdebstrap*) echo 99.0-1 ;; *) exec /usr/bin/dpkg-query "$@" ;; esac\n')
    (fake / "dpkg-query").chmod(0o755)
    assert _misses(spec, out, logs, env={"PATH": f"{fake}:{os.environ.get('PATH', '')}"}), "a changed tool reused the old output"

    code = tmp_path / "code"  # a changed builder module (a copy of sealbox with one line added)
    shutil.copytree(SRC / "sealbox", code / "sealbox", ignore=shutil.ignore_patterns("__pycache__"))
    with open(code / "sealbox/formats/cpio.py", "a") as f:
        f.write("\n# changed\n")
    assert _misses(spec, out, logs, env={"PYTHONPATH": str(code)}), "a changed builder module reused the old output"

    with open(out / "vmlinux", "r+b") as f:  # a tampered artifact
        f.seek(4096)
        byte = f.read(1)
        f.seek(4096)
        f.write(bytes([byte[0] ^ 1]))
    assert _misses(spec, out, logs), "a tampered artifact was reused"


# --- verify-reproducible explains a real difference, and varies what reprotest varies ------------------------


def test_verify_reproducible_explains_a_real_difference(small, tmp_path: Path) -> None:
    """openssh-server's maintainer script makes random host keys; one kept in the image differs between the two
    builds, and the report names that file (and only it); the second build ran under the announced variations."""
    project = tmp_path / "project"
    shutil.copytree(small.project, project, ignore=shutil.ignore_patterns("build", "*.lock"))
    spec = project / "tiny.toml"
    spec.write_text(spec.read_text().replace('include = ["systemd", "kmod"]', 'include = ["systemd", "kmod", "openssh-server"]')
                    + '[strip]\nkeep = ["/etc/ssh/ssh_host_ed25519_key"]\n')
    keep = tmp_path / "repro"
    keep.mkdir()
    proc = subprocess.run([sys.executable, "-m", "sealbox", "verify-reproducible", str(spec), "--json", "--keep",
                           "--work-dir", str(keep)], capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 1, proc.stderr[-800:]
    report = json.loads(proc.stdout)
    assert report["reproducible"] is False
    initrd = report["artifacts"]["initrd.cpio.zst"]
    assert not initrd["identical"]
    diffs = initrd["differences"]
    assert diffs[0].startswith("/etc/ssh/ssh_host_ed25519_key: content "), diffs
    # and of the segments, only the configuration (the last) holds it
    assert diffs[1:] == ["zstd frames (initrd segments, see the manifest's initrd_segments) that differ: 6 of 6 and 6"], diffs
    assert report["artifacts"]["vmlinuz"]["identical"]
    assert any(d.startswith("artifacts.initrd.cpio.zst.sha256") for d in report["artifacts"]["manifest.json"]["differences"])
    base = Path(report["kept"])
    conditions = (base / "build-b.log").read_text().splitlines()[0]
    assert conditions.startswith("conditions:"), conditions
    for expect in ("umask=0002", "cpus=1", "LANGUAGE=fr_CH:fr", "TZ=", "disorderfs", "hostname=sealbox-repro-b"):
        assert expect in conditions, conditions
    shutil.rmtree(base)
