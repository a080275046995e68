"""dm-verity hash tree for a verity root: deterministic (salt and UUID from the data), checked by veritysetup."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sealbox.builder import verity

PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
pytestmark = pytest.mark.skipif(shutil.which("veritysetup", path=PATH) is None, reason="needs cryptsetup-bin (veritysetup)")


def _verify(data: Path, tree: Path, roothash: str) -> int:
    return subprocess.run(["veritysetup", "verify", str(data), str(tree), roothash], capture_output=True, timeout=120,
                          env={**os.environ, "PATH": PATH}).returncode


def test_tree_is_deterministic_and_verifies(tmp_path: Path) -> None:
    data = tmp_path / "rootfs.ext4"
    data.write_bytes(os.urandom(1 << 20) + bytes(3 << 20))
    a = verity.hash_tree(data, tmp_path / "a.verity")
    b = verity.hash_tree(data, tmp_path / "b.verity")
    assert a.roothash == b.roothash and (tmp_path / "a.verity").read_bytes() == (tmp_path / "b.verity").read_bytes()
    assert a.data_blocks == 1024 and len(a.salt) == 64 and a.cmdline_args == [f"roothash={a.roothash}", f"sealbox.verity=1024:{a.salt}"]
    assert _verify(data, tmp_path / "a.verity", a.roothash) == 0
    raw = bytearray(data.read_bytes())
    raw[5000] ^= 1
    data.write_bytes(bytes(raw))
    assert _verify(data, tmp_path / "a.verity", a.roothash) != 0  # one flipped bit is found
    other = verity.hash_tree(data, tmp_path / "c.verity")
    assert other.roothash != a.roothash and other.salt != a.salt  # the salt follows the data


def test_size_must_be_whole_blocks(tmp_path: Path) -> None:
    from sealbox.errors import BuildError

    data = tmp_path / "odd"
    data.write_bytes(bytes(5000))
    with pytest.raises(BuildError, match="multiple of 4096"):
        verity.hash_tree(data, tmp_path / "x")
