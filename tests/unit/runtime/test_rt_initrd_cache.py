"""The decompressed-initramfs cache: identical bytes, checked against the manifest digest, pruned by gc."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import zstandard

from sealbox.errors import SandboxError
from sealbox.sandbox import initrd_cache


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SEALBOX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "initrd"


def _zst(tmp_path: Path, payload: bytes) -> tuple[Path, str]:
    p = tmp_path / "initrd.cpio.zst"
    p.write_bytes(zstandard.ZstdCompressor(level=3).compress(payload))
    return p, hashlib.sha256(p.read_bytes()).hexdigest()


def test_copy_is_the_exact_archive_and_is_reused(tmp_path: Path, cache: Path) -> None:
    payload = os.urandom(200_000) * 3
    src, digest = _zst(tmp_path, payload)
    out = initrd_cache.ensure_plain(src, digest)
    assert out == cache / f"{digest}.cpio" and out.read_bytes() == payload
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    src.unlink()  # a cache hit does not read the image file again
    assert initrd_cache.ensure_plain(src, digest) == out


def test_digest_mismatch_is_refused_and_nothing_is_kept(tmp_path: Path, cache: Path) -> None:
    src, _ = _zst(tmp_path, b"cpio data")
    with pytest.raises(SandboxError, match="does not match the sha256"):
        initrd_cache.ensure_plain(src, "0" * 64)
    assert not list(cache.glob("*")) if cache.exists() else True


def test_garbage_is_a_clear_error(tmp_path: Path, cache: Path) -> None:
    bad = tmp_path / "initrd.cpio.zst"
    bad.write_bytes(b"not zstd at all")
    with pytest.raises(SandboxError, match="not a valid zstd stream"):
        initrd_cache.ensure_plain(bad, hashlib.sha256(bad.read_bytes()).hexdigest())


def test_prune_keeps_named_and_recently_used_copies(tmp_path: Path, cache: Path) -> None:
    cache.mkdir(parents=True)
    old = time.time() - 7200
    for name in ("keep", "stale", "fresh"):
        (cache / f"{name}.cpio").write_bytes(b"x")
    for name in ("keep", "stale"):
        os.utime(cache / f"{name}.cpio", (old, old))
    removed = initrd_cache.prune({"keep"})
    assert [p.name for p in removed] == ["stale.cpio"]
    assert sorted(p.name for p in cache.iterdir()) == ["fresh.cpio", "keep.cpio"]
