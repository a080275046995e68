"""Image directory + manifest validation, and which boot files each backend/mode uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sealbox.errors import UsageError
from sealbox.sandbox import image


def test_loads_and_exposes_facts(image_dir: Path) -> None:
    img = image.load(image_dir)
    assert img.name == "demo" and img.kernel_version == "6.1.0-99-cloud-amd64"
    assert img.boot_file("guest_protocol") is None  # non-file keys in boot are ignored


def test_boot_files_per_backend_and_mode(image_dir: Path) -> None:
    img = image.load(image_dir)
    d = image_dir.resolve()
    q = img.boot_files(vmm="qemu", rootfs="initrd")
    assert (q.kernel, q.initrd, q.rootfs, q.cmdline) == (d / "vmlinuz", d / "initrd.cpio.zst", None, ["console=ttyS0", "quiet"])
    qd = img.boot_files(vmm="qemu", rootfs="disk")
    assert (qd.initrd, qd.rootfs) == (d / "loader.cpio.zst", d / "rootfs.ext4")
    assert qd.cmdline[-2:] == ["root=/dev/vda", "ro"]
    fc = img.boot_files(vmm="firecracker", rootfs="initrd")
    assert fc.kernel == d / "vmlinux"
    fcd = img.boot_files(vmm="firecracker", rootfs="disk")
    assert "root=/dev/vda" not in fcd.cmdline  # Firecracker appends it for its root drive
    for kw in ({"firmware": "ovmf"}, {"tdx": True}):
        u = img.boot_files(vmm="qemu", rootfs="initrd", **kw)  # type: ignore[arg-type]
        assert u.kernel == d / "demo.efi" and u.initrd is None


def test_disk_mode_replaces_baked_root_args(make_image: Callable[..., Path]) -> None:
    img = image.load(make_image(cmdline=["console=ttyS0", "root=/dev/sda", "rw"]))
    assert img.boot_files(vmm="qemu", rootfs="disk").cmdline == ["console=ttyS0", "root=/dev/vda", "ro"]


def _err(d: Path) -> str:
    with pytest.raises(UsageError) as e:
        image.load(d)
    return str(e.value)


def test_missing_dir_and_manifest(tmp_path: Path) -> None:
    assert "does not exist" in _err(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert "manifest.json is missing" in _err(tmp_path / "empty")


def test_bad_json_schema_and_fields(image_dir: Path) -> None:
    m = image_dir / "manifest.json"
    m.write_text("{oops")
    assert "not valid JSON" in _err(image_dir)
    m.write_text(json.dumps({"schema": "other/v9"}))
    assert "'other/v9'" in _err(image_dir) and "sealbox.manifest/v1" in _err(image_dir)
    m.write_text(json.dumps({"schema": "sealbox.manifest/v1", "name": "x", "boot": {}}))
    assert "kernel" in _err(image_dir)
    m.write_text(json.dumps({"schema": "sealbox.manifest/v1", "name": "x", "boot": {}, "kernel": {"version": "1"},
                             "artifacts": {"a": {"sha256": "zz", "size": 1}}}))
    assert "artifacts.a.sha256" in _err(image_dir)


def test_each_boot_file_is_checked(make_image: Callable[..., Path]) -> None:
    d = make_image(boot={"vmlinuz": "vmlinuz"})
    img = image.load(d)
    with pytest.raises(UsageError, match="no 'initrd' boot file"):
        img.boot_files(vmm="qemu", rootfs="initrd")
    (d / "vmlinuz").unlink()
    with pytest.raises(UsageError, match="vmlinuz.*missing"):
        img.boot_files(vmm="qemu", rootfs="disk")


def test_truncated_file_is_caught_by_size(image_dir: Path) -> None:
    (image_dir / "initrd.cpio.zst").write_bytes(b"i" * 100)
    with pytest.raises(UsageError, match="has 100 bytes but the manifest records 2048"):
        image.load(image_dir).boot_files(vmm="qemu", rootfs="initrd")


def test_boot_paths_cannot_escape_the_image(make_image: Callable[..., Path], tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"x")
    d = make_image(boot={"vmlinuz": "../outside", "initrd": "initrd.cpio.zst"})
    with pytest.raises(UsageError, match="outside the image directory"):
        image.load(d).boot_files(vmm="qemu", rootfs="initrd")
