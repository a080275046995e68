"""zstd: the output depends only on the input and the level — not on the worker count or how it was written."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sealbox.formats import compress
from sealbox.formats.compress import zstd_decompress, zstd_writer


def _data(size: int) -> bytes:
    """Compressible but not trivial: hash-chained blocks with repeats, like a file system image."""
    out, h = bytearray(), b"seed"
    while len(out) < size:
        h = hashlib.sha256(h).digest()
        out += h * (1 + h[0] % 8) + bytes(h[1] % 64)
    return bytes(out[:size])


# Level 1 has a 512 KiB window, so 5 MiB spans several multi-threading jobs (a level-19 job is 32 MiB+).
BIG = _data(5 << 20)


def _compress(path: Path, data: bytes, level: int, chunk: int) -> bytes:
    with zstd_writer(path, level) as w:
        for i in range(0, len(data), chunk):
            w.write(data[i:i + chunk])
    return path.read_bytes()


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_same_bytes_for_any_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setattr(compress, "WORKERS", 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    reference = _compress(tmp_path / "ref.zst", BIG, 1, 1 << 16)
    monkeypatch.setattr(compress, "WORKERS", workers)
    monkeypatch.setattr(os, "cpu_count", lambda: workers)
    assert _compress(tmp_path / "w.zst", BIG, 1, 1 << 16) == reference


@pytest.mark.parametrize("chunk", [1, 4096, 1 << 20, len(BIG)])
def test_same_bytes_however_the_input_is_written(tmp_path: Path, chunk: int) -> None:
    data = BIG[: 1 << 16] if chunk == 1 else BIG  # byte-at-a-time on a smaller input keeps the test quick
    reference = _compress(tmp_path / "ref.zst", data, 3, len(data))
    assert _compress(tmp_path / "c.zst", data, 3, chunk) == reference


def test_level_changes_the_output_and_round_trips(tmp_path: Path) -> None:
    data = BIG[: 1 << 18]
    low = _compress(tmp_path / "l.zst", data, 1, 1 << 16)
    high = _compress(tmp_path / "h.zst", data, 19, 1 << 16)
    assert low != high and len(high) <= len(low)
    assert zstd_decompress(tmp_path / "l.zst") == data == zstd_decompress(tmp_path / "h.zst")


def test_empty_input(tmp_path: Path) -> None:
    _compress(tmp_path / "e.zst", b"", 19, 1)
    assert zstd_decompress(tmp_path / "e.zst") == b""


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd command not installed")
def test_the_zstd_tool_checks_and_decodes_it(tmp_path: Path) -> None:
    _compress(tmp_path / "b.zst", BIG, 1, 1 << 16)
    out = subprocess.run(["zstd", "-dc", str(tmp_path / "b.zst")], capture_output=True, check=True).stdout
    assert out == BIG
    # a content checksum is present (zstd -lv prints the frame's stored XXH64 low word: the file's last 4 bytes)...
    info = subprocess.run(["zstd", "-lv", str(tmp_path / "b.zst")], capture_output=True, text=True, check=True).stdout
    stored = struct.unpack("<I", (tmp_path / "b.zst").read_bytes()[-4:])[0]
    check = re.search(r"^Check: XXH64 ([0-9a-f]{8})$", info, re.M)
    assert check and check.group(1) == f"{stored:08x}", info
    # ...and checked: one flipped bit in it makes zstd refuse the file
    bad = bytearray((tmp_path / "b.zst").read_bytes())
    bad[-1] ^= 1
    (tmp_path / "bad.zst").write_bytes(bad)
    test = subprocess.run(["zstd", "-t", str(tmp_path / "bad.zst")], capture_output=True, text=True)
    assert test.returncode != 0 and "checksum" in test.stderr, test.stderr
