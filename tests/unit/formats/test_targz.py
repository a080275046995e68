"""GNU tar.gz writer: fixed metadata, GNU magic, gzip header without time or name; GNU tar as the reader."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from sealbox.formats.targz import file_chunks, write_targz

EPOCH = 1_735_689_600


def _src(tmp_path: Path) -> Path:
    src = tmp_path / "in.raw"
    src.write_bytes(b"x" * 1000 + bytes(5000))
    return src


def test_member_metadata_and_format(tmp_path: Path) -> None:
    out = tmp_path / "a.tar.gz"
    write_targz(out, "disk.raw", 6000, file_chunks(_src(tmp_path)), EPOCH)
    raw = out.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0  # no FNAME/FEXTRA/FCOMMENT flags
    assert raw[4:8] == bytes(4)  # gzip mtime 0
    plain = gzip.decompress(raw)
    assert plain[257:265] == b"ustar  \x00"  # GNU (oldgnu) magic, as GCP's import expects
    assert len(plain) % (20 * 512) == 0
    with tarfile.open(out) as t:
        (m,) = t.getmembers()
        assert (m.name, m.size, m.mtime, m.mode, m.uid, m.gid, m.uname, m.gname) == ("disk.raw", 6000, EPOCH, 0o644, 0, 0, "", "")
        assert t.extractfile(m).read() == _src(tmp_path).read_bytes()  # type: ignore[union-attr]


def test_same_input_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    write_targz(a, "disk.raw", 6000, file_chunks(_src(tmp_path)), EPOCH)
    write_targz(b, "disk.raw", 6000, file_chunks(_src(tmp_path)), EPOCH)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.skipif(shutil.which("tar") is None, reason="GNU tar is not installed")
def test_gnu_tar_lists_and_extracts(tmp_path: Path) -> None:
    out = tmp_path / "a.tar.gz"
    write_targz(out, "disk.raw", 6000, file_chunks(_src(tmp_path)), EPOCH)
    listing = subprocess.run(["tar", "--full-time", "-tvzf", str(out)], capture_output=True, text=True, check=True, timeout=60,
                             env={**os.environ, "TZ": "UTC"}).stdout
    assert "0/0" in listing and "6000 2025-01-01 00:00:00 disk.raw" in listing, listing
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xzf", str(out), "-C", str(dest)], check=True, timeout=60)
    assert (dest / "disk.raw").read_bytes() == _src(tmp_path).read_bytes()


def test_announced_size_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="6000 bytes of content, 7000 announced"):
        write_targz(tmp_path / "a.tar.gz", "disk.raw", 7000, file_chunks(_src(tmp_path)), EPOCH)
