"""A verity root for real: tests/integration/disk/verity.toml built once per machine (cached like the default
image), checked with veritysetup, booted with `sealbox run --boot disk-image`, and booted tampered.

Oracles: veritysetup verify (the hash tree matches rootfs.ext4 under the root hash on the disk UKI's
measured command line), sgdisk, the guest's own device-mapper table, and the firmware/kernel console
when one byte of the root partition is changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ovmf_boot import READY, boot_disk
from sealbox.formats import gpt
from sealbox.formats.ukiinfo import read_uki

pytestmark = [pytest.mark.integration]
SPEC = Path(__file__).parent / "verity.toml"
CACHE = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "images"
PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
LOADER_FAIL = "sealbox verity loader:"


@pytest.fixture(scope="module")
def vroot() -> Path:
    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None or shutil.which("veritysetup", path=PATH) is None:
        pytest.skip("building an image needs root, mmdebstrap and veritysetup (cryptsetup-bin)")
    out = CACHE / "vroot"
    p = subprocess.run([sys.executable, "-m", "sealbox", "build", str(SPEC), "--output", str(out), "--lock",
                        str(CACHE / "vroot.sealbox.lock")], capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def _cmdline(img: Path) -> dict[str, str]:
    m = json.loads((img / "manifest.json").read_text())
    raw = read_uki((img / m["boot"]["disk_uki"]).read_bytes()).sections[".cmdline"]
    return dict(a.split("=", 1) for a in raw.split(b"\0", 1)[0].decode().split() if "=" in a)


def test_hash_tree_and_partitions(vroot: Path) -> None:
    args = _cmdline(vroot)
    r = subprocess.run(["veritysetup", "verify", str(vroot / "rootfs.ext4"), str(vroot / "rootfs.verity"), args["roothash"]],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": PATH})
    assert r.returncode == 0, r.stderr
    assert args["sealbox.verity"].split(":")[0] == str((vroot / "rootfs.ext4").stat().st_size // 4096)
    esp, root, tree = gpt.read_gpt(vroot / "disk.raw").partitions
    assert (root.name, tree.name) == ("root-x86-64", "root-x86-64-verity")
    assert str(root.guid).replace("-", "") + str(tree.guid).replace("-", "") == args["roothash"]
    with open(vroot / "disk.raw", "rb") as f:
        f.seek(root.offset)
        assert f.read(root.size) == (vroot / "rootfs.ext4").read_bytes()
    out = subprocess.run(["sgdisk", "-v", str(vroot / "disk.raw")], capture_output=True, text=True, timeout=60).stdout
    assert "No problems found" in out


@pytest.mark.boot
def test_boots_from_the_verified_root(vroot: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="sbv-"))  # short: the QMP socket path must fit AF_UNIX's 108 bytes
    env = {**os.environ, "SEALBOX_STATE_DIR": str(state)}
    name = f"vroot{os.getpid() % 10000}"
    cli = [sys.executable, "-m", "sealbox"]
    p = subprocess.run([*cli, "run", str(vroot), "--name", name, "--boot", "disk-image", "--accel", "tcg", "--timeout", "300"],
                       capture_output=True, text=True, timeout=420, env=env)
    try:
        assert p.returncode == 0, p.stderr[-2000:]
        guest = subprocess.run([*cli, "exec", name, "--", "sh", "-c", "grep ' / ' /proc/mounts; dmsetup table root"],
                               capture_output=True, text=True, timeout=120, env=env).stdout
        mount, table = guest.splitlines()[:2]
        assert mount.split()[:2] == ["/dev/dm-0", "/"] and mount.split()[3].startswith("ro")
        assert " verity 1 " in table and _cmdline(vroot)["roothash"] in table
        print(f"verity root boot to ready (sealbox run): {p.stdout.split('guest ready ')[1].split('s ')[0]} s")
    finally:
        subprocess.run([*cli, "rm", "--force", name], capture_output=True, timeout=120, env=env)
        shutil.rmtree(state, ignore_errors=True)


@pytest.mark.boot
def test_a_changed_root_block_stops_the_boot(vroot: Path, tmp_path: Path) -> None:
    bad = tmp_path / "disk.raw"
    subprocess.run(["cp", "--sparse=always", str(vroot / "disk.raw"), str(bad)], check=True, timeout=120)
    root = gpt.read_gpt(bad).partitions[1]
    with open(bad, "r+b") as f:  # one byte of the ext4 superblock: the first block the loader's mount reads
        f.seek(root.offset + 1024 + 0x78)
        byte = f.read(1)
        f.seek(root.offset + 1024 + 0x78)
        f.write(bytes([byte[0] ^ 0x01]))
    b = boot_disk(bad, "raw", markers=(READY, LOADER_FAIL), stop_after="\n", timeout=300)
    assert b.marker == LOADER_FAIL, b.console[-2000:]
    assert "cannot mount the verified root" in b.console and "is corrupted" in b.console
