"""The OCI archive writer: bytes that depend on the tree's content only, digests that follow from the content, and
what GNU tar, gzip and sha256sum (readers nobody here wrote) see in it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from sealbox.errors import BuildError
from sealbox.formats import oci

EPOCH = 1735689600
CONFIG = oci.ImageConfig(entrypoint=["/bin/sh", "-c"], cmd=["echo hi"], env=["A=1", "PATH=/usr/bin"], user="app:app",
                         workdir="/opt/app")
REF = "localhost/demo:latest"


def make_tree(root: Path, reverse: bool = False, mtime: float | None = None) -> Path:
    """A small tree; `reverse` creates its entries in the opposite order (another readdir order on most file systems)."""
    files = [("opt/app/hello", b"hello\n", 0o644), ("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
             ("etc/conf", b"x = 1\n", 0o600), ("opt/app/z-last", b"z" * 70000, 0o640), ("etc/é-utf8", b"u", 0o644)]
    for rel, data, mode in reversed(files) if reverse else files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    (root / "bin").symlink_to("usr/bin")
    os.mkfifo(root / "etc/pipe")
    os.chown(root / "opt/app/hello", 1234, 5678)
    (root / "empty").mkdir()
    if mtime is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                os.utime(os.path.join(dirpath, n), (mtime, mtime), follow_symlinks=False)
    return root


def write(tree: Path, out: Path, config: oci.ImageConfig = CONFIG, level: int = 6) -> oci.OciResult:
    out.parent.mkdir(parents=True, exist_ok=True)
    return oci.write_archive(out, tree, config, REF, "latest", EPOCH, level, out.parent)


def test_bytes_depend_on_content_not_on_creation_order_or_clock(tmp_path: Path) -> None:
    a = write(make_tree(tmp_path / "t1"), tmp_path / "a" / "x.oci.tar")
    # created in reverse order, every mtime after the epoch (clamped) and one before it (kept)
    b = write(make_tree(tmp_path / "t2", reverse=True, mtime=EPOCH + 86400 * 400), tmp_path / "b" / "x.oci.tar")
    assert (tmp_path / "a/x.oci.tar").read_bytes() == (tmp_path / "b/x.oci.tar").read_bytes()
    assert a == b and a.entries == 14
    assert not list((tmp_path / "a").glob("layer*"))  # the scratch layer is gone
    old = make_tree(tmp_path / "t3", mtime=EPOCH - 1000)
    c = write(old, tmp_path / "c" / "x.oci.tar")
    assert c.layer.digest != a.layer.digest  # an mtime before the epoch is the package's own: kept


def test_what_changes_which_digest(tmp_path: Path) -> None:
    base = write(make_tree(tmp_path / "t"), tmp_path / "a" / "x.oci.tar")
    env = write(tmp_path / "t", tmp_path / "b" / "x.oci.tar", oci.ImageConfig(**{**CONFIG.__dict__, "env": ["A=2"]}))
    assert env.layer == base.layer and env.diff_id == base.diff_id
    assert env.config.digest != base.config.digest and env.manifest.digest != base.manifest.digest
    (tmp_path / "t/opt/app/hello").write_bytes(b"hellO\n")
    content = write(tmp_path / "t", tmp_path / "c" / "x.oci.tar")
    assert len({content.layer.digest, base.layer.digest}) == 2 and content.diff_id != base.diff_id
    assert content.config.digest != base.config.digest
    (tmp_path / "t/opt/app/hello").write_bytes(b"hello\n")
    (tmp_path / "t/opt/app/hello").chmod(0o600)
    mode = write(tmp_path / "t", tmp_path / "d" / "x.oci.tar")
    assert mode.diff_id != base.diff_id
    fast = write(tmp_path / "t", tmp_path / "e" / "x.oci.tar", level=1)
    assert fast.diff_id == mode.diff_id and fast.layer.digest != mode.layer.digest  # same content, other compression


def _sha256sum(paths: list[Path]) -> dict[str, str]:
    out = subprocess.run(["sha256sum", *map(str, paths)], capture_output=True, text=True, check=True).stdout
    return {Path(line.split("  ", 1)[1]).name: line.split("  ", 1)[0] for line in out.splitlines()}


def test_gnu_tar_and_sha256sum_agree_with_the_index(tmp_path: Path) -> None:
    res = write(make_tree(tmp_path / "t"), tmp_path / "out" / "x.oci.tar")
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "out/x.oci.tar"), "-C", str(x)], check=True)
    assert sorted(p.name for p in x.iterdir()) == ["blobs", "index.json", "manifest.json", "oci-layout"]
    blobs = sorted((x / "blobs/sha256").iterdir())
    sums = _sha256sum(blobs)
    assert sums == {p.name: p.name for p in blobs}  # every blob is named by its sha256
    assert json.loads((x / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((x / "index.json").read_text())
    [desc] = index["manifests"]
    assert desc["digest"] == res.manifest.digest and desc["annotations"]["io.containerd.image.name"] == REF
    manifest = json.loads((x / "blobs/sha256" / desc["digest"][7:]).read_text())
    assert manifest["config"]["digest"] == res.config.digest and manifest["layers"][0]["digest"] == res.layer.digest
    for d in (manifest["config"], manifest["layers"][0], desc):
        assert (x / "blobs/sha256" / d["digest"][7:]).stat().st_size == d["size"]
    config = json.loads((x / "blobs/sha256" / res.config.digest[7:]).read_text())
    layer = x / "blobs/sha256" / res.layer.digest[7:]
    plain = subprocess.run(["gzip", "-dc", str(layer)], capture_output=True, check=True).stdout
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(plain).hexdigest()]
    assert config["config"] == {"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["echo hi"], "Env": ["A=1", "PATH=/usr/bin"],
                                "User": "app:app", "WorkingDir": "/opt/app"}
    assert config["created"] == "2025-01-01T00:00:00Z" and config["architecture"] == "amd64" and config["os"] == "linux"
    docker = json.loads((x / "manifest.json").read_text())
    assert docker == [{"Config": "blobs/sha256/" + res.config.digest[7:], "RepoTags": [REF],
                       "Layers": ["blobs/sha256/" + res.layer.digest[7:]]}]
    raw = layer.read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\0\0\0\0"  # gzip: no file name, mtime 0


def test_the_layer_as_gnu_tar_lists_it(tmp_path: Path) -> None:
    res = write(make_tree(tmp_path / "t", mtime=EPOCH + 999), tmp_path / "out" / "x.oci.tar")
    x = tmp_path / "x"
    x.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "out/x.oci.tar"), "-C", str(x)], check=True)
    listing = subprocess.run(["tar", "-tvzf", str(x / "blobs/sha256" / res.layer.digest[7:]), "--numeric-owner", "--full-time"],
                             capture_output=True, text=True, check=True, env={**os.environ, "TZ": "UTC", "LC_ALL": "C.UTF-8"}).stdout
    rows = [line.split(None, 5) for line in listing.splitlines()]
    names = [r[5] for r in rows]
    assert names == ["bin -> usr/bin", "empty/", "etc/", "etc/conf", "etc/pipe", "etc/é-utf8", "opt/", "opt/app/", "opt/app/hello",
                     "opt/app/z-last", "usr/", "usr/bin/", "usr/bin/tool", "usr/bin/tool-alias link to usr/bin/tool"]
    by = {r[5].split(" ")[0]: r for r in rows}
    assert by["opt/app/hello"][:2] == ["-rw-r--r--", "1234/5678"]
    assert by["etc/conf"][0] == "-rw-------" and by["usr/bin/tool"][0] == "-rwxr-xr-x" and by["etc/pipe"][0].startswith("p")
    assert by["opt/app/z-last"][2] == "70000"
    assert {(r[3], r[4]) for r in rows} == {("2025-01-01", "00:00:00")}  # clamped to the epoch
    assert all(r[1] in ("0/0", "1234/5678") for r in rows)


def test_read_back_and_tampering_is_found(tmp_path: Path) -> None:
    res = write(make_tree(tmp_path / "t"), tmp_path / "out" / "x.oci.tar")
    arc = oci.read_archive(tmp_path / "out/x.oci.tar")
    assert oci.check_digests(arc) == []
    entries = {e.name: e for e in oci.layer_entries(arc)}
    assert entries["/opt/app/hello"].sha256 == hashlib.sha256(b"hello\n").hexdigest()
    assert entries["/usr/bin/tool-alias"].linkname == "usr/bin/tool" and entries["/bin"].linkname == "usr/bin"
    # one byte of the layer changed: its digest no longer matches
    data = bytearray((tmp_path / "out/x.oci.tar").read_bytes())
    pos = arc.members["blobs/sha256/" + res.layer.digest[7:]].offset_data + 20
    data[pos] ^= 0xFF
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    problems = oci.check_digests(oci.read_archive(tmp_path / "bad.tar"))
    assert problems and problems[0].startswith("layer blob:")


def test_a_socket_cannot_be_archived(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(tree / "sock"))
        with pytest.raises(BuildError, match="/sock: a socket cannot be stored"):
            write(tree, tmp_path / "out" / "x.oci.tar")
    finally:
        s.close()


def test_an_archive_without_an_index_is_named(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text("{}")
    subprocess.run(["tar", "-cf", str(tmp_path / "x.tar"), "-C", str(tmp_path), "oci-layout"], check=True)
    with pytest.raises(ValueError, match=r"x\.tar: no index\.json in the archive"):
        oci.read_archive(tmp_path / "x.tar")
