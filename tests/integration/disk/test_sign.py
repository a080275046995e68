"""`sealbox sign`: a copy of the default image signed with a throwaway db key.

Oracles: pesign (the signed UKI's Authenticode equals the unsigned one's), sbverify (the signature
verifies with the certificate), openssl (the recorded fingerprint), qemu-img (the rewritten disks
carry the same virtual disk), and Debian's OVMF Secure Boot build on q35 with SMM with a variable
store that trusts the key: the signed disk boots to ready, the unsigned one is refused on the
firmware's console."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ovmf_boot import ACCESS_DENIED, OVMF_SECBOOT_CODE, READY, boot_disk
from sealbox.cli.main import main
from sealbox.formats import gpt
from secureboot import enrolled_vars, make_key

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("sbsign") is None or shutil.which("pesign") is None, reason="needs sbsigntool and pesign")]


def _copy(src: Path, dst: Path) -> Path:
    """Hard-linked copy: sign replaces files, it never writes into them (checked below)."""
    subprocess.run(["cp", "-al", str(src), str(dst)], check=True, timeout=60)
    return dst


def _pesign(path: Path) -> str:
    r = subprocess.run(["pesign", "-h", "-i", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def signed(disk_image: Path, keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    img = _copy(disk_image, tmp_path_factory.mktemp("signed") / "img")
    (img / "measurements.json").write_text("{}")  # stale after signing: must be dropped
    key, cert = keys
    assert main(["sign", str(img), "--key", str(key), "--cert", str(cert), "--json"]) == 0
    return img


def test_signed_uki_keeps_its_authenticode(disk_image: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    m = json.loads((signed / "manifest.json").read_text())
    uki = m["boot"]["uki"]
    assert (signed / uki).read_bytes() != (disk_image / uki).read_bytes()
    assert _pesign(signed / uki) == _pesign(disk_image / uki) == m["signature"]["uki_authenticode_sha256"]
    r = subprocess.run(["sbverify", "--cert", str(keys[1]), str(signed / uki)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Signature verification OK" in r.stdout + r.stderr


def test_manifest_records_the_certificate_not_the_key(disk_image: Path, signed: Path, keys: tuple[Path, Path]) -> None:
    m = json.loads((signed / "manifest.json").read_text())
    fp = subprocess.run(["openssl", "x509", "-in", str(keys[1]), "-noout", "-fingerprint", "-sha256"], capture_output=True,
                        text=True, timeout=60, check=True).stdout.split("=", 1)[1].strip().replace(":", "").lower()
    assert m["signature"]["certificate"]["sha256"] == fp
    assert set(m["signature"]["signed"]) == {m["boot"][k] for k in ("uki", "disk", "qcow2", "vhd", "gcp")}
    unsigned = json.loads((disk_image / "manifest.json").read_text())
    assert m["signature"]["unsigned"] == {n: unsigned["artifacts"][n] for n in m["signature"]["signed"]}
    for name, art in m["artifacts"].items():  # the new manifest describes the files exactly
        assert (signed / name).stat().st_size == art["size"], name
    assert not (signed / "measurements.json").exists()
    key_body = b"".join(keys[0].read_bytes().splitlines()[1:3])  # two lines of the key's base64
    for f in signed.iterdir():
        assert key_body not in f.read_bytes(), f"key material in {f.name}"
    for name in unsigned["artifacts"]:  # the hard-linked source image is untouched
        assert (disk_image / name).stat().st_size == unsigned["artifacts"][name]["size"]


def test_disks_are_rewritten_with_the_same_layout(disk_image: Path, signed: Path, tmp_path: Path) -> None:
    before, after = gpt.read_gpt(disk_image / "disk.raw"), gpt.read_gpt(signed / "disk.raw")
    assert (before.disk_guid, before.partitions) == (after.disk_guid, after.partitions)
    for name, fmt in (("disk.qcow2", "qcow2"), ("disk.vhd", "vpc")):
        r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", fmt, str(signed / "disk.raw"), str(signed / name)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (name, r.stdout)
    (esp,) = after.partitions
    fat = tmp_path / "esp"
    with open(signed / "disk.raw", "rb") as f:
        f.seek(esp.offset)
        fat.write_bytes(f.read(esp.size))
    uki = json.loads((signed / "manifest.json").read_text())["boot"]["uki"]
    got = subprocess.run(["mtype", "-i", str(fat), "::/EFI/BOOT/BOOTX64.EFI"], capture_output=True, timeout=120,
                         env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout
    assert got == (signed / uki).read_bytes()


def test_signing_twice_and_bad_inputs_change_nothing(signed: Path, disk_image: Path, keys: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    key, cert = keys
    before = (signed / "manifest.json").read_bytes()
    assert main(["sign", str(signed), "--key", str(key), "--cert", str(cert)]) == 2
    assert "already signed" in capsys.readouterr().err
    img = _copy(disk_image, tmp_path / "img")
    listing = sorted(os.listdir(img))
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    for args, msg in ((["--key", str(bad_key), "--cert", str(cert)], "sbsign"),
                      (["--key", str(tmp_path / "none"), "--cert", str(cert)], "not a readable file"),
                      (["--key", str(key), "--cert", str(key)], "not an X.509 certificate")):
        assert main(["sign", str(img), *args]) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
        assert sorted(os.listdir(img)) == listing and (img / "manifest.json").read_bytes() == (disk_image / "manifest.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".img.")]  # no staging left behind
    assert (signed / "manifest.json").read_bytes() == before


@pytest.mark.boot
@pytest.mark.skipif(not OVMF_SECBOOT_CODE.exists(), reason="ovmf has no Secure Boot build")
def test_secure_boot_accepts_signed_and_refuses_unsigned(disk_image: Path, signed: Path, keys: tuple[Path, Path],
                                                         qemu_ovmf: None, tmp_path: Path) -> None:
    vars_fd = enrolled_vars(keys[1], tmp_path / "vars.fd")
    refused = boot_disk(disk_image / "disk.raw", "raw", markers=(READY, ACCESS_DENIED), secure_boot=True, vars_fd=vars_fd)
    assert refused.marker == ACCESS_DENIED, refused.console[-2000:]
    assert "Linux version" not in refused.console and READY not in refused.console
    ok = boot_disk(signed / "disk.raw", "raw", markers=(READY, ACCESS_DENIED), secure_boot=True, vars_fd=vars_fd)
    assert ok.marker == READY, ok.console[-2000:]
    print(f"Secure Boot (SMM, TCG): unsigned refused after {refused.seconds:.1f} s, signed ready after {ok.seconds:.1f} s")
