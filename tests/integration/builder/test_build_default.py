"""The default image, built for real with mmdebstrap: contents, hardening, boot, reproducibility, failures."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealbox.cli.main import main
from sealbox.formats.compress import zstd_decompress
from sealbox.formats.cpio import read_cpio

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def initrd_entries(built_image: Path) -> dict[str, object]:
    return {"/" + e.name.lstrip("./"): e for e in read_cpio(zstd_decompress(built_image / "initrd.cpio.zst"))}


def test_artifacts_match_manifest(built_image: Path) -> None:
    m = json.loads((built_image / "manifest.json").read_text())
    assert m["schema"] == "sealbox.manifest/v1" and m["name"] == "default"
    expected = {"vmlinuz", "vmlinux", "initrd.cpio.zst", "rootfs.ext4", "loader.cpio.zst", "default.efi"}
    assert expected <= set(m["artifacts"])
    for name, art in m["artifacts"].items():
        data = (built_image / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == art["sha256"] and len(data) == art["size"], name
    assert (built_image / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert m["kernel"]["version"].endswith("-cloud-amd64")
    names = {p["name"] for p in m["packages"]}
    assert {"systemd", "openssh-server", "nftables"} <= names
    assert all(len(p["sha256"]) == 64 and p["version"] for p in m["packages"] + m["downloads"])
    assert "apt" not in names  # no package manager in the base image
    assert m["artifacts"]["initrd.cpio.zst"]["size"] <= 15 * 10**6, "base initrd over its 15 MB budget"


def test_hardening_in_the_image(initrd_entries: dict) -> None:
    e = initrd_entries
    assert not [n for n in e if n.startswith("/etc/ssh/ssh_host_")], "host keys baked into the image"
    assert e["/etc/machine-id"].data == b""
    assert "/var/lib/systemd/random-seed" not in e
    shadow = e["/etc/shadow"].data.decode()
    root = next(line for line in shadow.splitlines() if line.startswith("root:"))
    assert root.split(":")[1].startswith("!"), "root is not locked"
    assert all(line.split(":")[1][:1] in "!*" for line in shadow.splitlines() if line), "a usable password hash"
    assert not [n for n in e if n.endswith("/authorized_keys")]
    sshd = e["/etc/ssh/sshd_config.d/00-sealbox.conf"].data.decode()
    assert "PasswordAuthentication no" in sshd and "/run/sealbox/ssh/ssh_host_ed25519_key" in sshd
    nft = e["/etc/nftables.conf"].data.decode()
    assert "policy drop" in nft and "tcp dport { 22 } accept" in nft
    assert not [n for n in e if n.startswith(("/usr/share/man/", "/usr/share/locale/", "/var/lib/apt/lists/"))]
    assert not [n for n in e if n.startswith("/usr/bin/perl")]
    assert "/usr/lib/systemd/system/sealbox-ready.service" in e
    assert e["/"].mode & 0o777 == 0o755  # sshd refuses authorized_keys paths under a writable /
    wants = [n for n in e if "getty" in n and ".wants/" in n]
    assert all(stat.S_ISLNK(e[n].mode) for n in wants)  # only leftovers of masked units, no enabled getty
    assert stat.S_ISLNK(e["/etc/systemd/system/serial-getty@ttyS0.service"].mode)  # masked
    assert e["/etc/systemd/system/serial-getty@ttyS0.service"].data == b"/dev/null"


def _boot(image: Path, initrd: str, extra: list[str], append: str, timeout: float = 240) -> tuple[list[str], float]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    khz = next((int(float(line.split(":")[1]) * 1000) for line in cpuinfo if line.startswith("cpu MHz")), 2000000)
    cmdline = " ".join(json.loads((image / "manifest.json").read_text())["kernel"]["cmdline"])
    argv = ["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", "512", "-smp", "2", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", "stdio", "-kernel", str(image / "vmlinuz"), "-initrd",
            str(image / initrd), "-append", f"{cmdline} tsc_early_khz={khz} {append}", *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    buf = b""
    try:
        while time.monotonic() - t0 < timeout:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [d.decode(errors="replace").strip() for d in done]
            if any(line.startswith("SEALBOX-READY") for line in lines):
                return lines, time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(10)
    pytest.fail(f"no SEALBOX-READY within {timeout}s; console tail: {lines[-10:]}")


@pytest.mark.boot
def test_initrd_boots_to_ready_marker(built_image: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    lines, seconds = _boot(built_image, "initrd.cpio.zst", [], "")
    keys = [line for line in lines if line.startswith("SEALBOX-HOSTKEY ")]
    ready = next(i for i, line in enumerate(lines) if line.startswith("SEALBOX-READY"))
    assert keys and all(lines.index(k) < ready for k in keys)
    assert keys[0].split()[1] == "ssh-ed25519"
    print(f"initrd boot to ready: {seconds:.1f}s")


@pytest.mark.boot
def test_rootfs_disk_boots_read_only(built_image: Path, tmp_path: Path) -> None:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 not installed")
    extra = ["-drive", f"id=root,file={built_image / 'rootfs.ext4'},format=raw,if=none,readonly=on",
             "-device", "virtio-blk-device,drive=root"]
    lines, seconds = _boot(built_image, "loader.cpio.zst", extra, "root=/dev/vda")
    assert not any("cannot mount" in line for line in lines)
    print(f"rootfs.ext4 boot to ready: {seconds:.1f}s")


def test_warm_rebuild_reuses_the_output(built_image: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.environ.get("SEALBOX_TEST_IMAGE"):
        pytest.skip("image given from outside; its lock is not known here")
    lock = built_image.parent / "default.sealbox.lock"
    rc = main(["build", "--output", str(built_image), "--lock", str(lock), "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["up_to_date"] is True


def _spec(tmp_path: Path, body: str) -> Path:
    spec = tmp_path / "img.toml"
    spec.write_text('include = ["base"]\nname = "img"\n' + body)
    return spec


def test_lock_mismatch_is_refused_and_nothing_is_written(built_image: Path, tmp_path: Path, capsys) -> None:
    if os.environ.get("SEALBOX_TEST_IMAGE"):
        pytest.skip("image given from outside; its lock is not known here")
    from sealbox.builder.lock import read_lock_file, write_lock

    section = read_lock_file(built_image.parent / "default.sealbox.lock").sections[0]
    section.packages["openssh-server"].sha256 = "0" * 64
    spec = _spec(tmp_path, "")
    write_lock(tmp_path / "img.lock", section.model_copy(update={"profiles": [], "selection": None}))
    before = (tmp_path / "img.lock").read_bytes()
    out = tmp_path / "out"
    rc = main(["build", str(spec), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err[-1:]) == 1 and "openssh-server" in err[-1] and "archive no longer matches the lock" in err[-1], err
    assert not out.exists() and (tmp_path / "img.lock").read_bytes() == before
    # a failed build keeps its log beside the output, points at it, and leaves nothing else
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".out.failed.log"]
    assert str(tmp_path / ".out.failed.log") in err[-1]


def test_failed_bootstrap_leaves_only_its_log(tmp_path: Path, capsys) -> None:
    spec = _spec(tmp_path, '[packages]\ninclude = ["no-such-package-sealbox"]\n')
    out = tmp_path / "build" / "img"
    work = Path(os.environ.get("SEALBOX_WORK_DIR") or "/var/tmp")  # noqa: S108 - the builder's own default
    before = set(os.listdir(work))
    rc = main(["build", str(spec), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and "bootstrap" in err[-1] and "no-such-package-sealbox" in err[-1]
    log = tmp_path / "build" / ".img.failed.log"
    assert f"full log: {log}" in err[-1]
    assert os.listdir(tmp_path / "build") == [".img.failed.log"]  # the log, and nothing else
    assert "Unable to locate package no-such-package-sealbox" in log.read_text()
    assert not (tmp_path / "img.lock").exists()
    assert not [n for n in set(os.listdir(work)) - before if n.startswith("sealbox-build-")]


@pytest.mark.slow
def test_verify_reproducible_default(built_image: Path) -> None:
    """Two full builds of the default image under varied conditions are bit-for-bit identical, and so is a third,
    layered rebuild from the first one's build cache (its bootstrap layer, kernel, modules, loader and initrd segments)."""
    proc = subprocess.run([sys.executable, "-m", "sealbox", "verify-reproducible", "--json"], capture_output=True,
                          text=True, timeout=2400)
    report = json.loads(proc.stdout)
    bad = {n: r.get("differences") for n, r in report["artifacts"].items() if not r["identical"]}
    bad_layered = {n: r.get("differences") for n, r in report["layered"]["artifacts"].items() if not r["identical"]}
    assert proc.returncode == 0 and report["reproducible"], (bad, bad_layered)
    made = set(json.loads((built_image / "manifest.json").read_text())["artifacts"])
    assert made | {"manifest.json"} <= set(report["artifacts"]), "every artifact the build makes is compared"
    assert set(report["layered"]["artifacts"]) == set(report["artifacts"])
    assert {"bootstrap", "kernel", "modules", "loader", "segment"} <= set(report["layered"]["reused"])
    assert report["layered"]["recompressed_segments"] == []  # the same tree: every segment came from the cache
