"""The gui module's image (tests/gui_image.py): no key material from the packages' install scripts, nothing that
makes two builds differ (verify-reproducible), and what the module strips really gone. The image is read with
debugfs (e2fsprogs), not with sealbox's own code; the booted desktop is tested in tests/integration/runtime."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gui_image import gui_image, gui_spec_path

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("debugfs") is None, reason="debugfs (e2fsprogs) is not installed")]

PLACEHOLDER = "; sealbox gui: placeholder."


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/etc, /var, /usr/lib, /usr/bin and /usr/sbin of the image's root file system, dumped by debugfs."""
    out = tmp_path_factory.mktemp("gui-tree")
    img = gui_image() / "rootfs.ext4"
    for d in ("/etc", "/var", "/usr/lib", "/usr/bin", "/usr/sbin"):
        parent = (out / d.lstrip("/")).parent
        parent.mkdir(parents=True, exist_ok=True)
        p = subprocess.run(["debugfs", "-R", f"rdump {d} {parent}", str(img)], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and (out / d.lstrip("/")).is_dir(), p.stderr
    return out


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def test_the_image_holds_no_private_key(tree: Path) -> None:
    found = []
    for p in _files(tree / "etc") + _files(tree / "var"):
        data = p.read_bytes()
        if b"PRIVATE KEY-----" in data or b"pri_exp=" in data:  # PEM keys; xrdp's rsakeys.ini holds pri_exp=
            found.append(str(p.relative_to(tree)))
    assert found == []
    # xrdp's RSA keys: the module's placeholder, under which xrdp sees this boot's file
    assert (tree / "etc/xrdp/rsakeys.ini").read_text().startswith(PLACEHOLDER)
    for gone in ("etc/xrdp/cert.pem", "etc/xrdp/key.pem", "etc/ssl/certs/ssl-cert-snakeoil.pem",
                 "etc/ssl/private/ssl-cert-snakeoil.key"):
        assert not os.path.lexists(tree / gone), gone
    # the snakeoil certificate's OpenSSL hash link (named after the build host) went with it
    assert [p.name for p in (tree / "etc/ssl/certs").iterdir() if p.is_symlink()] == []


def test_the_xrdp_config_is_the_modules(tree: Path) -> None:
    ini = (tree / "etc/xrdp/xrdp.ini").read_text()
    assert "\nport=tcp://127.0.0.1:3389\n" in ini and "\nsecurity_layer=tls\n" in ini
    assert "certificate=/run/sealbox/xrdp/cert.pem" in ini and "key_file=/run/sealbox/xrdp/key.pem" in ini
    assert "BindReadOnlyPaths=/run/sealbox/xrdp/rsakeys.ini:/etc/xrdp/rsakeys.ini" in (
        tree / "etc/systemd/system/xrdp.service.d/sealbox.conf").read_text()
    assert "AllowRootLogin=false" in (tree / "etc/xrdp/sesman.ini").read_text()


def test_what_the_module_strips_is_gone(tree: Path) -> None:
    assert not (tree / "var/cache/fontconfig").is_dir() or not any((tree / "var/cache/fontconfig").iterdir())
    assert not list((tree / "usr/lib").glob("python3*")) and not list((tree / "usr/bin").glob("python3*"))
    assert not (tree / "usr/lib/x86_64-linux-gnu/dri").exists() and not list((tree / "usr/lib/x86_64-linux-gnu").glob("libLLVM*"))
    assert not (tree / "usr/lib/gcc").exists() and not list((tree / "usr/bin").glob("cpp*"))
    # what the desktop needs is there
    for need in ("usr/sbin/xrdp", "usr/lib/xorg/Xorg", "usr/bin/xfce4-session", "usr/bin/xfdesktop", "usr/bin/startxfce4",
                 "usr/bin/xrdp-keygen", "usr/bin/openssl"):
        assert (tree / need).exists(), need


def test_the_manifest_declares_the_desktop_user_with_a_per_instance_password() -> None:
    m = json.loads((gui_image() / "manifest.json").read_text())
    assert m["spec"]["users"]["desktop"]["instance_password"] is True
    assert "built-in module gui" in m["fragments"]


@pytest.mark.slow
def test_verify_reproducible_gui() -> None:
    """Two builds of the gui image under varied conditions (sealbox verify-reproducible) are bit-for-bit identical:
    the install-time caches and keys the module strips would otherwise differ."""
    proc = subprocess.run([sys.executable, "-m", "sealbox", "verify-reproducible", str(gui_spec_path()), "--json"],
                          capture_output=True, text=True, timeout=1800)
    report = json.loads(proc.stdout)
    bad = {n: r.get("differences") for n, r in report["artifacts"].items() if not r["identical"]}
    assert proc.returncode == 0 and report["reproducible"], bad
    assert {"rootfs.ext4", "loader.cpio.zst", "manifest.json"} <= set(report["artifacts"])
