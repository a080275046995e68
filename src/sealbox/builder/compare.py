"""Explain how two builds of the same artifact differ: which files inside, and in what (content, mode,
owner, mtime, link target), so a reproducibility failure points at its cause."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

from sealbox.builder import disk
from sealbox.formats import oci
from sealbox.formats.compress import zstd_decompress
from sealbox.formats.cpio import read_cpio
from sealbox.util.digest import sha256_file
from sealbox.util.run import run

MAX_LINES = 50


def _entry_facts(mode: int, uid: int, gid: int, mtime: int, data: bytes, link: str | None) -> dict[str, Any]:
    return {"mode": oct(mode), "owner": f"{uid}:{gid}", "mtime": mtime,
            "content": hashlib.sha256(data).hexdigest()[:16] + f" ({len(data)} bytes)" if link is None else f"-> {link}"}


def _diff_maps(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name}: only in the first build")
        elif name not in a:
            out.append(f"{name}: only in the second build")
        else:
            for key in ("content", "mode", "owner", "mtime"):
                if a[name][key] != b[name][key]:
                    out.append(f"{name}: {key} {a[name][key]} != {b[name][key]}")
        if len(out) >= MAX_LINES:
            out.append("… (more differences not shown)")
            break
    return out


def _cpio_map(path: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for e in read_cpio(zstd_decompress(path)):
        link = e.data.decode(errors="replace") if stat.S_ISLNK(e.mode) else None
        out["/" + e.name.lstrip("./")] = _entry_facts(e.mode, e.uid, e.gid, e.mtime, e.data, link)
    return out


def _frames(path: Path) -> list[bytes]:
    """The zstd frames of a file, as stored (a segmented initrd: one per segment)."""
    import zstandard

    data, out = path.read_bytes(), []
    while data:
        obj = zstandard.ZstdDecompressor().decompressobj()
        obj.decompress(data)
        rest = obj.unused_data
        out.append(data[: len(data) - len(rest)])
        data = rest
    return out


def _segment_lines(a: Path, b: Path) -> list[str]:
    fa, fb = _frames(a), _frames(b)
    if len(fa) < 2 and len(fb) < 2:
        return []
    differ = [str(i + 1) for i in range(max(len(fa), len(fb))) if fa[i:i + 1] != fb[i:i + 1]]
    return [f"zstd frames (initrd segments, see the manifest's initrd_segments) that differ: {', '.join(differ)} "
            f"of {len(fa)} and {len(fb)}"] if differ else []


def _tree_map(root: Path, symlink_mtime: bool = True) -> dict[str, dict[str, Any]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            mtime = int(st.st_mtime) if symlink_mtime or link is None else 0
            out["/" + str(p.relative_to(root))] = _entry_facts(st.st_mode, st.st_uid, st.st_gid, mtime, data, link)
    return out


def _ext4_map(image: Path, scratch: Path) -> dict[str, dict[str, Any]]:
    dest = Path(tempfile.mkdtemp(dir=scratch, prefix="rdump-"))
    run(["debugfs", "-R", f"rdump / {dest}", str(image)], check=False, timeout=600, what="debugfs rdump")
    return _tree_map(dest, symlink_mtime=False)  # debugfs cannot restore a symlink's mtime


def _pe_sections(path: Path) -> dict[str, dict[str, Any]]:
    from sealbox.formats.pe import parse_pe

    data = path.read_bytes()
    pe = parse_pe(data, str(path))
    return {s.name: {"content": hashlib.sha256(data[s.pointer_to_raw_data:s.pointer_to_raw_data + s.size_of_raw_data]).hexdigest()[:16],
                     "mode": "", "owner": "", "mtime": ""} for s in pe.sections}


def _json_diff(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _json_diff(a.get(k), b.get(k), f"{where}.{k}" if where else k)
        return out
    return [] if a == b else [f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]


def _layer_map(arc: Any) -> dict[str, dict[str, Any]]:
    out = {}
    for e in oci.layer_entries(arc):
        kind = {b"5": "directory", b"2": f"-> {e.linkname}", b"1": f"hard link to /{e.linkname}"}.get(e.type)
        content = kind or (f"{e.sha256[:16]} ({e.size} bytes)" if e.type in (b"0", b"\0") else f"tar type {e.type!r}")
        out[e.name] = {"mode": oct(e.mode), "owner": f"{e.uid}:{e.gid}", "mtime": e.mtime, "content": content}
    return out


def _oci_explain(a: Path, b: Path) -> list[str]:
    """Per file inside the layer first (the cause), then the documents whose digests follow from it."""
    x, y = oci.read_archive(a), oci.read_archive(b)
    lines = [f"layer {line}" for line in _diff_maps(_layer_map(x), _layer_map(y))]
    for label, da, db in (("config", x.config, y.config), ("manifest", x.manifest, y.manifest), ("index.json", x.index, y.index),
                          ("manifest.json", x.docker, y.docker), ("oci-layout", x.layout, y.layout)):
        lines += [f"{label}: {line}" for line in _json_diff(da, db)]
    if not lines:
        lines = ["same layer entries and documents: the difference is in the compressed layer or the archive's tar headers"]
    return lines[:MAX_LINES + 1]


def explain(name: str, a: Path, b: Path, scratch: Path) -> list[str]:
    """Human-readable differences between two versions of artifact `name`."""
    try:
        if name.endswith(".cpio.zst"):
            lines = _diff_maps(_cpio_map(a), _cpio_map(b))
            lines += _segment_lines(a, b)
        elif name.endswith(".ext4"):
            lines = _diff_maps(_ext4_map(a, scratch), _ext4_map(b, scratch))
            if not lines:
                lines = ["same files, modes, owners and mtimes: the difference is in filesystem metadata"]
        elif name.endswith(".efi"):
            lines = [f"PE section {line}" for line in _diff_maps(_pe_sections(a), _pe_sections(b))]
        elif name.endswith(".oci.tar"):
            lines = _oci_explain(a, b)
        elif name in disk.FILES.values():
            lines = disk.explain(name, a, b, scratch)
        elif name.endswith(".json"):
            lines = _json_diff(json.loads(a.read_text()), json.loads(b.read_text()))
        else:
            lines = []
        if not lines:
            da, db = a.read_bytes(), b.read_bytes()
            first = next((i for i, (x, y) in enumerate(zip(da, db, strict=False)) if x != y), min(len(da), len(db)))
            lines = [f"bytes differ from offset {first} (sizes {len(da)} and {len(db)})"]
        return lines
    except Exception as e:  # noqa: BLE001 - an explanation must never hide the verdict
        return [f"could not explain the difference: {type(e).__name__}: {e}", f"sha256 {sha256_file(a)[:16]} != {sha256_file(b)[:16]}"]
