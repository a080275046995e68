"""Deterministic newc cpio: same tree → same bytes whatever the creation order and newer mtimes; hard links,
symlinks, device nodes, empty dirs, the "." root entry; read_cpio round trip and the real cpio tool agrees."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealbox.errors import BuildError
from sealbox.formats.cpio import read_cpio, write_cpio

EPOCH = 1_735_689_600
OLD = 1_000_000_000  # before the epoch: kept as is
ROOT = os.geteuid() == 0

FILES = {
    "etc/hostname": b"localhost\n",
    "etc/ssh/sshd_config": b"PermitRootLogin prohibit-password\n",
    "usr/bin/tool": b"\x7fELF tool",
    "usr/lib/libx.so.1.2": b"\x7fELF lib",
    "var/empty/.keep": b"",
    "B-upper": b"sorted by bytes",
    "a-b": b"dash sorts before slash",
    "a/b": b"inside a",
}
DIRS = ["empty", "usr/share/empty"]
LINKS = {"usr/lib/libx.so.1": "libx.so.1.2", "bin": "usr/bin", "dangling": "nowhere"}


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A directory on tmpfs when there is one: there readdir returns the newest entry first."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(dir=base, prefix="sealbox-cpio-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_tree(root: Path, order: int, mtime: float | None = None) -> Path:
    """The same content created in a different order (order=1 reverses it); mtime None = now (after the epoch)."""
    root.mkdir()
    items = [("f", p) for p in FILES] + [("d", p) for p in DIRS] + [("l", p) for p in LINKS]
    for kind, rel in (items[::-1] if order else items):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "f":
            path.write_bytes(FILES[rel])
        elif kind == "d":
            path.mkdir(exist_ok=True)
        else:
            path.symlink_to(LINKS[rel])
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-alias")
    os.chmod(root / "usr/bin/tool", 0o755)
    os.chmod(root, 0o755)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755 if os.path.isdir(p) or name.startswith("tool") else 0o644)
            if mtime is not None:
                os.utime(p, (mtime, mtime), follow_symlinks=False)
    return root


def archive(tree: Path, epoch: int = EPOCH) -> bytes:
    buf = io.BytesIO()
    write_cpio(tree, buf, epoch)
    return buf.getvalue()


def test_same_tree_twice_gives_the_same_bytes(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    assert archive(tree) == archive(tree)


def test_creation_order_and_newer_mtimes_do_not_matter(tmpfs: Path) -> None:
    one = make_tree(tmpfs / "one", 0)
    two = make_tree(tmpfs / "two", 1, mtime=EPOCH + 86_400)
    if os.listdir(one / "etc") == os.listdir(two / "etc") and os.listdir(one) == os.listdir(two):
        pytest.skip("this filesystem lists directories in the same order whatever the creation order")
    assert archive(one) == archive(two)


def test_mtimes_after_the_epoch_are_clamped_older_ones_kept(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.utime(tree / "etc/hostname", (OLD, OLD))
    os.utime(tree / "bin", (OLD + 1, OLD + 1), follow_symlinks=False)
    entries = {e.name: e for e in read_cpio(archive(tree))}
    assert entries["etc/hostname"].mtime == OLD
    assert entries["bin"].mtime == OLD + 1
    assert entries["etc/ssh/sshd_config"].mtime == EPOCH
    assert entries["."].mtime == EPOCH


def test_mtime_before_1970_does_not_corrupt_the_header(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.utime(tree / "etc/hostname", (-86_400, -86_400))
    data = archive(tree)
    entries = {e.name: e for e in read_cpio(data)}
    assert entries["etc/hostname"].mtime == 0 and entries["etc/hostname"].data == FILES["etc/hostname"]
    assert _cpio_tool_list(data) == sorted(entries)


def test_entry_order_root_then_dirs_then_links_then_files(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    entries = list(read_cpio(archive(tree)))
    names = [e.name for e in entries]
    assert names[0] == "."
    kinds = [0 if stat.S_ISDIR(e.mode) else 2 if stat.S_ISREG(e.mode) else 1 for e in entries[1:]]
    assert kinds == sorted(kinds)  # every directory before anything that could be unpacked into it
    dirs = [e.name for e in entries[1:] if stat.S_ISDIR(e.mode)]
    assert dirs == sorted(dirs, key=os.fsencode)  # by path bytes: parents first
    links = [e.name for e in entries[1:] if not stat.S_ISDIR(e.mode) and not stat.S_ISREG(e.mode)]
    assert links == sorted(links, key=os.fsencode)


def test_root_entry_carries_the_root_mode_and_owner(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.chmod(tree, 0o700)
    root = next(read_cpio(archive(tree)))
    assert root.name == "." and root.mode == stat.S_IFDIR | 0o700
    st = os.stat(tree)
    assert (root.uid, root.gid) == (st.st_uid, st.st_gid)


def test_round_trip_of_every_entry(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    entries = {e.name: e for e in read_cpio(archive(tree))}
    expected = {"."} | set(FILES) | set(DIRS) | set(LINKS) | {"usr/bin/tool-alias"}
    expected |= {str(parent) for p in list(expected) for parent in Path(p).parents if str(parent) != "."}
    assert set(entries) == expected
    for rel, data in FILES.items():
        assert entries[rel].data == data and stat.S_ISREG(entries[rel].mode)
    for rel, target in LINKS.items():
        assert stat.S_ISLNK(entries[rel].mode) and entries[rel].data == target.encode()
    for rel in DIRS:
        assert stat.S_ISDIR(entries[rel].mode) and entries[rel].data == b""
    assert stat.S_IMODE(entries["usr/bin/tool"].mode) == 0o755
    assert stat.S_IMODE(entries["etc/hostname"].mode) == 0o644
    inodes = [e.ino for e in entries.values() if e.name != "usr/bin/tool-alias"]
    assert len(inodes) == len(set(inodes)) and all(e.rdev == (0, 0) for e in entries.values())


def test_hard_links_store_data_once_with_one_inode(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.link(tree / "usr/bin/tool", tree / "a/tool3")
    data = archive(tree)
    raw = list(_raw_entries(data))
    group = [e for e in raw if e["name"] in ("a/tool3", "usr/bin/tool", "usr/bin/tool-alias")]
    assert len(group) == 3
    assert [e["size"] for e in group] == [len(FILES["usr/bin/tool"]), 0, 0]  # the first entry carries the data
    assert {e["ino"] for e in group} == {group[0]["ino"]} and {e["nlink"] for e in group} == {3}
    parsed = {e.name: e for e in read_cpio(data)}
    assert parsed["usr/bin/tool-alias"].data == FILES["usr/bin/tool"]
    assert data.count(FILES["usr/bin/tool"]) == 1


def test_a_file_linked_from_outside_the_tree_is_an_ordinary_file(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.link(tree / "etc/hostname", tmp_path / "outside")
    e = {e["name"]: e for e in _raw_entries(archive(tree))}["etc/hostname"]
    assert e["nlink"] == 1 and e["size"] == len(FILES["etc/hostname"])


@pytest.mark.skipif(not ROOT, reason="creating device nodes and chown need root")
def test_device_nodes_and_owners(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    (tree / "dev").mkdir()
    os.mknod(tree / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    os.mknod(tree / "dev/vda", 0o660 | stat.S_IFBLK, os.makedev(254, 0))
    os.chown(tree / "etc/hostname", 1000, 1001)
    entries = {e.name: e for e in read_cpio(archive(tree))}
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert stat.S_ISBLK(entries["dev/vda"].mode) and entries["dev/vda"].rdev == (254, 0)
    assert (entries["etc/hostname"].uid, entries["etc/hostname"].gid) == (1000, 1001)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], input=archive(tree), cwd=out, check=True)
    assert os.major(os.lstat(out / "dev/console").st_rdev) == 5
    assert os.lstat(out / "usr/bin/tool").st_ino == os.lstat(out / "usr/bin/tool-alias").st_ino


def test_fifo_is_archived(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    os.mkfifo(tree / "fifo")
    e = {e.name: e for e in read_cpio(archive(tree))}["fifo"]
    assert stat.S_ISFIFO(e.mode) and e.data == b""


def test_file_too_large_for_newc_is_a_clear_error(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    with open(tree / "huge", "wb") as f:
        f.truncate(1 << 32)  # sparse: nothing is written or read
    with pytest.raises(BuildError, match="huge.*4 GiB"):
        archive(tree)


def test_non_utf8_names_round_trip(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    raw_name = os.fsdecode(b"caf\xe9")
    (tree / raw_name).write_bytes(b"latin-1 name")
    names = [e.name for e in read_cpio(archive(tree))]
    assert raw_name in names


def test_the_cpio_tool_reads_the_archive(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "t", 0)
    data = archive(tree)
    assert _cpio_tool_list(data) == sorted(e.name for e in read_cpio(data))
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet"], input=data, cwd=out, check=True)
    for rel, content in FILES.items():
        assert (out / rel).read_bytes() == content
    assert os.readlink(out / "usr/lib/libx.so.1") == "libx.so.1.2"
    assert os.stat(out / "etc/hostname").st_mtime == EPOCH


def test_layout_is_newc_with_4_byte_alignment_and_a_trailer(tmp_path: Path) -> None:
    data = archive(make_tree(tmp_path / "t", 0))
    assert data.startswith(b"070701") and len(data) % 4 == 0
    last = list(_raw_entries(data))[-1]
    assert last["name"] == "TRAILER!!!" and last["size"] == 0


@pytest.mark.parametrize("data", [b"", b"garbage", b"070701" + b"zz" * 60, b"070701" + b"0" * 100])
def test_read_cpio_rejects_malformed_archives(data: bytes) -> None:
    with pytest.raises(BuildError):
        list(read_cpio(data))


def test_read_cpio_rejects_truncation(tmp_path: Path) -> None:
    data = archive(make_tree(tmp_path / "t", 0))
    for cut in (len(data) - 4, len(data) // 2, 200):
        with pytest.raises(BuildError):
            list(read_cpio(data[:cut]))


@settings(max_examples=int(os.environ.get("SEALBOX_FUZZ_EXAMPLES", "100")), deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4))
def test_read_cpio_on_mutated_archives_never_crashes(flips: list[tuple[int, bytes]]) -> None:
    data = bytearray(SEED)
    for pos, chunk in flips:
        pos %= len(data)
        data[pos:pos + len(chunk)] = chunk
    try:
        list(read_cpio(bytes(data)))
    except BuildError as e:
        assert len(str(e).splitlines()) == 1


def _seed() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return archive(make_tree(Path(d) / "t", 0, mtime=OLD))


SEED = _seed()


def _raw_entries(data: bytes) -> Iterator[dict[str, object]]:
    pos = 0
    while True:
        fields = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, size = fields[11], fields[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode(errors="surrogateescape")
        yield {"name": name, "ino": fields[0], "nlink": fields[4], "size": size}
        if name == "TRAILER!!!":
            return
        pos += 110 + namesize
        pos += -pos % 4
        pos += size + (-size % 4)


def _cpio_tool_list(data: bytes) -> list[str]:
    out = subprocess.run(["cpio", "-it", "--quiet"], input=data, capture_output=True, check=True).stdout
    return sorted(os.fsdecode(line) for line in out.splitlines())
