"""initrd.cpio.zst as a few coarse segments: each a whole newc archive compressed on its own (one zstd frame),
concatenated. That is the initramfs buffer format: the kernel unpacks the archives one after the other.

Why: an edit to the spec's files or configuration changes one small segment; the others keep their exact
compressed bytes, found in the build cache by the sha256 of their uncompressed archive, so a rebuild
recompresses kilobytes instead of 55 MB at zstd level 19. A cold build writes the same segments (it finds none
cached), so the bytes never depend on what was cached.

The segments partition the final tree: every path is in exactly one, so nothing is overridden or needs deleting
(a later archive can override a path, never delete one). A group of hard links stays in one segment (the kernel
forgets links at each trailer), and every directory comes before what is unpacked into it: directories outside
the configuration paths are in the first segment, and a segment's own directories come first within it.

  base       ".", directories, symlinks and device nodes outside the configuration paths
  kernel     modules and depmod's files under /usr/lib/modules
  libraries  ELF files under /usr/lib/x86_64-linux-gnu
  programs   every other ELF file
  data       every other regular file
  config     everything under the configuration paths: /etc, /home, /root, /var, the guest protocol's files, the
             ready-order drop-in, and each files[] destination — where users, services, hardening and the spec's
             own files land

Each segment is compressed at the spec's level with zstd's multi-threaded mode (the same bytes for any number
of workers >= 1), segments in parallel. The default image: six segments cost about 75 kB (0.5 %) over one stream.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sealbox.builder.intree import Tree
from sealbox.builder.layers import LayerCache, layer_key
from sealbox.formats.cpio import is_elf, plan_cpio, write_entries
from sealbox.guest import files as guest_files

SEGMENTS = ("base", "kernel", "libraries", "programs", "data", "config")
CONFIG_PATHS = ("/etc", "/home", "/root", "/var", "/usr/lib/sealbox", str(PurePosixPath(guest_files.READY_ORDER_DROPIN).parent))
MODULES_DIR = "usr/lib/modules"
LIB_DIR = "usr/lib/x86_64-linux-gnu"


@dataclass
class Segment:
    name: str
    paths: list[str]
    raw: bytes = b""
    zst: bytes = b""
    reused: bool = False

    @property
    def raw_sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def config_roots(tree: Path, dests: list[str]) -> list[str]:
    """CONFIG_PATHS and each files[] destination as the image resolves it (a link in its parent followed inside the
    tree, never on the host), relative to the tree."""
    roots = [p.strip("/") for p in CONFIG_PATHS]
    with Tree(tree) as t:
        for dest in dests:
            d = PurePosixPath(dest)
            parent = t.resolve(str(d.parent))
            real = (parent.relative_to(tree) / d.name).as_posix() if parent is not None else str(d).strip("/")
            roots.append(real.removeprefix("./"))
    return sorted(set(roots))


def partition(tree: Path, paths: list[str], stats: dict[str, os.stat_result], roots: list[str]) -> list[Segment]:
    """The non-empty segments, in unpacking order; each keeps the global archive order of its paths."""
    rootset = set(roots)

    def configured(p: str) -> bool:
        parts = p.split("/")
        return any("/".join(parts[:i]) in rootset for i in range(1, len(parts) + 1))

    def natural(p: str) -> str:
        mode = stats[p].st_mode
        if p != "." and configured(p):
            return "config"
        if not stat.S_ISREG(mode):
            return "base"
        if p.startswith(MODULES_DIR + "/"):
            return "kernel"
        if is_elf(tree / p):
            return "libraries" if p.startswith(LIB_DIR + "/") else "programs"
        return "data"

    first_of: dict[tuple[int, int], str] = {}
    where: dict[str, str] = {}
    for p in paths:
        st = stats[p]
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:  # a hard link goes where its group's first path goes
            first = first_of.setdefault((st.st_dev, st.st_ino), p)
            where[p] = where[first] if first != p else natural(p)
        else:
            where[p] = natural(p)
    groups: dict[str, list[str]] = {name: [] for name in SEGMENTS}
    for p in paths:
        groups[where[p]].append(p)
    return [Segment(name, groups[name]) for name in SEGMENTS if groups[name]]


def compress(raw: bytes, level: int) -> bytes:
    import zstandard

    workers = max(1, os.cpu_count() or 1)  # >= 1 worker: the same frame whatever the count
    return zstandard.ZstdCompressor(level=level, threads=workers, write_checksum=True).compress(raw)


def _key(raw_sha256: str, level: int, code: dict[str, str]) -> str:
    import zstandard

    return layer_key("segment", {"raw": raw_sha256, "level": level, "zstd": list(zstandard.ZSTD_VERSION),
                                 "python-zstandard": zstandard.__version__, "code": code})


def _cached(cache: LayerCache, seg: Segment, key: str) -> bytes | None:
    """The cached frame for `seg`, if its blob is intact and it decompresses to exactly this segment."""
    import zstandard

    from sealbox.errors import BuildError

    entry = cache.lookup("segment", key)
    if entry is None:
        return None
    try:
        zst = entry.read("zst")
        plain = zstandard.ZstdDecompressor().decompressobj().decompress(zst)
    except (BuildError, zstandard.ZstdError) as e:
        cache.log.append({"kind": "segment", "action": "rejected", "why": str(e), "seconds": 0.0})
        cache.discard("segment", key)
        return None
    if hashlib.sha256(plain).hexdigest() != seg.raw_sha256:
        cache.log.append({"kind": "segment", "action": "rejected", "why": f"{seg.name}: decompresses to other bytes", "seconds": 0.0})
        cache.discard("segment", key)
        return None
    return zst


def write_initrd(tree: Path, out: Path, epoch: int, level: int, dests: list[str], cache: LayerCache,
                 code: dict[str, str]) -> list[dict[str, Any]]:
    """Write `tree` to `out` as concatenated segments; returns what the manifest records about them."""
    paths, stats = plan_cpio(tree)
    segs = partition(tree, paths, stats, config_roots(tree, dests))
    for seg in segs:
        buf = io.BytesIO()
        write_entries(tree, seg.paths, stats, buf, epoch)
        seg.raw = buf.getvalue()
    keys = {seg.name: _key(seg.raw_sha256, level, code) for seg in segs}
    todo = []
    for seg in segs:
        found = _cached(cache, seg, keys[seg.name])
        if found is not None:
            seg.zst, seg.reused = found, True
        else:
            todo.append(seg)
    todo.sort(key=lambda s: -len(s.raw))  # the biggest first: the pool finishes together
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 1)) as pool:
        for seg, zst in zip(todo, pool.map(lambda s: compress(s.raw, level), todo), strict=True):
            seg.zst = zst
    for seg in todo:
        cache.store("segment", keys[seg.name], {"zst": seg.zst}, {"name": seg.name})
    with open(out, "wb") as f:
        for seg in segs:
            f.write(seg.zst)
    cache.log.append({"kind": "initrd", "action": "segments", "seconds": 0.0,
                      "reused": [s.name for s in segs if s.reused], "compressed": [s.name for s in segs if not s.reused]})
    return [{"name": s.name, "entries": len(s.paths), "bytes": len(s.zst), "sha256": hashlib.sha256(s.zst).hexdigest()}
            for s in segs]
