"""Successful builds of specs other than the plain default, checked inside the image by the image's own tools.

- A user-style spec: files with owner/mode, a directory with a relative symlink, a UDP port, a user, an enabled
  service running as that user, and a profile defined in the spec itself. Checked with `chroot` into the unpacked
  initrd (the image's own `id`, `stat`, `readlink`), the host's `systemctl --root` and `nft -c` as oracles, and by
  booting it under TCG until the service has printed what it saw as its user.
- The built-in default with `--profile tdx`: the 6.12 kernel, its modules as `.ko.xz`, booted to ready under TCG
  (no TDX here: this checks the image boots and loads its compressed modules, not the TDX launch).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestboot import boot_until
from imagecache import CACHE, built_image
from initrd_unpack import unpack
from sealbox.formats.compress import zstd_decompress
from sealbox.formats.cpio import read_cpio

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPEC = """\
include = ["base"]
name = "app"

[users.app]
uid = 1500
shell = "/bin/sh"

[[files]]
source = "files/app"          # a tree: an executable script and a relative symlink to it
dest = "/opt/app"
owner = "app"
group = "app"

[[files]]
source = "files/app.conf"
dest = "/etc/app/app.conf"
mode = 0o640
group = "app"

[[files]]
source = "files/app.service"
dest = "/etc/systemd/system/app.service"
mode = 0o644

[services]
enable = ["app.service"]

[hardening]
firewall_allow_udp = [5353]

[profiles.debug]
hardening.firewall_allow_tcp = [8080]

[[profiles.debug.files]]
source = "files/debug.flag"
dest = "/etc/app/debug"
"""

RUN_SH = """#!/bin/sh
# prints what the service sees as its user: its ids and the group-readable config
echo "APP-STARTED uid=$(id -u) gid=$(id -g) conf=$(cat /etc/app/app.conf)"
"""

UNIT = """[Unit]
Description=sealbox test app

[Service]
Type=oneshot
User=app
ExecStart=/opt/app/current
StandardOutput=tty
TTYPath=/dev/console

[Install]
WantedBy=multi-user.target
"""


def write_spec(root: Path) -> Path:
    (root / "files" / "app").mkdir(parents=True, exist_ok=True)
    (root / "files" / "app" / "run.sh").write_text(RUN_SH)
    (root / "files" / "app" / "run.sh").chmod(0o755)
    link = root / "files" / "app" / "current"
    if not link.is_symlink():
        link.symlink_to("run.sh")
    (root / "files" / "app.conf").write_text("secret-ish\n")
    (root / "files" / "app.service").write_text(UNIT)
    (root / "files" / "debug.flag").write_text("debug\n")
    (root / "app.toml").write_text(SPEC)
    return root / "app.toml"


@pytest.fixture(scope="module")
def app_spec() -> Path:
    return write_spec(CACHE.parent / "specs" / "app")  # a stable place: the cached build stays valid across runs


@pytest.fixture(scope="module")
def app_image(app_spec: Path) -> Path:
    return built_image("app-debug", app_spec, ("debug",))


@pytest.fixture(scope="module")
def app_tree(app_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The initrd unpacked by cpio as root (owners and modes as stored)."""
    tree = tmp_path_factory.mktemp("app-tree")
    unpack(app_image / "initrd.cpio.zst", tree)  # every segment, in order
    return tree


def in_image(tree: Path, *argv: str) -> str:
    p = subprocess.run(["chroot", str(tree), *argv], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, (argv, p.stderr)
    return p.stdout.strip()


def test_profile_is_applied_only_when_selected(app_spec: Path) -> None:
    def merged(*profile: str) -> dict:
        argv = [sys.executable, "-m", "sealbox", "build", str(app_spec), "--print-spec", *profile]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if p.stdout.lstrip().startswith("{") else {"text": p.stdout}

    plain, debug = merged(), merged("--profile", "debug")
    # the profile's port, read where it goes (8080 is also a default elsewhere: the bob module's key registration)
    assert 8080 not in plain["hardening"]["firewall_allow_tcp"] and "/etc/app/debug" not in json.dumps(plain)
    assert 8080 in debug["hardening"]["firewall_allow_tcp"] and "/etc/app/debug" in json.dumps(debug)


def test_manifest_names_the_spec_and_profile(app_image: Path) -> None:
    m = json.loads((app_image / "manifest.json").read_text())
    assert m["name"] == "app" and m["profiles"] == ["debug"]


def test_user_files_owners_modes_and_symlink_inside_the_image(app_tree: Path) -> None:
    assert in_image(app_tree, "id", "app") == "uid=1500(app) gid=1500(app) groups=1500(app)"
    assert in_image(app_tree, "getent", "passwd", "app").split(":")[5:] == ["/home/app", "/bin/sh"]
    stat = ["stat", "-c", "%U:%G %a %F"]
    assert in_image(app_tree, *stat, "/opt/app") == "app:app 755 directory"
    assert in_image(app_tree, *stat, "/opt/app/run.sh") == "app:app 755 regular file"
    assert in_image(app_tree, *stat, "/opt/app/current") == "app:app 777 symbolic link"
    assert in_image(app_tree, "readlink", "/opt/app/current") == "run.sh"
    assert in_image(app_tree, *stat, "/etc/app/app.conf") == "root:app 640 regular file"
    assert in_image(app_tree, "cat", "/etc/app/app.conf") == "secret-ish"
    assert in_image(app_tree, *stat, "/etc/app/debug") == "root:root 644 regular file"  # from the profile


def test_service_enabled_and_ports_open(app_tree: Path) -> None:
    p = subprocess.run(["systemctl", "--root", str(app_tree), "is-enabled", "app.service"], capture_output=True, text=True, timeout=60)
    assert p.stdout.strip() == "enabled", (p.stdout, p.stderr)
    conf = (app_tree / "etc/nftables.conf").read_text()
    assert re.search(r"udp dport \{ 5353 \} accept", conf) and re.search(r"tcp dport \{ 22, 8080 \} accept", conf), conf
    check = subprocess.run(["nft", "-c", "-f", str(app_tree / "etc/nftables.conf")], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr  # the ruleset the image loads is valid nft


@pytest.mark.boot
def test_service_runs_as_its_user_at_boot(app_image: Path) -> None:
    lines = boot_until(app_image, ("APP-STARTED", "SEALBOX-READY"))
    started = next(line for line in lines if line.startswith("APP-STARTED"))
    assert started == "APP-STARTED uid=1500 gid=1500 conf=secret-ish", started


@pytest.fixture(scope="module")
def tdx_image() -> Path:
    return built_image("default-tdx", None, ("tdx",))


def test_tdx_profile_has_the_612_kernel_and_compressed_modules(tdx_image: Path) -> None:
    m = json.loads((tdx_image / "manifest.json").read_text())
    assert m["profiles"] == ["tdx"]
    assert m["kernel"]["package"].startswith("linux-image-6.12") and m["kernel"]["version"].startswith("6.12.")
    assert "tdx_guest" in m["kernel"]["modules"]
    entries = [e.name for e in read_cpio(zstd_decompress(tdx_image / "initrd.cpio.zst"))]
    modules = [n for n in entries if "/lib/modules/" in n and n.endswith((".ko", ".ko.xz", ".ko.zst"))]
    assert modules and all(n.endswith(".ko.xz") for n in modules), modules[:5]
    assert any(n.endswith(("/tdx-guest.ko.xz", "/tdx_guest.ko.xz")) for n in modules)
    assert {"initrd.cpio.zst", "rootfs.ext4", "default.efi"} <= set(m["artifacts"])


@pytest.mark.boot
def test_tdx_profile_boots_to_ready_under_tcg(tdx_image: Path) -> None:
    lines = boot_until(tdx_image, ("SEALBOX-READY",))
    assert any(line.startswith("SEALBOX-HOSTKEY ssh-ed25519 ") for line in lines)
