"""The build cache (builder/layers.py, builder/treearchive.py): a stored tree comes back exactly (the writers give
the same bytes), never through a link, only from a verified blob owned by us; concurrent writers and dead
writers leave no torn entry or temp file; eviction keeps the recently used entries."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from sealbox.builder.layers import LIMITS, LayerCache, layer_key
from sealbox.builder.treearchive import BLOB, listing, restore_tree, store_tree
from sealbox.errors import BuildError
from sealbox.formats.cpio import write_cpio

ROOT = os.geteuid() == 0
pytestmark = pytest.mark.skipif(not ROOT, reason="owners, device nodes and security xattrs need root")

EPOCH = 1_735_689_600


def tricky_tree(root: Path) -> Path:
    """What a bootstrapped tree holds: owners, set-id modes, hard links, links of every kind, nodes, xattrs, times."""
    root.mkdir(mode=0o755)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-again")
    (root / "usr/bin/ping").write_bytes(b"\x7fELF ping")
    os.setxattr(root / "usr/bin/ping", "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))  # cap_net_raw+ep, as setcap writes it
    (root / "var/run").parent.mkdir()
    os.symlink("/run", root / "var/run")  # absolute: resolved inside the image, never on the host
    os.symlink("../../etc/passwd", root / "usr/bin/up")
    os.symlink("nowhere", root / "dangling")
    (root / "home/app").mkdir(parents=True)
    (root / "home/app/.profile").write_text("x\n")
    os.chown(root / "home/app", 1234, 1234)
    os.chown(root / "home/app/.profile", 1234, 1234)
    os.chmod(root / "home/app", 0o700)
    (root / "dev").mkdir()
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(root / "dev/fifo", 0o600)
    (root / "empty").mkdir()
    with open(root / "sparse", "wb") as f:
        f.truncate(1 << 20)
        f.seek(4096)
        f.write(b"data")
    for dirpath, dirnames, filenames in os.walk(root):  # mtimes with nanoseconds, some before the epoch
        for i, name in enumerate(sorted(dirnames + filenames)):
            os.utime(os.path.join(dirpath, name), ns=(0, (EPOCH - 1000 + i) * 10**9 + 123456789), follow_symlinks=False)
    os.utime(root, ns=(0, EPOCH * 10**9 + 7))
    return root


def cpio_bytes(tree: Path) -> bytes:
    buf = io.BytesIO()
    write_cpio(tree, buf, EPOCH)
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path: Path) -> LayerCache:
    return LayerCache(tmp_path / "cache")


def test_a_tree_comes_back_exactly(tmp_path: Path, cache: LayerCache) -> None:
    tree = tricky_tree(tmp_path / "tree")
    assert store_tree(cache, "bootstrap", "k1", tree, {"note": "x"})
    entry = cache.lookup("bootstrap", "k1")
    assert entry is not None and entry.meta["note"] == "x"
    restore_tree(entry, tmp_path / "back")
    back = tmp_path / "back"
    assert listing(back) == listing(tree)  # every entry's metadata, the root's too
    assert cpio_bytes(back) == cpio_bytes(tree)
    assert os.getxattr(back / "usr/bin/ping", "security.capability") == os.getxattr(tree / "usr/bin/ping", "security.capability")
    assert os.stat(back / "usr/bin/tool").st_ino == os.stat(back / "usr/bin/tool-again").st_ino
    assert os.readlink(back / "var/run") == "/run" and stat.S_ISCHR(os.lstat(back / "dev/null").st_mode)
    mke2fs = shutil.which("mkfs.ext4")
    if mke2fs:  # the ext4 writer reads the tree as well: the same image from both
        from uuid import UUID

        from sealbox.formats.ext4 import make_ext4

        u = UUID(int=1)
        make_ext4(tree, tmp_path / "a.ext4", u, EPOCH, 1)
        make_ext4(back, tmp_path / "b.ext4", u, EPOCH, 1)
        assert (tmp_path / "a.ext4").read_bytes() == (tmp_path / "b.ext4").read_bytes()


def test_the_listing_sees_what_a_writer_would_see(tmp_path: Path) -> None:
    tree = tricky_tree(tmp_path / "tree")
    before = listing(tree)[0]
    for change in (lambda: os.utime(tree / "empty", ns=(0, 5)), lambda: os.chown(tree / "sparse", 1, 1),
                   lambda: os.setxattr(tree / "sparse", "user.x", b"1"), lambda: os.unlink(tree / "usr/bin/tool-again")):
        change()
        after = listing(tree)[0]
        assert after != before
        before = after


def test_a_tampered_blob_is_refused_and_nothing_is_restored(tmp_path: Path, cache: LayerCache) -> None:
    tree = tricky_tree(tmp_path / "tree")
    store_tree(cache, "tree", "k", tree, {})
    entry = cache.lookup("tree", "k")
    assert entry is not None
    blob = cache.blob_path(entry.blobs[BLOB]["sha256"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(BuildError, match="does not match its sha256"):
        restore_tree(entry, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_a_blob_someone_else_owns_or_may_write_is_refused(tmp_path: Path, cache: LayerCache) -> None:
    cache.store("segment", "s", {"data": b"compressed"}, {})
    entry = cache.lookup("segment", "s")
    assert entry is not None and entry.read("data") == b"compressed"
    blob = cache.blob_path(entry.blobs["data"]["sha256"])
    os.chmod(blob, 0o666)
    with pytest.raises(BuildError, match="not a private regular file"):
        entry.read("data")
    os.chmod(blob, 0o600)
    os.chown(blob, 4321, 4321)
    with pytest.raises(BuildError, match="not a private regular file"):
        entry.read("data")


def test_a_cache_root_someone_else_controls_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    root.mkdir(mode=0o777)
    os.chmod(root, 0o777)
    with pytest.raises(BuildError, match="writable only by it"):
        LayerCache(root).lookup("tree", "k")


def _evil_tar(outside: Path) -> bytes:
    """A tar whose second member would be written through the first (a link out of the tree)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        link = tarfile.TarInfo("escape")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        t.addfile(link)
        payload = b"written outside the tree\n"
        member = tarfile.TarInfo("escape/pwned")
        member.size = len(payload)
        t.addfile(member, io.BytesIO(payload))
    return buf.getvalue()


def test_restore_never_writes_through_a_link_even_from_a_forged_entry(tmp_path: Path, cache: LayerCache) -> None:
    """Even a blob that passes every check (an attacker who rewrote blob and key file alike) cannot make the restore
    write outside the destination: GNU tar creates a link pointing out of the tree only after the other members."""
    outside = tmp_path / "outside"
    outside.mkdir()
    cache.store("tree", "forged", {BLOB: _evil_tar(outside)}, {"listing": "whatever"})
    entry = cache.lookup("tree", "forged")
    assert entry is not None
    with pytest.raises(BuildError):
        restore_tree(entry, tmp_path / "back")
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "back").exists()


def test_storing_never_follows_a_link(tmp_path: Path, cache: LayerCache) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    secret = tmp_path / "host-secret"
    secret.write_text("host file\n")
    os.symlink(secret, tree / "link")
    os.symlink("/", tree / "root-link")
    store_tree(cache, "tree", "k", tree, {})
    entry = cache.lookup("tree", "k")
    assert entry is not None
    with tarfile.open(fileobj=io.BytesIO(entry.read(BLOB))) as t:
        members = t.getmembers()
    assert {m.name.removeprefix("./") for m in members if m.issym()} == {"link", "root-link"}
    assert not [m for m in members if m.isfile()], "a link's target was archived"


def test_a_socket_is_not_stored(tmp_path: Path, cache: LayerCache) -> None:
    import socket

    tree = tmp_path / "t"
    tree.mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tree / "sock"))
    try:
        assert store_tree(cache, "tree", "k", tree, {}) is False
    finally:
        s.close()
    assert cache.lookup("tree", "k") is None


def test_disabled_or_not_reused(tmp_path: Path) -> None:
    off = LayerCache(tmp_path / "off", enabled=False)
    off.store("segment", "s", {"data": b"x"}, {})
    assert off.lookup("segment", "s") is None and not (tmp_path / "off").exists()
    only = LayerCache(tmp_path / "c", reuse=frozenset({"bootstrap"}))
    only.store("segment", "s", {"data": b"x"}, {})  # written ...
    assert only.lookup("segment", "s") is None  # ... but not read by this build
    assert LayerCache(tmp_path / "c").lookup("segment", "s") is not None


def test_eviction_keeps_the_recently_used(tmp_path: Path, cache: LayerCache) -> None:
    limit = LIMITS["loader"]
    for i in range(limit):
        cache.store("loader", f"k{i}", {"data": f"blob {i}".encode()}, {})
        os.utime(cache.root / "keys/loader" / f"k{i}.json", (time.time() - 1000 + i, time.time() - 1000 + i))
    assert cache.lookup("loader", "k0") is not None  # used now: the newest
    cache.store("loader", "new", {"data": b"new"}, {})
    kept = sorted(p.stem for p in (cache.root / "keys/loader").glob("*.json"))
    assert kept == sorted(["k0", *[f"k{i}" for i in range(2, limit)], "new"])
    assert len(list((cache.root / "blobs").iterdir())) == limit  # k1's blob went with it


def _writer(root: str, w: int, rounds: int) -> None:
    cache = LayerCache(Path(root))
    for r in range(rounds):
        cache.store("segment", layer_key("segment", {"w": w, "r": r % 3}), {"data": os.urandom(4096) + bytes([w])}, {"w": w})
        cache.store("segment", "shared", {"data": b"S" * (1 << 20)}, {})


def test_concurrent_writers_leave_only_whole_entries(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(root), w, 12)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = LayerCache(root)
    keys = list((root / "keys/segment").glob("*.json"))
    assert 0 < len(keys) <= LIMITS["segment"]
    for k in keys:
        entry = cache.lookup("segment", k.stem)
        assert entry is not None
        entry.read("data")  # whole and matching its digest
    assert not [p.name for p in (root / "blobs").iterdir() if p.name.startswith(".")]
    assert not [p.name for p in (root / "keys/segment").iterdir() if not p.name.endswith(".json")]


def test_a_killed_writer_leaves_a_temp_file_the_next_store_removes(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    code = ("import sys, time; from pathlib import Path; from sealbox.builder.layers import LayerCache\n"
            "c = LayerCache(Path(sys.argv[1]))\n"
            "with c.new_blob() as t:\n    print(t.path, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([os.sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())  # type: ignore[union-attr]
    assert tmp.exists()
    LayerCache(root).store("segment", "a", {"data": b"a"}, {})
    assert tmp.exists(), "a live writer's temp file was removed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    LayerCache(root).store("segment", "b", {"data": b"b"}, {})
    assert not tmp.exists()


def test_a_broken_key_file_is_a_miss_and_is_dropped(tmp_path: Path, cache: LayerCache) -> None:
    cache.store("kernel", "k", {"data": b"x"}, {})
    path = cache.root / "keys/kernel/k.json"
    doc = json.loads(path.read_text())
    doc["key"] = "other"
    path.write_text(json.dumps(doc))
    assert cache.lookup("kernel", "k") is None
    assert not path.exists()


def test_a_store_interrupted_by_sigterm_leaves_nothing(tmp_path: Path) -> None:
    """SIGTERM while tar is writing a layer: the build's handler unwinds, tar's group is stopped, the temp blob is
    removed and no key file appears. (tar is replaced by a STAND-IN that writes a little and then hangs, so the
    signal lands mid-write every time.)"""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tar").write_text('#!/bin/sh\nfor a in "$@"; do case $a in --file=*) f=${a#--file=} ;; esac; done\n'
                              'head -c 65536 /dev/zero > "$f"\nexec sleep 60\n')
    (fake / "tar").chmod(0o755)
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("x\n")
    root = tmp_path / "cache"
    code = ("import sys; from pathlib import Path\n"
            "from sealbox.builder.interrupt import Interrupted, signals_raise\n"
            "from sealbox.builder.layers import LayerCache\nfrom sealbox.builder.treearchive import store_tree\n"
            "try:\n    with signals_raise():\n        store_tree(LayerCache(Path(sys.argv[1])), 'tree', 'k', Path(sys.argv[2]), {})\n"
            "except Interrupted as e:\n    sys.exit(e.exit_code)\n")
    env = {**os.environ, "PATH": f"{fake}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([os.sys.executable, "-c", code, str(root), str(tree)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temps = list((root / "blobs").glob(".tmp-*")) if (root / "blobs").is_dir() else []
        if temps and temps[0].stat().st_size == 65536:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("the stand-in tar never wrote its temp blob")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 143
    assert list((root / "blobs").iterdir()) == [] and list((root / "keys/tree").iterdir()) == []
