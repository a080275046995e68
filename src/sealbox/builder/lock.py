"""The lock: every package of an image pinned to a version and the sha256 of its .deb.

One lock file per spec, named after it (`my.toml` → `my.lock`; the built-in default spec's lives beside its
output as `<name>.lock`), with one section per profile set: building `my.toml` with `--profile devtools`
never touches the section of the plain build, and two specs in one folder never share a lock. Each section
also records what it was resolved for (the spec's package list and the downloads its formats need), so a
mismatch says what really changed: the spec (before anything is built), or the archive (after bootstrap).
`--update-lock` re-resolves the section of the profile set being built and leaves the others alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from sealbox.errors import BuildError, SpecError
from sealbox.util import atomic

if TYPE_CHECKING:
    from sealbox.spec.load import LoadedSpec

LOCK_VERSION = 2
LEGACY_VERSION = 1  # one lock per directory, no sections: read as the section of whatever profile set is built


class LockedPackage(BaseModel):
    version: str
    architecture: str
    sha256: str
    filename: str


class Selection(BaseModel):
    """What a section was resolved for: the spec's packages.include and the .debs its formats download."""

    packages: list[str]
    downloads: list[str]


class Lock(BaseModel):
    """One section: the packages of one profile set."""

    profiles: list[str] | None = None  # None: a legacy (version 1) lock, used for any profile set without its own
    selection: Selection | None = None
    suite: str
    packages: dict[str, LockedPackage]  # installed in the image (bootstrap)
    extras: dict[str, LockedPackage] = {}  # downloaded, not installed: kernel, EFI stub, loader busybox

    def pins(self) -> str:
        """apt preferences forcing exactly the locked versions (priority > 1000 allows downgrades)."""
        return "".join(
            f"Package: {name}\nPin: version {p.version}\nPin-Priority: 1001\n\n" for name, p in sorted(self.packages.items())
        )

    def digest_input(self) -> str:
        """What the bytes of the image depend on (part of the build key); the bookkeeping fields are not."""
        return json.dumps(self.model_dump(mode="json", include={"suite", "packages", "extras"}), sort_keys=True, separators=(",", ":"))


class LockFile(BaseModel):
    version: int = LOCK_VERSION
    sections: list[Lock] = []

    def find(self, profiles: list[str]) -> Lock | None:
        exact = [s for s in self.sections if s.profiles == profiles]
        return exact[0] if exact else next((s for s in self.sections if s.profiles is None), None)

    def section_for(self, loaded: LoadedSpec, path: Path) -> Lock | None:
        """This profile set's section, or None (resolve afresh); a BuildError naming what changed in the spec."""
        section = self.find(list(loaded.profiles))
        if section is None:
            return None
        spec = loaded.spec
        label = _label(loaded.profiles)
        fix = "rebuild with --update-lock: it re-resolves this profile set only"
        if section.suite != spec.distribution.suite:
            raise BuildError(f"{path}: the lock for {label} is for suite {section.suite!r} but the spec now asks for "
                             f"{spec.distribution.suite!r}", hint=fix)
        if section.selection is not None:
            now = selection_of(loaded)
            for what, old, new in (("packages.include", section.selection.packages, now.packages),
                                   ("downloaded packages (kernel.package, output.formats)", section.selection.downloads, now.downloads)):
                if old != new:
                    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
                    change = "; ".join(p for p in (f"added: {', '.join(added)}" if added else "",
                                                   f"removed: {', '.join(removed)}" if removed else "") if p)
                    raise BuildError(f"{path}: the spec's {what} changed since the lock for {label} was written ({change})",
                                     hint=fix)
        return section

    def with_section(self, section: Lock) -> LockFile:
        """This file with `section` replacing the one of the same profile set (and a legacy one it came from)."""
        others = [s for s in self.sections if s.profiles is not None and s.profiles != section.profiles]
        return LockFile(sections=sorted([*others, section], key=lambda s: (len(s.profiles or []), s.profiles or [])))


def _label(profiles: list[str]) -> str:
    return f"profiles {','.join(profiles)}" if profiles else "the build without profiles"


def selection_of(loaded: LoadedSpec) -> Selection:
    from sealbox.builder.steps import LOADER_PACKAGE, STUB_PACKAGE
    from sealbox.spec.model import needs_kernel

    spec = loaded.spec
    downloads = [spec.kernel.package] if needs_kernel(spec.output.formats) else []  # a container image has none
    downloads += [STUB_PACKAGE] if "uki" in spec.output.formats else []
    downloads += [LOADER_PACKAGE] if "ext4" in spec.output.formats else []
    return Selection(packages=sorted(set(spec.packages.include)), downloads=sorted(set(downloads)))


def lock_file_path(spec_path: Path | None, name: str, output: Path) -> Path:
    """`my.toml` → `my.lock` beside it; the built-in default spec (no file) → `<name>.lock` beside its output."""
    if spec_path is None:
        return output.absolute().parent / f"{name}.lock"
    spec = spec_path.absolute()
    lock = spec.with_suffix(".lock")
    return lock if lock != spec else spec.with_name(spec.name + ".lock")


def read_lock_file(path: Path) -> LockFile | None:
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
    if isinstance(version, int) and not isinstance(version, bool) and version not in (LOCK_VERSION, LEGACY_VERSION):
        raise SpecError(f"{path}: lock format version {version} is not supported (expected {LOCK_VERSION})",
                        hint="rebuild with --update-lock")
    try:
        if version == LEGACY_VERSION and isinstance(doc, dict):
            return LockFile(sections=[Lock.model_validate({k: v for k, v in doc.items() if k != "version"})])
        return LockFile.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "top level"
        more = f" (+{e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise SpecError(f"{path}: not a valid sealbox lock file: {where}: {err['msg']}{more}", hint=fix) from None


def write_lock_file(path: Path, lock_file: LockFile) -> None:
    atomic.write_text(path, json.dumps(lock_file.model_dump(mode="json"), indent=1, sort_keys=True) + "\n")


def read_lock(path: Path, profiles: list[str] | None = None) -> Lock | None:
    """The section for `profiles` (default: none) of the lock file at `path`, if there is one."""
    lf = read_lock_file(path)
    return lf.find(profiles or []) if lf is not None else None


def write_lock(path: Path, lock: Lock) -> None:
    """Write `lock` as its profile set's section, keeping the file's other sections."""
    lf = read_lock_file(path) or LockFile()
    write_lock_file(path, lf.with_section(lock if lock.profiles is not None else lock.model_copy(update={"profiles": []})))


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
    """Raise BuildError describing the first mismatches between what was installed and the lock.

    The spec's own changes were ruled out before bootstrap (LockFile.section_for), so what is left is the archive.
    """
    problems: list[str] = []
    for kind, want, got in (("package", lock.packages, installed), ("download", lock.extras, extras)):
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name), got.get(name)
            if w is None:
                problems.append(f"{kind} {name} {got[name].version} is not in the lock")  # in one of the two: got
            elif g is None:
                problems.append(f"locked {kind} {name} {w.version} was not installed")
            elif w.version != g.version:
                problems.append(f"{kind} {name}: locked {w.version}, got {g.version}")
            elif w.sha256 != g.sha256:
                problems.append(f"{kind} {name} {w.version}: .deb sha256 {g.sha256[:12]}… differs from the locked {w.sha256[:12]}…")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        label = _label(lock.profiles) if lock.profiles is not None else "this build"
        raise BuildError(
            f"{lock_path}: the archive no longer matches the lock for {label} (the spec did not change; the archive now "
            f"serves other packages): {'; '.join(problems[:3])}{more}",
            hint="pin distribution.snapshot to a dated archive snapshot, or rebuild with --update-lock",
        )


def lock_from(suite: str, installed: dict[str, Installed], extras: dict[str, Installed], profiles: list[str] | None = None,
              selection: Selection | None = None) -> Lock:
    return Lock(
        profiles=profiles,
        selection=selection,
        suite=suite,
        packages={n: i.locked() for n, i in sorted(installed.items())},
        extras={n: i.locked() for n, i in sorted(extras.items())},
    )


def as_manifest(installed: dict[str, Installed], role: str) -> list[dict[str, Any]]:
    return [
        {"name": i.name, "version": i.version, "architecture": i.architecture, "sha256": i.sha256, "filename": i.filename, "role": role}
        for _, i in sorted(installed.items())
    ]
