"""Fixtures for runtime unit tests: a fake image directory (real manifest, placeholder boot files)
and a state directory in tmp. Nothing here needs root or boots anything."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sealbox.sandbox.state import StateDir

FILES = {
    "vmlinuz": b"MZ" + b"k" * 1022,
    "vmlinux": b"\x7fELF" + b"e" * 1020,
    "initrd.cpio.zst": b"i" * 2048,
    "rootfs.ext4": b"r" * 4096,
    "loader.cpio.zst": b"l" * 512,
    "demo.efi": b"MZ" + b"u" * 510,
}
BOOT = {"vmlinuz": "vmlinuz", "vmlinux": "vmlinux", "initrd": "initrd.cpio.zst", "rootfs": "rootfs.ext4",
        "loader": "loader.cpio.zst", "uki": "demo.efi", "guest_protocol": 1}


def write_image(d: Path, *, boot: dict[str, Any] | None = None, files: dict[str, bytes] | None = None,
                cmdline: list[str] | None = None, **extra: Any) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    files = FILES if files is None else files
    for name, data in files.items():
        (d / name).write_bytes(data)
        (d / name).chmod(0o644)
    manifest = {
        "schema": "sealbox.manifest/v1", "name": "demo",
        "kernel": {"version": "6.1.0-99-cloud-amd64", "cmdline": cmdline if cmdline is not None else ["console=ttyS0", "quiet"]},
        "boot": BOOT if boot is None else boot,
        "artifacts": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()},
        **extra,
    }
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_image(tmp_path / "image")


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., Path]:
    def factory(name: str = "img", **kw: Any) -> Path:
        return write_image(tmp_path / name, **kw)

    return factory


@pytest.fixture
def state(tmp_path: Path) -> StateDir:
    return StateDir(tmp_path / "state")
