"""Deterministic ext4 via the real mkfs.ext4: same tree (any creation order, any time) → same image bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealbox.formats.ext4 import make_ext4

PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
TOOLS = {t: shutil.which(t, path=PATH) for t in ("mkfs.ext4", "debugfs", "e2fsck")}
pytestmark = pytest.mark.skipif(not all(TOOLS.values()), reason="needs e2fsprogs (mkfs.ext4, debugfs, e2fsck)")

EPOCH = 1_735_689_600
OLD = 1_000_000_000
UUID = uuid.UUID("5ea1b0c5-0000-4000-8000-000000000001")
FILES = {f"d{i % 4}/f{i}": bytes([i % 251]) * (i * 37) for i in range(40)} | {"etc/hostname": b"localhost\n"}


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(dir=base, prefix="sealbox-ext4-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_tree(root: Path, reverse: bool) -> Path:
    root.mkdir()
    for rel, data in (reversed(FILES.items()) if reverse else FILES.items()):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "empty").mkdir()
    (root / "lib").symlink_to("usr/lib")
    os.link(root / "etc/hostname", root / "etc/hostname.alias")
    os.utime(root / "etc/hostname", (OLD, OLD))  # older than the epoch: kept
    os.chmod(root, 0o755)
    return root


def image(tree: Path, out: Path, fs_uuid: uuid.UUID = UUID) -> bytes:
    make_ext4(tree, out, fs_uuid, EPOCH, extra_mib=0)
    return out.read_bytes()


def debugfs(img: Path, request: str) -> str:
    return subprocess.run([TOOLS["debugfs"], "-R", request, str(img)], capture_output=True, text=True, check=True).stdout


def _next_second() -> None:
    time.sleep(1.05 - time.time() % 1)


def test_same_tree_in_another_order_and_second_gives_identical_bytes(tmpfs: Path, tmp_path: Path) -> None:
    one = make_tree(tmpfs / "one", reverse=False)
    first = image(one, tmp_path / "one.img")
    _next_second()  # the second tree's inodes change at another time (ctime) and are read at another time (atime)
    two = make_tree(tmpfs / "two", reverse=True)
    (two / "etc/hostname").read_bytes()
    assert image(two, tmp_path / "two.img") == first
    assert image(one, tmp_path / "again.img") == first


def test_another_uuid_gives_another_image(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", reverse=False)
    a = image(tree, tmp_path / "a.img")
    b = image(tree, tmp_path / "b.img", uuid.UUID(int=UUID.int + 1))
    assert a != b
    head = subprocess.run([TOOLS["debugfs"], "-R", "stats", str(tmp_path / "b.img")], capture_output=True, text=True).stdout
    assert str(uuid.UUID(int=UUID.int + 1)) in head


def test_filesystem_is_clean_and_holds_the_tree(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", reverse=False)
    img = tmp_path / "r.img"
    image(tree, img)
    subprocess.run([TOOLS["e2fsck"], "-fn", str(img)], capture_output=True, check=True)
    for rel in ("etc/hostname", "d1/f9", "d3/f39"):
        cat = subprocess.run([TOOLS["debugfs"], "-R", f"cat /{rel}", str(img)], capture_output=True, check=True).stdout
        assert cat == FILES[rel], rel
    assert "Fast link dest: \"usr/lib\"" in debugfs(img, "stat /lib")
    assert "Links: 2" in debugfs(img, "stat /etc/hostname.alias")
    assert "empty" in debugfs(img, "ls /")
    stats = debugfs(img, "stats")
    assert "sealbox-root" in stats and str(UUID) in stats
    assert re.search(r"Filesystem created:\s+Wed Jan  1 00:00:00 2025", stats)


def test_inode_times_are_fixed_by_the_epoch(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", reverse=False)
    img = tmp_path / "r.img"
    image(tree, img)

    def times(path: str) -> dict[str, int]:
        out = debugfs(img, f"stat {path}")
        return {k: int(v, 16) for k, v in re.findall(r"(\w*time):\s+0x([0-9a-f]+)", out)}

    assert times("/etc/hostname") == {"ctime": EPOCH, "atime": EPOCH, "mtime": OLD, "crtime": EPOCH}
    assert times("/d0/f0") == {"ctime": EPOCH, "atime": EPOCH, "mtime": EPOCH, "crtime": EPOCH}  # made now: clamped
    assert times("/")["ctime"] == EPOCH and times("/lib")["mtime"] == EPOCH


def test_a_tree_with_many_small_files_fits_without_extra_space(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    for i in range(600):
        p = tree / f"dir{i % 60}" / f"file{i}"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (i % 5000))
    (tree / "big").write_bytes(b"\1" * (3 << 20))
    img = tmp_path / "r.img"
    make_ext4(tree, img, UUID, EPOCH, extra_mib=0)
    subprocess.run([TOOLS["e2fsck"], "-fn", str(img)], capture_output=True, check=True)
    assert img.stat().st_size % (1 << 20) == 0
