"""OCI image layout archives ("oci-archive"): one layer holding a directory tree, byte-for-byte reproducible.

The archive is a plain tar of an OCI image layout (image-spec v1.0: `oci-layout`, `index.json`,
`blobs/sha256/<hex>`) plus the `manifest.json` that `docker save` writes beside it, so both `podman load` and
`docker load` (old and new) accept it. Everything in it follows from the tree, the config and the epoch:
- the layer is a PAX tar of the tree: entries sorted by their path bytes (parents before children), owners
  numeric with empty names, modes as in the tree, mtimes clamped to the epoch, hard links as links to the
  first path, no device numbers but those of device nodes; gzip with a fixed header (no name, mtime 0);
- the config's `created` and its one history entry are the epoch; `rootfs.diff_ids` is the sha256 of the
  uncompressed layer; config, manifest and index are canonical JSON (sorted keys, no spaces);
- the outer tar has fixed owners (0:0), modes (0755/0644) and mtimes (the epoch), members in name order.
So the layer digest, the config digest (the image ID podman and docker show) and the manifest digest are
functions of the content. `read_archive` parses an archive back (for tests and verify-reproducible).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from sealbox.errors import BuildError

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYOUT = {"imageLayoutVersion": "1.0.0"}
ANNOTATION_REF = "org.opencontainers.image.ref.name"  # the tag (image-spec annotations)
ANNOTATION_NAME = "io.containerd.image.name"  # the full name: podman and docker name the loaded image after it
BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
MAX_JSON = 4 << 20  # index, manifest and config of one image are a few KiB


@dataclass(frozen=True)
class ImageConfig:
    """The runtime settings of the image (the `config` object of the OCI image config)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)  # "KEY=value"
    user: str = ""
    workdir: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (("Entrypoint", self.entrypoint), ("Cmd", self.cmd), ("Env", self.env), ("User", self.user),
                           ("WorkingDir", self.workdir), ("Labels", self.labels)):
            if value:
                out[key] = value
        return out


@dataclass(frozen=True)
class Blob:
    media_type: str
    digest: str  # "sha256:<hex>"
    size: int

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @property
    def path(self) -> str:
        return "blobs/sha256/" + self.digest.removeprefix("sha256:")


@dataclass(frozen=True)
class OciResult:
    reference: str  # e.g. localhost/app:latest
    manifest: Blob
    config: Blob
    layer: Blob
    diff_id: str  # sha256 of the uncompressed layer
    entries: int  # files, directories, links ... in the layer

    def record(self) -> dict[str, Any]:
        """What the build manifest says about the archive."""
        return {"reference": self.reference, "manifest_digest": self.manifest.digest, "config_digest": self.config.digest,
                "layer_digest": self.layer.digest, "diff_id": self.diff_id, "layer_size": self.layer.size,
                "layer_entries": self.entries}


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def iso_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int:
        """Write all of `data`; the number of bytes written."""
        ...

    def flush(self) -> None:
        """Push what was written to the underlying file."""
        ...


class _Hashing:
    """A write-only stream that hashes and counts what passes through to `inner`."""

    def __init__(self, inner: _Sink) -> None:
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        """Hash, count and pass on `data`."""
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self) -> None:
        self.inner.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


# ---- the layer ----------------------------------------------------------------------------------------------

def sorted_paths(tree: Path) -> list[str]:
    """Every path below `tree` (relative, '/'-separated), sorted by its bytes: a parent sorts before its children."""
    out = []

    def fail(e: OSError) -> None:  # os.walk would otherwise skip an unreadable directory silently
        raise BuildError(f"cannot archive {e.filename}: {e.strerror}")

    for dirpath, dirnames, filenames in os.walk(tree, onerror=fail):
        rel = os.path.relpath(dirpath, tree)
        out += [n if rel == "." else f"{rel}/{n}" for n in dirnames + filenames]
    return sorted(out, key=os.fsencode)


def _header(name: str, st: os.stat_result, epoch: int, kind: bytes, size: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = max(0, min(int(st.st_mtime), epoch))  # an int: a float would add a PAX mtime record
    info.size = size
    info.linkname = link
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    try:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    except (ValueError, UnicodeError) as e:
        raise BuildError(f"cannot archive {name!r}: {e}") from None


def _copy_file(path: Path, size: int, out: _Hashing, name: str) -> None:
    n = 0
    with open(path, "rb") as f:
        while n < size and (chunk := f.read(min(CHUNK, size - n))):
            out.write(chunk)
            n += len(chunk)
        if n != size or f.read(1):
            raise BuildError(f"cannot archive {name}: it changed size while being archived")
    out.write(bytes(-size % BLOCK))


def write_layer(tree: Path, out: _Hashing, epoch: int) -> int:
    """The tree (not its root directory itself) as an uncompressed PAX tar into `out`; returns the entry count."""
    first_of: dict[tuple[int, int], str] = {}  # hard links: (dev, ino) -> the first path, which carries the data
    paths = sorted_paths(tree)
    for rel in paths:
        path = tree / rel
        st = os.lstat(path)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            out.write(_header(rel + "/", st, epoch, tarfile.DIRTYPE))
        elif stat.S_ISLNK(mode):
            out.write(_header(rel, st, epoch, tarfile.SYMTYPE, link=os.readlink(path)))
        elif stat.S_ISREG(mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in first_of:
                out.write(_header(rel, st, epoch, tarfile.LNKTYPE, link=first_of[key]))
                continue
            if st.st_nlink > 1:
                first_of[key] = rel
            out.write(_header(rel, st, epoch, tarfile.REGTYPE, size=st.st_size))
            _copy_file(path, st.st_size, out, rel)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            kind = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE if stat.S_ISBLK(mode) else tarfile.FIFOTYPE
            out.write(_header(rel, st, epoch, kind))
        else:
            raise BuildError(f"cannot archive /{rel}: a socket cannot be stored in a tar layer")
    end = 2 * BLOCK + (-(out.size + 2 * BLOCK) % RECORD)
    out.write(bytes(end))
    return len(paths)


def write_gzip_layer(tree: Path, dest: Path, epoch: int, level: int) -> tuple[Blob, str, int]:
    """(layer blob, diff_id, entries): the tree's tar, gzip-compressed into `dest` with a fixed header."""
    with open(dest, "wb") as raw:
        packed = _Hashing(raw)
        with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=level) as gz:
            plain = _Hashing(gz)
            entries = write_layer(tree, plain, epoch)
    return Blob(MEDIA_LAYER, packed.digest, packed.size), plain.digest, entries


# ---- config, manifest, index, archive -----------------------------------------------------------------------

def image_config(config: ImageConfig, diff_id: str, epoch: int) -> bytes:
    created = iso_time(epoch)
    return canonical_json({
        "architecture": "amd64", "os": "linux", "created": created, "config": config.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "sealbox build"}],
    })


def blob_of(data: bytes, media_type: str) -> Blob:
    return Blob(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))


def _member(name: str, size: int, epoch: int, directory: bool = False) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = epoch
    info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def write_archive(out: Path, tree: Path, config: ImageConfig, reference: str, tag: str, epoch: int, level: int,
                  scratch: Path) -> OciResult:
    """Write the OCI archive of `tree` to `out` (the layer is compressed into `scratch` first: its digest names it)."""
    layer_file = scratch / "layer.tar.gz"
    layer, diff_id, entries = write_gzip_layer(tree, layer_file, epoch, level)
    cfg_bytes = image_config(config, diff_id, epoch)
    cfg = blob_of(cfg_bytes, MEDIA_CONFIG)
    man_bytes = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": cfg.descriptor(),
                                "layers": [layer.descriptor()]})
    man = blob_of(man_bytes, MEDIA_MANIFEST)
    index = canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [
        {**man.descriptor(), "annotations": {ANNOTATION_NAME: reference, ANNOTATION_REF: tag}}]})
    docker = canonical_json([{"Config": cfg.path, "RepoTags": [reference], "Layers": [layer.path]}])
    small: dict[str, bytes] = {cfg.path: cfg_bytes, man.path: man_bytes, "index.json": index, "manifest.json": docker,
                               "oci-layout": canonical_json(LAYOUT)}
    names = sorted([*small, layer.path])
    with open(out, "wb") as f:
        w = _Hashing(f)
        w.write(_member("blobs/", 0, epoch, directory=True) + _member("blobs/sha256/", 0, epoch, directory=True))
        for name in names:
            if name == layer.path:
                w.write(_member(name, layer.size, epoch))
                _copy_file(layer_file, layer.size, w, name)
            else:
                w.write(_member(name, len(small[name]), epoch) + small[name] + bytes(-len(small[name]) % BLOCK))
        w.write(bytes(2 * BLOCK + (-(w.size + 2 * BLOCK) % RECORD)))
    layer_file.unlink()
    return OciResult(reference, man, cfg, layer, diff_id, entries)


# ---- reading back (tests, verify-reproducible) -------------------------------------------------------------

@dataclass
class Archive:
    """An OCI archive as read back: its small JSON documents and where the layer blob lies in the file."""

    path: Path
    members: dict[str, tarfile.TarInfo]
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]
    layer: dict[str, Any]  # the manifest's descriptor of the one layer
    docker: Any  # manifest.json, or None
    layout: Any

    def open_blob(self, digest: str) -> io.BufferedReader:
        info = self.members["blobs/sha256/" + digest.removeprefix("sha256:")]
        f = open(self.path, "rb")  # noqa: SIM115 - closed with the reader returned
        f.seek(info.offset_data)
        return io.BufferedReader(_Limited(f, info.size), CHUNK)


class _Limited(io.RawIOBase):
    """The `size` bytes of `f` from where it stands (one member of the archive)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.f.read(min(len(buf), self.left))
        buf[:len(data)] = data
        self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.f.close()
        super().close()


def _json_member(path: Path, tf: tarfile.TarFile, members: dict[str, tarfile.TarInfo], name: str) -> Any:
    info = members.get(name)
    if info is None or not info.isfile():
        raise ValueError(f"{path}: no {name} in the archive")
    if info.size > MAX_JSON:
        raise ValueError(f"{path}: {name} is {info.size} bytes, more than an image's metadata needs")
    f = tf.extractfile(info)
    assert f is not None
    return json.loads(f.read())


def _descriptor(path: Path, doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("digest"), str) or not DIGEST_RE.fullmatch(doc["digest"]) \
            or not isinstance(doc.get("size"), int):
        raise ValueError(f"{path}: {where} is not a descriptor with a sha256 digest and a size")
    return doc


def read_archive(path: Path) -> Archive:
    """Parse an OCI archive with one image of one layer; ValueError names what is wrong. Digests are not checked
    here (check_digests does)."""
    with tarfile.open(path, "r:") as tf:
        members = {m.name.rstrip("/"): m for m in tf.getmembers()}
        index = _json_member(path, tf, members, "index.json")
        layout = _json_member(path, tf, members, "oci-layout")
        docker = _json_member(path, tf, members, "manifest.json") if "manifest.json" in members else None
        mans = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(mans, list) or len(mans) != 1:
            raise ValueError(f"{path}: index.json must list exactly one manifest")
        mdesc = _descriptor(path, mans[0], "index.json manifests[0]")
        manifest = _json_member(path, tf, members, "blobs/sha256/" + mdesc["digest"][7:])
        cdesc = _descriptor(path, manifest.get("config") if isinstance(manifest, dict) else None, "the manifest's config")
        config = _json_member(path, tf, members, "blobs/sha256/" + cdesc["digest"][7:])
        layers = manifest.get("layers")
        if not isinstance(layers, list) or len(layers) != 1:
            raise ValueError(f"{path}: the manifest must list exactly one layer")
        layer = _descriptor(path, layers[0], "the manifest's layer")
        if "blobs/sha256/" + layer["digest"][7:] not in members:
            raise ValueError(f"{path}: the layer blob {layer['digest']} is missing")
    return Archive(path, members, index, manifest, config, layer, docker, layout)


def check_digests(arc: Archive) -> list[str]:
    """Every blob's sha256 and size against its name and the descriptor that points at it, and the layer's
    diff_id against the config; returns the problems (empty: consistent)."""
    problems = []
    descs = [("manifest", arc.index["manifests"][0]), ("config", arc.manifest["config"]), ("layer", arc.layer)]
    for role, desc in descs:
        with arc.open_blob(desc["digest"]) as f:
            sha, n = hashlib.sha256(), 0
            while chunk := f.read(CHUNK):
                sha.update(chunk)
                n += len(chunk)
        if "sha256:" + sha.hexdigest() != desc["digest"] or n != desc["size"]:
            problems.append(f"{role} blob: sha256:{sha.hexdigest()} ({n} bytes) != descriptor {desc['digest']} ({desc['size']})")
    diff_ids = arc.config.get("rootfs", {}).get("diff_ids") if isinstance(arc.config, dict) else None
    sha = hashlib.sha256()
    try:
        with arc.open_blob(arc.layer["digest"]) as f, gzip.GzipFile(fileobj=f) as gz:
            while chunk := gz.read(CHUNK):
                sha.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        return [*problems, f"layer blob: does not decompress as gzip ({e})"]
    if diff_ids != ["sha256:" + sha.hexdigest()]:
        problems.append(f"config rootfs.diff_ids {diff_ids} != sha256 of the uncompressed layer sha256:{sha.hexdigest()}")
    return problems


@dataclass(frozen=True)
class LayerEntry:
    name: str  # "/path" as in the image
    type: bytes
    mode: int
    uid: int
    gid: int
    mtime: int
    size: int
    linkname: str
    sha256: str  # of the content (regular files), "" otherwise


def layer_entries(arc: Archive) -> Iterator[LayerEntry]:
    """The layer's entries in archive order, content hashed while streaming (the layer is never held in memory)."""
    with arc.open_blob(arc.layer["digest"]) as f, tarfile.open(fileobj=f, mode="r|gz") as tf:
        for m in tf:
            digest = ""
            if m.isreg():
                src = tf.extractfile(m)
                sha = hashlib.sha256()
                while src is not None and (chunk := src.read(CHUNK)):
                    sha.update(chunk)
                digest = sha.hexdigest()
            yield LayerEntry("/" + m.name.rstrip("/"), m.type, m.mode, m.uid, m.gid, int(m.mtime), m.size, m.linkname, digest)
