"""Kernel: bzImage → vmlinux for each compression, .modinfo parsing (plain and compressed modules), module closure and
load order on a synthetic module tree, kernel .deb layout."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from build_testlib import FAKE_VMLINUX, bzimage, compress_payload, elf_module, lz4_legacy, write_module

from sealbox.builder.kernel import (
    extract_kernel_deb,
    extract_vmlinux,
    load_order,
    modinfo,
    module_closure,
    module_index,
)
from sealbox.errors import BuildError

VERSION = "6.1.0-99-cloud-amd64"


# --- vmlinux ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "lz4"])
def test_extract_each_supported_compression(kind: str) -> None:
    assert extract_vmlinux(bzimage(compress_payload(kind))) == FAKE_VMLINUX


@pytest.mark.parametrize("setup_sects", [0, 1, 4, 30])
def test_setup_sector_count_is_honoured_zero_meaning_four(setup_sects: int) -> None:
    img = bzimage(compress_payload("gzip"), setup_sects=setup_sects or 4)
    if setup_sects == 0:  # old boot protocol: 0 in the header means 4 sectors
        img = img[:0x1F1] + b"\0" + img[0x1F2:]
    assert extract_vmlinux(img) == FAKE_VMLINUX


def test_lz4_legacy_stream_with_several_chunks() -> None:
    data = FAKE_VMLINUX * 40
    payload = lz4_legacy(data, chunk=4096) + len(data).to_bytes(4, "little")
    assert extract_vmlinux(bzimage(payload)) == data


def test_not_a_bzimage() -> None:
    for data in (b"", b"MZ" + b"\0" * 0x300, FAKE_VMLINUX):
        with pytest.raises(BuildError, match="not a bzImage"):
            extract_vmlinux(data)


@pytest.mark.parametrize(("payload", "match"), [
    (b"BZh91AY&SY" + b"\0" * 64, "unsupported kernel compression.*425a68"),
    (b"\x5d\x00\x00\x80\x00" + b"\0" * 64, "unsupported kernel compression"),
    (b"\x89LZO" + b"\0" * 64, "unsupported kernel compression"),
])
def test_unsupported_compressions_are_named(payload: bytes, match: str) -> None:
    with pytest.raises(BuildError, match=match):
        extract_vmlinux(bzimage(payload))


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "lz4"])
def test_corrupt_payload_is_a_build_error(kind: str) -> None:
    good = compress_payload(kind)
    bad = good[:12] + bytes(b ^ 0x5A for b in good[12:60]) + good[60:]
    with pytest.raises(BuildError) as info:
        extract_vmlinux(bzimage(bad))
    assert len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("kind", ["gzip", "xz", "zstd", "lz4"])
def test_truncated_payload_is_a_build_error(kind: str) -> None:
    good = compress_payload(kind)
    img = bzimage(good)
    start = 4 * 512 + 0x100  # setup_sects 3 → (3 + 1) * 512, then payload_offset
    with pytest.raises(BuildError):
        extract_vmlinux(img[:start + len(good) // 2])


def test_payload_that_is_not_elf() -> None:
    with pytest.raises(BuildError, match="not an ELF"):
        extract_vmlinux(bzimage(gzip.compress(b"just text" * 10, mtime=0)))


# --- .modinfo -----------------------------------------------------------------------------------------


def test_modinfo_of_a_synthetic_module(tmp_path: Path) -> None:
    path = write_module(tmp_path, "virtio_net.ko", ["net_failover", "virtio_ring"], softdep="pre: virtio_blk")
    info = modinfo(path)
    assert info["depends"] == ["net_failover,virtio_ring"]
    assert info["softdep"] == ["pre: virtio_blk"]
    assert info["license"] == ["GPL"] and info["vermagic"] == ["6.1.0 SMP mod_unload"]


def test_modinfo_repeated_keys_and_values_with_equals(tmp_path: Path) -> None:
    path = tmp_path / "m.ko"
    path.write_bytes(elf_module(["alias=pci:v1AF4d*", "alias=virtio:d00000001v*", "parm=napi_tx:bool=1", "junk-without-equals", ""]))
    info = modinfo(path)
    assert info["alias"] == ["pci:v1AF4d*", "virtio:d00000001v*"]
    assert info["parm"] == ["napi_tx:bool=1"]


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) not installed")
def test_modinfo_agrees_with_readelf(tmp_path: Path) -> None:
    path = write_module(tmp_path, "a.ko", ["b", "c"], softdep="pre: d post: e")
    out = subprocess.run(["readelf", "-p", ".modinfo", str(path)], capture_output=True, text=True, check=True).stdout
    strings = [line.split("]", 1)[1].strip() for line in out.splitlines() if line.strip().startswith("[")]
    assert {s.split("=", 1)[0]: [s.split("=", 1)[1]] for s in strings} == modinfo(path)


@pytest.mark.parametrize("compress", ["xz", "gz", "zst"])
def test_modinfo_of_compressed_modules(tmp_path: Path, compress: str) -> None:
    """Debian's 6.12 kernels (needed for TDX) ship every module as .ko.xz."""
    path = write_module(tmp_path, "tdx-guest.ko", ["tsm"], compress=compress)
    assert modinfo(path)["depends"] == ["tsm"]


def test_module_without_modinfo_section(tmp_path: Path) -> None:
    data = bytearray(elf_module([]))
    path = tmp_path / "m.ko"
    path.write_bytes(bytes(data).replace(b".modinfo", b".notinfo"))
    assert modinfo(path) == {}


@pytest.mark.parametrize("data", [b"", b"not elf at all", b"\x7fELF\x01\x01" + b"\0" * 58])
def test_non_modules_are_refused(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "m.ko"
    path.write_bytes(data)
    with pytest.raises(BuildError, match="m.ko"):
        modinfo(path)


@pytest.mark.parametrize("cut", [64, 100, 150, -30])
def test_truncated_module_is_a_build_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "m.ko"
    path.write_bytes(elf_module({"depends": ["a"]})[:cut])
    with pytest.raises(BuildError, match="m.ko"):
        modinfo(path)


# --- closure and load order ---------------------------------------------------------------------------


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """The virtio chain of the 6.1 cloud kernel (see FACTS), a softdep, a dash-named module and a built-in one."""
    root = tmp_path / "lib/modules" / VERSION
    k = "kernel/drivers"
    write_module(root, f"{k}/virtio/virtio_ring.ko")
    write_module(root, f"{k}/virtio/virtio.ko", ["virtio_ring"])
    write_module(root, f"{k}/virtio/virtio_mmio.ko", ["virtio", "virtio_ring"])
    write_module(root, "kernel/net/core/failover.ko")
    write_module(root, f"{k}/net/net_failover.ko", ["failover"])
    write_module(root, f"{k}/net/virtio_net.ko", ["net_failover", "virtio", "virtio_ring"])
    write_module(root, "kernel/lib/crc-t10dif.ko")
    write_module(root, "kernel/block/t10-pi.ko", ["crc-t10dif"])
    write_module(root, f"{k}/scsi/sd_mod.ko", ["t10-pi"], softdep="pre: crc32c_generic post: sg")
    write_module(root, "kernel/crypto/crc32c_generic.ko")
    (root / "modules.builtin").write_text("kernel/drivers/block/virtio_blk.ko\nkernel/lib/zlib_inflate.ko\n")
    return root


def _names(paths: list[Path]) -> list[str]:
    return [p.name.split(".ko")[0].replace("-", "_") for p in paths]


def test_index_normalises_dashes(modules: Path) -> None:
    index = module_index(modules)
    assert {"crc_t10dif", "t10_pi", "virtio_net"} <= set(index)
    assert index["t10_pi"].name == "t10-pi.ko"


def test_closure_adds_hard_and_soft_dependencies(modules: Path) -> None:
    files = module_closure(["virtio_net", "sd_mod"], modules)
    assert sorted(_names(files)) == sorted(
        ["virtio_net", "net_failover", "failover", "virtio", "virtio_ring", "sd_mod", "t10_pi", "crc_t10dif", "crc32c_generic"])
    assert files == sorted(files)


def test_closure_skips_builtins_and_names_unknown_modules(modules: Path) -> None:
    assert module_closure(["virtio_blk"], modules) == []
    with pytest.raises(BuildError, match=f"'nosuch'.*{VERSION}"):
        module_closure(["virtio_net", "nosuch"], modules)


def test_load_order_puts_every_dependency_first(modules: Path) -> None:
    order = _names(load_order(["virtio_mmio", "virtio_blk", "virtio_net"], modules))
    assert order == ["virtio_ring", "virtio", "virtio_mmio", "failover", "net_failover", "virtio_net"]
    assert len(order) == len(set(order))


def test_load_order_loads_pre_softdeps_first(modules: Path) -> None:
    order = _names(load_order(["sd_mod"], modules))
    assert order.index("crc32c_generic") < order.index("sd_mod")
    assert order.index("crc_t10dif") < order.index("t10_pi") < order.index("sd_mod")


def test_load_order_is_stable_and_accepts_dashes(modules: Path) -> None:
    assert load_order(["t10-pi", "virtio_net"], modules) == load_order(["t10_pi", "virtio_net"], modules)


def test_load_order_errors(modules: Path) -> None:
    with pytest.raises(BuildError, match="'nosuch'"):
        load_order(["nosuch"], modules)
    write_module(modules, "kernel/a.ko", ["b"])
    write_module(modules, "kernel/b.ko", ["a"])
    with pytest.raises(BuildError, match="cycle"):
        load_order(["a"], modules)


def test_compressed_module_tree(tmp_path: Path) -> None:
    root = tmp_path / "lib/modules/6.12.0-1-cloud-amd64"
    write_module(root, "kernel/drivers/virt/coco/tsm.ko", compress="xz")
    write_module(root, "kernel/drivers/virt/coco/tdx-guest/tdx-guest.ko", ["tsm"], compress="xz")
    assert _names(load_order(["tdx_guest"], root)) == ["tsm", "tdx_guest"]
    assert sorted(_names(module_closure(["tdx_guest"], root))) == ["tdx_guest", "tsm"]


# --- the kernel package -------------------------------------------------------------------------------


def _deb(tmp_path: Path, files: dict[str, bytes]) -> Path:
    pkg = tmp_path / "pkg"
    for rel, data in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: linux-image-test\nVersion: 1\nArchitecture: amd64\n"
                                        "Maintainer: nobody <nobody@example.invalid>\nDescription: test\n")
    deb = tmp_path / "k.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(pkg), str(deb)], capture_output=True, check=True)
    return deb


needs_dpkg = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")


@needs_dpkg
@pytest.mark.parametrize("moddir", ["lib/modules", "usr/lib/modules"])
def test_extract_kernel_deb(tmp_path: Path, moddir: str) -> None:
    deb = _deb(tmp_path, {f"boot/vmlinuz-{VERSION}": b"bz", f"boot/config-{VERSION}": b"CONFIG_X=y\n",
                          f"{moddir}/{VERSION}/kernel/a.ko": elf_module([])})
    kf = extract_kernel_deb(deb, tmp_path / "out")
    assert kf.version == VERSION and kf.vmlinuz.read_bytes() == b"bz"
    assert kf.config is not None and kf.modules_root == tmp_path / "out" / moddir / VERSION


@needs_dpkg
def test_kernel_deb_with_two_images_or_no_modules(tmp_path: Path) -> None:
    deb = _deb(tmp_path, {"boot/vmlinuz-a": b"1", "boot/vmlinuz-b": b"2"})
    with pytest.raises(BuildError, match="2 vmlinuz"):
        extract_kernel_deb(deb, tmp_path / "out")
    shutil.rmtree(tmp_path / "pkg")
    deb = _deb(tmp_path, {f"boot/vmlinuz-{VERSION}": b"1"})
    with pytest.raises(BuildError, match="no modules"):
        extract_kernel_deb(deb, tmp_path / "out2")
    assert os.path.isdir(tmp_path / "out2/boot")
