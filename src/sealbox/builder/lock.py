"""sealbox.lock: every package of an image pinned to a version and the sha256 of its .deb.

The first build writes it beside the spec; later builds pin apt to exactly these versions and fail
if anything installed differs (version, hash, an extra or a missing package). `--update-lock`
rebuilds from the archive as it is now and rewrites the lock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import BuildError, SpecError
from sealbox.util import atomic

LOCK_VERSION = 1


class LockedPackage(BaseModel):
    version: str
    architecture: str
    sha256: str
    filename: str


class Lock(BaseModel):
    version: int = LOCK_VERSION
    suite: str
    packages: dict[str, LockedPackage]  # installed in the image (bootstrap)
    extras: dict[str, LockedPackage] = {}  # downloaded, not installed: kernel, EFI stub, loader busybox

    def pins(self) -> str:
        """apt preferences forcing exactly the locked versions (priority > 1000 allows downgrades)."""
        return "".join(
            f"Package: {name}\nPin: version {p.version}\nPin-Priority: 1001\n\n" for name, p in sorted(self.packages.items())
        )

    def digest_input(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def read_lock(path: Path) -> Lock | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SpecError(f"{path}: cannot read lock file: {e.strerror}") from None
    fix = "fix it or rebuild with --update-lock"
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SpecError(f"{path}: not a valid sealbox lock file (not UTF-8 JSON: {e})", hint=fix) from None
    # the version first: a lock written by another sealbox may have another schema altogether
    version = doc.get("version") if isinstance(doc, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version != LOCK_VERSION:
        raise SpecError(f"{path}: lock format version {version} is not supported (expected {LOCK_VERSION})", hint="rebuild with --update-lock")
    try:
        return Lock.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise SpecError(f"{path}: not a valid sealbox lock file: {where}: {err['msg']}{more}", hint=fix) from None


def write_lock(path: Path, lock: Lock) -> None:
    atomic.write_text(path, json.dumps(lock.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")


@dataclass
class Installed:
    name: str
    version: str
    architecture: str
    sha256: str
    filename: str

    def locked(self) -> LockedPackage:
        return LockedPackage(version=self.version, architecture=self.architecture, sha256=self.sha256, filename=self.filename)


def check_against_lock(lock: Lock, installed: dict[str, Installed], extras: dict[str, Installed], lock_path: Path) -> None:
    """Raise BuildError describing the first mismatches between what was installed and the lock."""
    problems: list[str] = []
    for kind, want, got in (("package", lock.packages, installed), ("download", lock.extras, extras)):
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name), got.get(name)
            if w is None:
                problems.append(f"{kind} {name} {g.version} is not in the lock")  # type: ignore[union-attr]
            elif g is None:
                problems.append(f"locked {kind} {name} {w.version} was not installed")
            elif w.version != g.version:
                problems.append(f"{kind} {name}: locked {w.version}, got {g.version}")
            elif w.sha256 != g.sha256:
                problems.append(f"{kind} {name} {w.version}: .deb sha256 {g.sha256[:12]}… differs from the locked {w.sha256[:12]}…")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise BuildError(
            f"{lock_path}: the archive no longer matches the lock: {'; '.join(problems[:3])}{more}",
            hint="pin distribution.snapshot to a dated archive snapshot, or rebuild with --update-lock",
        )


def lock_from(suite: str, installed: dict[str, Installed], extras: dict[str, Installed]) -> Lock:
    return Lock(
        suite=suite,
        packages={n: i.locked() for n, i in sorted(installed.items())},
        extras={n: i.locked() for n, i in sorted(extras.items())},
    )


def as_manifest(installed: dict[str, Installed], role: str) -> list[dict[str, Any]]:
    return [
        {"name": i.name, "version": i.version, "architecture": i.architecture, "sha256": i.sha256, "filename": i.filename, "role": role}
        for _, i in sorted(installed.items())
    ]
