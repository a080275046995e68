"""Edit → rebuild from the build cache gives the same bytes as a cold `--no-cache` build of the edited spec.

One small real image (systemd, kmod, passwd; initrd, ext4, UKI and a GPT disk at zstd level 1) is built once into a private
build cache. Each test edits a copy of its project one way, rebuilds it from that cache, builds the same edited
project cold with `--no-cache` (nothing cached: every .deb downloaded again, every layer made again, every
segment compressed), and compares every artifact, the manifest included, byte for byte. It also checks which
layers the rebuild reused: an edit to files[], a user, a service or a hardening switch never reruns the
bootstrap; a kernel command line edit reuses the configured tree; an added package reruns the bootstrap, and the
initrd segments it does not touch keep their compressed bytes. No writer's output is served stale: the UKI and
the disk image carrying it change with every edit (and equal the cold build's).

CI runs three kinds of edit (file content, user, kernel command line); the others are in the `slow` set.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from smallbuild import digests

pytestmark = pytest.mark.integration

SPEC = """\
name = "edit"
[packages]
include = ["systemd", "kmod", "passwd"]
[kernel]
package = "linux-image-cloud-amd64"
modules = ["virtio_mmio"]
cmdline = ["console=ttyS0"]
[hardening]
ssh = false
firewall = false
[output]
formats = ["initrd", "ext4", "uki", "disk"]
compression_level = 1
[[files]]
source = "files/app"
dest = "/opt/app"
[[files]]
source = "files/app.conf"
dest = "/etc/app.conf"
mode = 0o644
"""


@dataclass
class Base:
    project: Path
    layers: Path
    manifest: dict[str, Any]
    digests: dict[str, str]


def _build(spec: Path, out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "sealbox", "build", str(spec), "--output", str(out), "--json", *args],
                          capture_output=True, text=True, timeout=2400, cwd=spec.parent)
    assert proc.returncode == 0, proc.stderr[-1500:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    return summary


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed (run scripts/setup.sh)")
    root = tmp_path_factory.mktemp("layered")
    project = root / "project"
    (project / "files/app/bin").mkdir(parents=True)
    (project / "files/app/hello").write_text("hello\n")
    (project / "files/app/bin/run").write_text("#!/bin/sh\necho run\n")
    (project / "files/app/bin/run").chmod(0o755)
    (project / "files/app.conf").write_text("setting = 1\n")
    (project / "edit.toml").write_text(SPEC)
    layers = root / "layers"  # private: what these tests reuse is exactly what this module's builds stored
    result = _build(project / "edit.toml", project / "build/edit", "--layer-cache", str(layers))
    assert result["lock_written"] and not result["up_to_date"]
    return Base(project, layers, json.loads((project / "build/edit/manifest.json").read_text()), digests(project / "build/edit"))


def _set_spec(old: str, new: str) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        spec = p / "edit.toml"
        assert old in spec.read_text()
        spec.write_text(spec.read_text().replace(old, new, 1))
    return edit


def _append(text: str) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        with open(p / "edit.toml", "a") as f:
            f.write(text)
    return edit


EDITS: dict[str, Callable[[Path], object]] = {
    "file-content": lambda p: (p / "files/app/hello").write_text("changed\n"),
    "file-mode": _set_spec("mode = 0o644", "mode = 0o600"),
    "new-file": lambda p: (p / "files/app/new.txt").write_text("a new file\n"),
    "removed-file": lambda p: (p / "files/app/hello").unlink(),
    "user": _append('\n[users.alice]\nuid = 1500\n'),
    "service": _append('\n[services]\nenable = ["systemd-pstore.service"]\n'),
    "hardening": _set_spec("firewall = false\n", "firewall = false\nconsole_getty = true\n"),
    "kernel-cmdline": _set_spec('cmdline = ["console=ttyS0"]', 'cmdline = ["console=ttyS0", "quiet"]'),
    "added-package": _set_spec('include = ["systemd", "kmod", "passwd"]', 'include = ["systemd", "kmod", "passwd", "procps"]'),
}
IN_CI = ("file-content", "user", "kernel-cmdline")


def _restored(result: dict[str, Any]) -> str | None:
    for e in result["cache"]:
        if e["kind"] in ("tree", "bootstrap") and e["action"] == "hit":
            return str(e["kind"])
    return None


def _state(result: dict[str, Any], step: str) -> str:
    return str(next(s["state"] for s in result["steps"] if s["step"] == step))


@pytest.mark.parametrize("kind", [k if k in IN_CI else pytest.param(k, marks=pytest.mark.slow) for k in EDITS])
def test_edit_then_rebuild_is_byte_identical_to_a_cold_build(base: Base, tmp_path: Path, kind: str) -> None:
    project = tmp_path / "project"
    shutil.copytree(base.project, project, ignore=shutil.ignore_patterns("build"))
    EDITS[kind](project)
    spec = project / "edit.toml"
    extra = ("--update-lock",) if kind == "added-package" else ()
    # a private copy of the base cache (hard links: entries are immutable, replaced by rename): what one test stores
    # or evicts (at most LIMITS["tree"] trees are kept) never changes what another, in any order, finds
    layers = tmp_path / "layers"
    shutil.copytree(base.layers, layers, copy_function=os.link)
    layered = _build(spec, project / "build/edit", "--layer-cache", str(layers), *extra)
    assert not layered["up_to_date"]
    if kind == "added-package":
        assert _state(layered, "bootstrap") == "done", "a new package set must be bootstrapped"
    elif kind == "kernel-cmdline":
        assert _restored(layered) == "tree", layered["cache"]  # only writers read the command line
        assert _state(layered, "configure") == "skip"
    else:
        assert _restored(layered) == "bootstrap", layered["cache"]
        assert _state(layered, "bootstrap") == "skip", f"a {kind} edit reran the bootstrap"

    cold = _build(spec, tmp_path / "cold/edit", "--no-cache")
    assert all(e["action"] not in ("hit", "stored") for e in cold["cache"]), cold["cache"]
    got = digests(project / "build/edit")
    assert got == digests(tmp_path / "cold/edit"), f"{kind}: the rebuild differs from a cold build"
    stale = [n for n in ("edit.efi", "disk.raw") if got[n] == base.digests[n]]
    assert not stale, f"{kind}: {stale} kept the bytes of the build before the edit"

    manifest = json.loads((project / "build/edit/manifest.json").read_text())
    before = {s["name"]: s["sha256"] for s in base.manifest["initrd_segments"]}
    after = {s["name"]: s["sha256"] for s in manifest["initrd_segments"]}
    recompressed = next(e["compressed"] for e in layered["cache"] if e["kind"] == "initrd")
    assert set(recompressed) <= {n for n in after if after[n] != before.get(n)}, "an unchanged segment was recompressed"
    if kind == "added-package":
        assert after["kernel"] == before["kernel"] and "kernel" not in recompressed
        print(f"added package: segments recompressed {recompressed}, kept {sorted(set(after) - set(recompressed))}")
    elif kind != "kernel-cmdline":
        assert recompressed in ([], ["config"]), recompressed  # only the configuration segment can change
        assert {n: d for n, d in after.items() if n != "config"} == {n: d for n, d in before.items() if n != "config"}
    else:
        assert recompressed == [] and after == before


def test_the_rebuild_cache_is_private_to_root(base: Base) -> None:
    st = os.stat(base.layers)
    assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0
    for blob in (base.layers / "blobs").iterdir():
        bst = blob.stat()
        assert bst.st_uid == os.geteuid() and bst.st_mode & 0o077 == 0, blob
