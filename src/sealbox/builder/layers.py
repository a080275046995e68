"""The build cache: what each layer of a build produced, keyed by exactly the inputs it depends on.

Layers (builder/steps.py says which step looks up and stores which):
  bootstrap  the tree mmdebstrap made        key: packages, lock pins, distribution + resolved sources, dpkg
                                                  excludes, epoch, downloads, mmdebstrap, every builder module
  tree       the configured, stripped tree   key: the bootstrap key + the spec without its writer-only settings
                                                  (name, output.*, kernel.cmdline) + the content of files[]
                                                  + container (oci alone) or VM tree
  kernel     vmlinuz, vmlinux, the kernel package unpacked    key: the kernel .deb's sha256, builder modules
  modules    the kernel modules the spec needs, and the kernel's module lists   key: the kernel .deb, the module
                                                  list (kernel.modules + kernel.load), builder modules
  loader     loader.cpio.zst                 key: busybox and kernel .debs, compression level, builder modules
  segment    one compressed initrd segment   key: the sha256 of its uncompressed archive, level, zstd, modules

Every key includes the digest of every builder module (manifest.tool_versions), so changed code never reuses
an old layer. Storage is content-addressed: blobs/<sha256> holds bytes, keys/<kind>/<key>.json names the blobs
of an entry (and small metadata). A blob is used only after its sha256 is checked against its name and the key
file, and only if it is a regular file owned by this user that nobody else may write; a tampered or corrupt
entry is a miss (and is removed), never an input.

Writers never make a half-written entry visible: a blob is written to a temp file that its writer flocks, then
hashed and renamed into place, and its key file is replaced atomically, both under a flock on the cache root
(so is the eviction that keeps at most LIMITS[kind] entries of each kind, least recently used first, and the
sweep of temp files whose writer died). Readers take no lock: a blob evicted under them is a miss.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.errors import BuildError
from sealbox.util import atomic
from sealbox.util.flock import try_exclusive

KINDS = ("bootstrap", "tree", "kernel", "modules", "loader", "segment")
LIMITS = {"bootstrap": 3, "tree": 4, "kernel": 2, "modules": 4, "loader": 4, "segment": 64}
SCHEMA = 1
CHUNK = 1 << 20
TMP_PREFIX = ".tmp-"


def layer_key(kind: str, inputs: dict[str, Any]) -> str:
    blob = json.dumps({"schema": SCHEMA, "kind": kind, "inputs": inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_fd(fd: int) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    os.lseek(fd, 0, os.SEEK_SET)
    while chunk := os.read(fd, CHUNK):
        h.update(chunk)
        size += len(chunk)
    os.lseek(fd, 0, os.SEEK_SET)
    return h.hexdigest(), size


def _private(st: os.stat_result) -> bool:
    """Owned by us and writable by nobody else."""
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


@dataclass
class TempBlob:
    """A new blob being written: a flocked temp file in the blob directory (its writer is alive while locked)."""

    fd: int
    path: Path
    taken: bool = False  # renamed into place by store(): nothing left to remove

    @property
    def proc_path(self) -> str:  # for a tool that writes it (the fd must be passed on to it)
        return f"/proc/self/fd/{self.fd}"


@dataclass
class Entry:
    """A cache entry found by lookup: its blobs are verified when opened."""

    cache: LayerCache
    kind: str
    key: str
    blobs: dict[str, dict[str, Any]]
    meta: dict[str, Any]

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[int]:
        """A read-only fd of blob `name` at offset 0, checked (owner, mode, size, sha256); BuildError if it is not
        what the key file says (the caller treats that as a miss)."""
        want = self.blobs.get(name)
        if not isinstance(want, dict) or not isinstance(want.get("sha256"), str):
            raise BuildError(f"build cache: {self.kind} entry has no blob {name!r}")
        path = self.cache.blob_path(want["sha256"])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise BuildError(f"build cache: {self.kind} blob {name}: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st):
                raise BuildError(f"build cache: {self.kind} blob {name} is not a private regular file")
            digest, size = _hash_fd(fd)
            if digest != want["sha256"] or size != want.get("size"):
                raise BuildError(f"build cache: {self.kind} blob {name} does not match its sha256 (tampered or damaged)")
            yield fd
        finally:
            os.close(fd)

    def read(self, name: str) -> bytes:
        with self.open(name) as fd, os.fdopen(os.dup(fd), "rb") as f:
            return f.read()

    def copy_to(self, name: str, dest: Path) -> None:
        with self.open(name) as fd, os.fdopen(os.dup(fd), "rb") as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)


@dataclass
class LayerCache:
    root: Path
    enabled: bool = True
    reuse: frozenset[str] = frozenset(KINDS)  # kinds this build may read (all are written when enabled)
    log: list[dict[str, Any]] = field(default_factory=list)  # what each lookup and store did, for the build summary
    _checked: bool = False

    # --- layout ---------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.root / "blobs" / digest

    def _key_path(self, kind: str, key: str) -> Path:
        return self.root / "keys" / kind / f"{key}.json"

    def _prepare(self) -> None:
        """Make the cache directories (private to this user) and refuse a cache root someone else controls."""
        if self._checked:
            return
        for d in (self.root, self.root / "blobs", *(self.root / "keys" / k for k in KINDS)):
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=0o700, parents=True)
        st = os.lstat(self.root)
        if not stat.S_ISDIR(st.st_mode) or not _private(st):
            raise BuildError(f"build cache {self.root} is not a directory owned by uid {os.geteuid()} and writable only by it",
                             hint="fix its owner and mode (chmod 700), pass --layer-cache DIR, or build with --no-cache")
        self._checked = True
        with self._locked():  # what builds killed while storing left behind
            self._sweep()

    def note(self, kind: str, action: str, t0: float, **more: Any) -> None:
        self.log.append({"kind": kind, "action": action, "seconds": round(time.monotonic() - t0, 3), **more})

    # --- reading --------------------------------------------------------------------------------------------
    def lookup(self, kind: str, key: str) -> Entry | None:
        """The entry for (kind, key), or None: disabled, not reusable in this build, absent, or not trustworthy."""
        if not self.enabled or kind not in self.reuse:
            return None
        self._prepare()
        t0 = time.monotonic()
        path = self._key_path(kind, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self.note(kind, "miss", t0)
            return None
        except OSError:
            self.note(kind, "rejected", t0, why="key file cannot be opened")
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            try:
                doc = json.loads(f.read()) if stat.S_ISREG(st.st_mode) and _private(st) else None
            except ValueError:
                doc = None
        if not (isinstance(doc, dict) and doc.get("schema") == SCHEMA and doc.get("kind") == kind and doc.get("key") == key
                and isinstance(doc.get("blobs"), dict) and isinstance(doc.get("meta"), dict)):
            self.note(kind, "rejected", t0, why="key file is not a valid entry")
            self.discard(kind, key)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: eviction keeps it
        self.note(kind, "hit", t0)
        return Entry(self, kind, key, doc["blobs"], doc["meta"])

    def discard(self, kind: str, key: str) -> None:
        """Forget an entry found untrustworthy (its blobs go with the next eviction if nothing else names them)."""
        with self._locked():
            self._key_path(kind, key).unlink(missing_ok=True)

    # --- writing --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def new_blob(self) -> Iterator[TempBlob]:
        """A temp file for a blob; removed unless store() took it."""
        with self._locked():  # created and flocked under the cache lock: a sweep never sees it unlocked
            fd, name = tempfile.mkstemp(dir=self.root / "blobs", prefix=TMP_PREFIX)
            fcntl.flock(fd, fcntl.LOCK_EX)
        tmp = TempBlob(fd, Path(name))
        try:
            yield tmp
        finally:
            os.close(fd)
            if not tmp.taken:
                tmp.path.unlink(missing_ok=True)

    def store(self, kind: str, key: str, blobs: dict[str, TempBlob | bytes | Path], meta: dict[str, Any]) -> None:
        """Publish an entry: its blobs (bytes, a file copied in, or a written temp blob) by content, then its key
        file, atomically. A disabled cache stores nothing."""
        if not self.enabled:
            return
        t0 = time.monotonic()
        with contextlib.ExitStack() as stack:
            temps: dict[str, TempBlob] = {}
            for name, blob in blobs.items():
                if not isinstance(blob, TempBlob):
                    tmp = stack.enter_context(self.new_blob())
                    with os.fdopen(os.dup(tmp.fd), "wb") as f:
                        if isinstance(blob, bytes):
                            f.write(blob)
                        else:
                            with open(blob, "rb") as src:
                                while chunk := src.read(CHUNK):
                                    f.write(chunk)
                    blob = tmp
                temps[name] = blob
            hashed = {name: _hash_fd(tmp.fd) for name, tmp in temps.items()}
            with self._locked():
                for name, tmp in temps.items():
                    os.fchmod(tmp.fd, 0o600)
                    os.replace(tmp.path, self.blob_path(hashed[name][0]))
                    tmp.taken = True
                doc = {"schema": SCHEMA, "kind": kind, "key": key, "meta": meta,
                       "blobs": {n: {"sha256": d, "size": s} for n, (d, s) in sorted(hashed.items())}}
                atomic.write_json(self._key_path(kind, key), doc, mode=0o600)
                self._evict(kind)
        self.note(kind, "stored", t0, bytes=sum(s for _d, s in hashed.values()))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._prepare()
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for renames and small files only: never for long
            yield
        finally:
            os.close(fd)

    def _evict(self, kind: str) -> None:
        """Under the lock: the oldest entries of `kind` beyond its limit, blobs no key file names, dead temp files."""
        keys = sorted(self._key_path(kind, "x").parent.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))
        for old in keys[:-LIMITS[kind]]:
            old.unlink(missing_ok=True)
        named: set[str] = set()
        for k in KINDS:
            for p in (self.root / "keys" / k).glob("*.json"):
                try:
                    named.update(b["sha256"] for b in json.loads(p.read_text())["blobs"].values())
                except (OSError, ValueError, KeyError, TypeError):
                    p.unlink(missing_ok=True)
        for blob in (self.root / "blobs").iterdir():
            if not blob.name.startswith(TMP_PREFIX) and blob.name not in named:
                blob.unlink(missing_ok=True)
        self._sweep()

    def _sweep(self) -> None:
        """Under the lock: temp files of writers that died (a key file's temp is only made under this lock, so any
        found now is dead; a blob's temp is flocked by its live writer)."""
        for k in KINDS:
            for stale in (self.root / "keys" / k).glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        for blob in (self.root / "blobs").glob(TMP_PREFIX + "*"):
            self._sweep_temp(blob)

    @staticmethod
    def _sweep_temp(path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if try_exclusive(fd):  # its writer is gone (SIGKILLed): nobody will rename it
                path.unlink(missing_ok=True)
        finally:
            os.close(fd)
