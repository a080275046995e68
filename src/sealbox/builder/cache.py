"""Content-addressed cache of downloaded .deb files.

Blobs live at <cache>/debs/<sha256>.deb; index.json maps apt's file name (name_version_arch.deb) to
the sha256. To feed mmdebstrap we hard-link the blobs under their apt names into a directory that a
setup hook syncs into the chroot's apt archive dir; apt verifies each file against the archive's
index hashes before using it, so a corrupt cache entry is re-downloaded, never installed.

Several builds may share the cache: blobs are written under unique temp names and renamed into place
(content-addressed, so two writers of one blob agree), and the index is read, merged and replaced under
a flock on the cache directory, so no build loses another's entries. Temp files of a build that died
while holding the lock are removed by the next holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sealbox.util import atomic
from sealbox.util.digest import sha256_file

DEFAULT_CACHE = Path(os.environ.get("SEALBOX_CACHE_DIR", "/var/cache/sealbox"))


class DebCache:
    def __init__(self, root: Path = DEFAULT_CACHE, enabled: bool = True) -> None:
        self.root = Path(root)
        self.enabled = enabled
        self.debs = self.root / "debs"
        self.index_path = self.debs / "index.json"

    def _index(self) -> dict[str, str]:
        try:
            data = json.loads(self.index_path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def fetch(self, filename: str, sha256: str, dest: Path) -> Path | None:
        """The cached .deb with this sha256, linked (or copied) into `dest` under `filename` and checked against the
        digest; None if the cache is off or does not hold it (the build then downloads it)."""
        if not self.enabled or "/" in filename or filename.startswith(".") or not re.fullmatch(r"[0-9a-f]{64}", sha256):
            return None
        blob = self.debs / f"{sha256}.deb"
        if not blob.is_file():
            return None
        dest.mkdir(parents=True, exist_ok=True)
        out = dest / filename
        out.unlink(missing_ok=True)
        try:
            os.link(blob, out)
        except OSError:
            shutil.copyfile(blob, out)
        if sha256_file(out) != sha256:
            out.unlink()
            return None
        return out

    def populate(self, dest: Path) -> int:
        """Hard-link (or copy) every cached deb into `dest` under its apt file name. Returns the count."""
        dest.mkdir(parents=True, exist_ok=True)
        if not self.enabled:
            return 0
        n = 0
        for name, digest in self._index().items():
            blob = self.debs / f"{digest}.deb"
            if not blob.is_file() or "/" in name:
                continue
            try:
                os.link(blob, dest / name)
            except OSError:
                shutil.copy2(blob, dest / name)
            n += 1
        return n

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.debs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one ingest: copying a build's new .debs, seconds at most
            for stale in self.debs.glob(".*.tmp"):  # only a writer holding this lock makes them: these are dead
                stale.unlink(missing_ok=True)
            yield
        finally:
            os.close(fd)

    def ingest(self, src: Path) -> dict[str, str]:
        """Add every .deb in `src` to the cache (when enabled); return {file name: sha256} for all of them."""
        found: dict[str, str] = {}
        for deb in sorted(src.glob("*.deb")):
            found[deb.name] = sha256_file(deb)
        if self.enabled and found:
            self.debs.mkdir(parents=True, exist_ok=True)
            with self._locked():
                for name, digest in found.items():
                    blob = self.debs / f"{digest}.deb"
                    if not blob.exists():
                        fd, tmp = tempfile.mkstemp(dir=self.debs, prefix=f".{digest}.", suffix=".tmp")
                        os.close(fd)
                        shutil.copyfile(src / name, tmp)
                        os.chmod(tmp, 0o644)
                        os.replace(tmp, blob)
                index = self._index()
                index.update(found)
                atomic.write_json(self.index_path, index)
        return found
