"""manifest.json: what went in (spec, sources, packages, tools) and what came out (artifact digests).

Nothing host- or time-dependent is recorded (no paths outside the image, no dates), so the manifest
is itself reproducible and is compared like any other artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from sealbox import __version__
from sealbox.spec.load import LoadedSpec
from sealbox.util.digest import sha256_file
from sealbox.util.run import output

SCHEMA = "sealbox.manifest/v1"
MANIFEST = "manifest.json"


def tool_versions() -> dict[str, str]:
    """Versions of the tools whose behaviour shapes the bytes (part of the cache key)."""
    import zstandard

    def dpkg_version(pkg: str) -> str:
        try:
            return output(["dpkg-query", "-W", "-f=${Version}", pkg])
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            return "absent"

    return {
        "sealbox": __version__,
        "sealbox-builder-code": _code_digest(),
        "mmdebstrap": dpkg_version("mmdebstrap"),
        "e2fsprogs": dpkg_version("e2fsprogs"),
        "python-zstandard": zstandard.__version__,
        "zstd-library": ".".join(map(str, zstandard.ZSTD_VERSION)),
    }


# every package the builder imports, and the data it installs (layers below the builder only); the package root's
# __init__ and errors modules too. tests/unit/builder/test_build_cache.py checks this against the import graph.
CODE_PACKAGES = ("builder", "formats", "guest", "spec", "modules", "util")
CODE_SUFFIXES = (".py", ".toml", ".sh", ".service", ".conf")


def code_files() -> list[Path]:
    """The builder's own code and data: a changed writer must not reuse an old output."""
    root = Path(__file__).resolve().parents[1]
    files = [root / "__init__.py", root / "errors.py"]
    for sub in CODE_PACKAGES:
        files += sorted((root / sub).rglob("*"))
    return [p for p in files if p.is_file() and p.suffix in CODE_SUFFIXES]


def _code_digest() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in code_files():
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def spec_record(loaded: LoadedSpec, spec_digest: str) -> dict[str, Any]:
    """What the manifest says about the spec: digest, profiles, fragments and the merged spec — no host paths.

    The spec file is named by its file name (the path typed on the command line is a host fact: the same spec built
    from another directory must give the same manifest); includes are already relative to it.
    """
    typed = loaded.origin
    own = loaded.spec_path.name if loaded.spec_path is not None else typed
    frags = [own + f[len(typed):] if typed and (f == typed or f.startswith(typed + " (")) else f for f in loaded.fragments]
    return {"spec_digest": spec_digest, "profiles": list(loaded.profiles), "fragments": frags, "spec": loaded.canonical()}


def artifact_entries(out: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"sha256": sha256_file(out / n), "size": (out / n).stat().st_size} for n in sorted(names)}


def build_key(spec_digest: str, lock_json: str, profiles: list[str], tools: dict[str, str]) -> str:
    blob = json.dumps({"spec": spec_digest, "lock": lock_json, "profiles": profiles, "tools": tools}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def up_to_date(out: Path, key: str) -> dict[str, Any] | None:
    """The existing manifest if the output dir was built from the same key and is intact (sizes+digests)."""
    m = read_manifest(out)
    if not m or m.get("build_key") != key:
        return None
    for name, art in m.get("artifacts", {}).items():
        p = out / name
        if not p.is_file() or p.stat().st_size != art.get("size") or sha256_file(p) != art.get("sha256"):
            return None
    return m


def file_mode_world_readable(out: Path) -> None:
    """Artifacts are public (the VMM user reads them through fds, Firecracker's jail links them)."""
    for p in out.iterdir():
        os.chmod(p, 0o644)
