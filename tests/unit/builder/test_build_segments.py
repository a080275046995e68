"""The segmented initrd (builder/segments.py): a partition of the tree that the kernel unpacks to exactly the
tree, cached by content so that an edit recompresses only what it touches, and the same bytes whatever the
cache held. (The real kernel unpacking a segmented image is the boot tests' job.)"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest
import zstandard

from sealbox.builder.layers import LayerCache
from sealbox.builder.segments import SEGMENTS, compress, config_roots, partition, write_initrd
from sealbox.formats.cpio import plan_cpio, read_cpio, write_cpio

EPOCH = 1_735_689_600
CODE = {"sealbox": "test", "code": "test"}
ROOT = os.geteuid() == 0


def image_tree(root: Path) -> Path:
    files = {
        "usr/lib/x86_64-linux-gnu/libc.so.6": b"\x7fELF libc" + os.urandom(3000),
        "usr/bin/bash": b"\x7fELF bash" + os.urandom(3000),
        "usr/lib/systemd/systemd": b"\x7fELF systemd",
        "usr/share/doc/bash/copyright": b"GPL\n",
        "usr/lib/modules/6.1.0/kernel/virtio.ko": b"\x7fELF module",
        "usr/lib/modules/6.1.0/modules.dep": b"kernel/virtio.ko:\n",
        "etc/passwd": b"root:x:0:0::/root:/bin/sh\n",
        "etc/systemd/system/multi-user.target.wants/.keep": b"",
        "home/app/.profile": b"x\n",
        "var/lib/dpkg/status": b"Package: bash\n",
        "opt/app/run": b"#!/bin/sh\necho app\n",
        "usr/lib/sealbox/ready": b"#!/bin/sh\n",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink("usr/lib", root / "lib")
    os.symlink("/run", root / "var/run")
    os.link(root / "usr/bin/bash", root / "usr/bin/rbash")
    os.link(root / "etc/passwd", root / "usr/bin/passwd-copy")  # a group across the configuration boundary
    (root / "empty").mkdir()
    if ROOT:
        os.mknod(root / "usr/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return root


def unpack(data: bytes) -> dict[str, tuple[int, int, int, int, bytes]]:
    """What the kernel ends up with: archives in order, a later entry for a path replacing an earlier one."""
    return {e.name: (e.mode, e.uid, e.gid, e.mtime, e.data) for e in read_cpio(data)}


def frames(path: Path) -> list[bytes]:
    data, out = path.read_bytes(), []
    while data:
        size = zstandard.frame_content_size(data)
        obj = zstandard.ZstdDecompressor().decompressobj()
        out.append(obj.decompress(data))
        data = obj.unused_data
        assert size == len(out[-1])
    return out


def test_the_partition_covers_the_tree_once_in_an_order_the_kernel_can_unpack(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    paths, stats = plan_cpio(tree)
    segs = partition(tree, paths, stats, config_roots(tree, ["/opt/app"]))
    names = [s.name for s in segs]
    assert names == [n for n in SEGMENTS if n in names] and names[0] == "base" and names[-1] == "config"
    seen: list[str] = [p for s in segs for p in s.paths]
    assert sorted(seen) == sorted(paths) and len(seen) == len(set(seen))
    position = {p: i for i, p in enumerate(seen)}
    for p in seen:  # every directory before what is unpacked into it
        parent = os.path.dirname(p)
        if parent:
            assert position[parent] < position[p], p
    where = {p: s.name for s in segs for p in s.paths}
    for group in (("usr/bin/bash", "usr/bin/rbash"), ("etc/passwd", "usr/bin/passwd-copy")):
        assert where[group[0]] == where[group[1]], f"hard links split across segments: {group}"
    assert where["usr/lib/x86_64-linux-gnu/libc.so.6"] == "libraries" and where["usr/lib/systemd/systemd"] == "programs"
    assert where["usr/lib/modules/6.1.0/modules.dep"] == "kernel" and where["usr/share/doc/bash/copyright"] == "data"
    for p in ("etc", "etc/passwd", "home/app/.profile", "var/run", "opt/app", "opt/app/run", "usr/lib/sealbox/ready"):
        assert where[p] == "config", p
    assert where["."] == "base" and where["opt"] == "base" and where["lib"] == "base"


def test_a_destination_behind_a_link_is_configuration_where_the_image_puts_it(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    (tree / "usr/lib/app").mkdir()
    assert "usr/lib/app" in config_roots(tree, ["/lib/app"])  # /lib -> usr/lib, resolved inside the tree


def test_segments_unpack_to_what_one_archive_holds(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    out = tmp_path / "initrd.cpio.zst"
    record = write_initrd(tree, out, EPOCH, 3, ["/opt/app"], LayerCache(tmp_path / "cache"), CODE)
    one = io.BytesIO()
    write_cpio(tree, one, EPOCH)
    assert unpack(b"".join(frames(out))) == unpack(one.getvalue())
    assert [r["name"] for r in record] == [s.name for s in partition(tree, *plan_cpio(tree), config_roots(tree, ["/opt/app"]))]
    assert sum(r["bytes"] for r in record) == out.stat().st_size


def test_an_edit_recompresses_only_its_segment_and_gives_the_cold_bytes(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    cache = LayerCache(tmp_path / "cache")
    write_initrd(tree, tmp_path / "first", EPOCH, 3, ["/opt/app"], cache, CODE)
    before = frames(tmp_path / "first")
    (tree / "opt/app/run").write_bytes(b"#!/bin/sh\necho changed\n")
    os.chmod(tree / "opt/app/run", 0o700)
    cache.log.clear()
    write_initrd(tree, tmp_path / "warm", EPOCH, 3, ["/opt/app"], cache, CODE)
    assert cache.log[-1]["compressed"] == ["config"]
    write_initrd(tree, tmp_path / "cold", EPOCH, 3, ["/opt/app"], LayerCache(tmp_path / "other", enabled=False), CODE)
    assert (tmp_path / "warm").read_bytes() == (tmp_path / "cold").read_bytes()
    after = frames(tmp_path / "warm")
    assert after[:-1] == before[:-1] and after[-1] != before[-1]


def test_a_tampered_segment_is_not_used(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "tree")
    cache = LayerCache(tmp_path / "cache")
    write_initrd(tree, tmp_path / "first", EPOCH, 3, [], cache, CODE)
    for blob in (cache.root / "blobs").iterdir():  # every cached frame replaced by a valid frame of other bytes
        key_docs = list((cache.root / "keys/segment").glob("*.json"))
        assert key_docs
        blob.write_bytes(zstandard.ZstdCompressor().compress(b"forged"))
    cache.log.clear()
    write_initrd(tree, tmp_path / "again", EPOCH, 3, [], cache, CODE)
    assert (tmp_path / "again").read_bytes() == (tmp_path / "first").read_bytes()
    assert any(e["action"] == "rejected" for e in cache.log)


def test_a_forged_entry_whose_digests_match_is_not_used(tmp_path: Path) -> None:
    """Blob and key file rewritten alike (the blob's digest checks out): the frame must still decompress to the
    segment's exact archive."""
    import hashlib
    import json

    tree = image_tree(tmp_path / "tree")
    cache = LayerCache(tmp_path / "cache")
    write_initrd(tree, tmp_path / "first", EPOCH, 3, [], cache, CODE)
    forged = zstandard.ZstdCompressor().compress(b"forged")
    digest = hashlib.sha256(forged).hexdigest()
    cache.blob_path(digest).write_bytes(forged)
    os.chmod(cache.blob_path(digest), 0o600)
    for key in (cache.root / "keys/segment").glob("*.json"):
        doc = json.loads(key.read_text())
        doc["blobs"]["zst"] = {"sha256": digest, "size": len(forged)}
        key.write_text(json.dumps(doc))
    cache.log.clear()
    write_initrd(tree, tmp_path / "again", EPOCH, 3, [], cache, CODE)
    assert (tmp_path / "again").read_bytes() == (tmp_path / "first").read_bytes()
    assert any(e["action"] == "rejected" and "other bytes" in e["why"] for e in cache.log)


def test_the_same_frame_for_any_number_of_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """zstd's multi-threaded mode gives the same bytes for any worker count >= 1 (data over several jobs)."""
    data = b"".join(os.urandom(64) * 97 + bytes([i % 256]) * 4000 for i in range(3000))
    one = zstandard.ZstdCompressor(level=1, threads=1, write_checksum=True).compress(data)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert compress(data, 1) == one


def test_apt_state_removed_early_is_what_strip_removes_later(tmp_path: Path) -> None:
    """The bootstrap step drops apt's lists and caches at once (the bootstrap layer need not carry them): with
    the same keep rules, the stripped tree has exactly the paths it has when the strip step removes them."""
    from sealbox.builder.strip import APT_STATE, remove_early, strip_tree
    from sealbox.spec.model import Strip

    def tree(root: Path) -> Path:
        for rel in ("var/lib/apt/lists/deb_Packages", "var/lib/apt/lists/partial/x", "var/cache/apt/pkgcache.bin",
                    "var/cache/apt/keep.me", "var/lib/apt/extended_states", "usr/bin/sh"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"x")
        return root

    def paths(root: Path) -> list[str]:
        return sorted(str(p.relative_to(root)) for p in root.rglob("*"))

    cfg = Strip(package_manager=False, keep=["/var/cache/apt/keep.me"])
    early, late = tree(tmp_path / "early"), tree(tmp_path / "late")
    assert remove_early(early, APT_STATE, cfg) > 0
    assert (early / "var/cache/apt/keep.me").exists() and not (early / "var/lib/apt/lists/partial").exists()
    strip_tree(early, cfg)
    strip_tree(late, cfg)
    assert paths(early) == paths(late)
