"""Images built once per machine for the integration tests and reused while nothing changed.

`sealbox build` itself decides whether the cached output is still valid (same spec, lock, tools and
builder code), so a stale image is never used; the first run on a fresh machine builds it (~1-2 min each).
SEALBOX_TEST_IMAGE=<build dir> uses an existing image instead of the default one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "images"


def default_image() -> Path:
    env = os.environ.get("SEALBOX_TEST_IMAGE")
    if env:
        path = Path(env)
        if not (path / "manifest.json").is_file():
            pytest.fail(f"SEALBOX_TEST_IMAGE={env} is not a sealbox build directory (no manifest.json)")
        return path
    return built_image("default")


def built_image(key: str, spec: Path | None = None, profiles: tuple[str, ...] = ()) -> Path:
    """Build `spec` (None: the built-in default) with `profiles` into the cache under `key`, its lock beside it."""
    if os.geteuid() != 0:
        pytest.skip("building an image needs root")  # a failure in strict mode: CI runs as root
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is not installed (run scripts/setup.sh)")
    out = CACHE / key
    argv = [sys.executable, "-m", "sealbox", "build", *([str(spec)] if spec else []), "--output", str(out),
            "--lock", str(CACHE / f"{key}.sealbox.lock")]
    if profiles:
        argv += ["--profile", ",".join(profiles)]
    return _build(argv, key, out, timeout=1200)


def _build(argv: list[str], key: str, out: Path, timeout: float) -> Path:
    """Run the build; a lock this machine's cache kept from before a module changed its packages is re-resolved
    (--update-lock), as a developer does after editing a spec: the lock is the cache's, not the test's subject."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "since the lock" in proc.stderr and "--update-lock" in proc.stderr:
        proc = subprocess.run([*argv, "--update-lock"], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"sealbox build {key} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return out


def spec_image(key: str, spec_text: str, profiles: list[str] = (), files: dict[str, str] | None = None) -> Path:  # type: ignore[assignment]
    """An image of a test spec (written under the cache as KEY/spec.toml, with `files` beside it) and `profiles`,
    built once per machine and reused while nothing changed, like the default image."""
    if os.geteuid() != 0:
        pytest.skip("building an image needs root")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed (run scripts/setup.sh)")
    src = CACHE / "specs" / key
    src.mkdir(parents=True, exist_ok=True)
    for rel, text in (files or {}).items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        if not (src / rel).is_file() or (src / rel).read_text() != text:
            (src / rel).write_text(text)
    spec = src / "spec.toml"
    if not spec.is_file() or spec.read_text() != spec_text:
        spec.write_text(spec_text)
    out = CACHE / key
    argv = [sys.executable, "-m", "sealbox", "build", str(spec), "--output", str(out), "--lock", str(CACHE / f"{key}.sealbox.lock")]
    if profiles:
        argv += ["--profile", ",".join(profiles)]
    return _build(argv, key, out, timeout=1800)
