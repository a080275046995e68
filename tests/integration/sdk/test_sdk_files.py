"""sb.files on a real guest (the shared sandbox): byte-exact round trips, hostile names, listings, exists/remove,
NotFound, a bounded read of an endless file, and a 200 MB file streamed both ways with a few chunks of memory."""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from pathlib import Path

import pytest

from sealbox.errors import NotFound, SandboxError
from sealbox.sdk import Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ODD = ["-lead dash", "sp ace", "q'uote", 'd"q', "$(touch PWNED)", "nl\nname", "tab\tx", "ü中", "*"]


def test_round_trip_every_byte_and_text(box: Sandbox) -> None:
    data = bytes(range(256)) * 257
    assert box.files.write("/tmp/rt/every.bin", data) == len(data)
    assert box.files.read("/tmp/rt/every.bin") == data
    box.files.write("/tmp/rt/t.txt", "héllo\n")
    assert box.files.read_text("/tmp/rt/t.txt") == "héllo\n"
    box.files.write("/tmp/rt/t.txt", b"")  # truncates
    assert box.files.read("/tmp/rt/t.txt") == b""
    box.files.write("/tmp/rt/m.sh", "#!/bin/sh\necho ok\n", mode=0o750)
    assert box.commands.run(["/tmp/rt/m.sh"]).stdout == "ok\n"
    assert {e.name: e.mode for e in box.files.list("/tmp/rt")}["m.sh"] == 0o750


def test_hostile_names(box: Sandbox) -> None:
    box.files.make_dir("/tmp/odd")
    for i, name in enumerate(ODD):
        box.files.write(f"/tmp/odd/{name}", str(i))
    box.files.write("odd-rel/-x", "rel")  # relative: the user's home, leading dash included
    assert box.commands.run(["cat", "/root/odd-rel/-x"]).stdout == "rel"
    entries = box.files.list("/tmp/odd")
    assert sorted(e.name for e in entries) == sorted(ODD)
    for i, name in enumerate(ODD):
        assert box.files.read(f"/tmp/odd/{name}") == str(i).encode()
        assert box.files.exists(f"/tmp/odd/{name}")
    assert not box.files.exists("/tmp/odd/PWNED") and not box.files.exists("PWNED")


def test_list_types_sizes_and_errors(box: Sandbox) -> None:
    box.files.make_dir("/tmp/ls/sub")
    box.files.write("/tmp/ls/f", b"12345")
    box.commands.run(["ln", "-s", "f", "/tmp/ls/link"]).check()
    got = {e.name: (e.type, e.path) for e in box.files.list("/tmp/ls")}
    assert got == {"f": ("file", "/tmp/ls/f"), "sub": ("dir", "/tmp/ls/sub"), "link": ("symlink", "/tmp/ls/link")}
    assert next(e for e in box.files.list("/tmp/ls") if e.name == "f").size == 5
    with pytest.raises(NotFound):
        box.files.list("/tmp/nothing-here")
    with pytest.raises(SandboxError, match="not a directory"):
        box.files.list("/tmp/ls/f")


def test_exists_and_remove(box: Sandbox) -> None:
    box.files.write("/tmp/rm/a/b/c", b"x")
    box.commands.run(["ln", "-s", "/nowhere", "/tmp/rm/dangling"]).check()
    assert box.files.exists("/tmp/rm/dangling")  # a dangling link exists
    box.files.remove("/tmp/rm/dangling")
    assert not box.files.exists("/tmp/rm/dangling")
    with pytest.raises(SandboxError, match="is a directory.*recursive=True"):
        box.files.remove("/tmp/rm/a")
    assert box.files.exists("/tmp/rm/a/b/c")
    box.files.remove("/tmp/rm/a/b/c")
    box.files.remove("/tmp/rm/a/b")  # empty: fine without recursive
    box.files.write("/tmp/rm/a/x/y", b"x")
    box.files.remove("/tmp/rm/a", recursive=True)
    assert not box.files.exists("/tmp/rm/a")
    with pytest.raises(NotFound):
        box.files.remove("/tmp/rm/a")
    with pytest.raises(NotFound):
        box.files.read("/tmp/rm/a")
    with pytest.raises(SandboxError, match="is a directory"):
        box.files.read("/tmp")


def test_errors_from_the_guest_are_reported(box: Sandbox) -> None:
    with pytest.raises(SandboxError, match="Read-only file system"):
        box.files.write("/usr/lib/x", b"x")  # the guest's root is read-only
    with pytest.raises(SandboxError, match="larger than max_bytes"):
        box.files.read("/dev/zero", max_bytes=1 << 20)  # endless: bounded


def _make(path: Path, size: int) -> str:
    """A file of pseudo-random bytes (not compressible), its sha256."""
    h = hashlib.sha256()
    block = hashlib.shake_256(b"sealbox").digest(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            chunk = bytes(b ^ (i & 0xFF) for b in block[:4096]) + block[4096:]
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def test_200_mb_streamed_both_ways(box: Sandbox, tmp_path: Path) -> None:
    size = 200 << 20
    src, back = tmp_path / "big.bin", tmp_path / "back.bin"
    digest = _make(src, size)
    tracemalloc.start()
    try:
        with open(src, "rb") as f:
            assert box.files.write("/tmp/big.bin", f) == size
        _, peak_write = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        assert box.commands.run(["sha256sum", "/tmp/big.bin"], timeout=300).stdout.split()[0] == digest
        with open(back, "wb") as f:
            assert box.files.read_into("/tmp/big.bin", f) == size
        _, peak_read = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        box.files.remove("/tmp/big.bin")
    h = hashlib.sha256()
    with open(back, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    assert h.hexdigest() == digest and os.path.getsize(back) == size
    assert peak_write < 16 << 20 and peak_read < 16 << 20, (peak_write, peak_read)  # streamed, never held


def test_a_failing_reader_ends_the_write(box: Sandbox) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.n = 0

        def read(self, size: int = -1) -> bytes:
            self.n += 1
            if self.n > 3:
                raise OSError("disk gone")
            return b"x" * 1000

    with pytest.raises(OSError, match="disk gone"):
        box.files.write("/tmp/partial", Broken())  # type: ignore[arg-type]
