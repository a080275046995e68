"""Our Authenticode against pesign on real EFI binaries: Debian's signed shim and GRUB (with certificate
tables), the systemd stubs, a UKI, and a UKI we sign with sbsign."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from measure_fixtures import debian_package

from sealbox.formats.authenticode import authenticode
from sealbox.formats.pe import parse_pe

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pesign") is None, reason="pesign is not installed"),
]


def pesign_hash(path: Path) -> str:
    r = subprocess.run(["pesign", "-h", "-i", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]


@pytest.mark.parametrize("package", ["shim-signed", "grub-efi-amd64-signed"])
def test_signed_debian_binaries(package: str) -> None:
    root = debian_package(package)
    files = sorted(p for p in root.rglob("*.efi.signed") if p.is_file())
    assert files, f"no *.efi.signed in {package}"
    for f in files:
        data = f.read_bytes()
        assert parse_pe(data).cert_table_size > 0, f"{f.name} has no certificate table"
        assert authenticode(data) == pesign_hash(f), f.name


def test_uki_signed_with_sbsign(test_uki: tuple[Path, dict], tmp_path: Path) -> None:
    if shutil.which("sbsign") is None:
        pytest.skip("sbsigntool is not installed")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealbox test signer")])
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    uki, _ = test_uki
    signed = tmp_path / "signed.efi"
    r = subprocess.run(["sbsign", "--key", str(tmp_path / "k.pem"), "--cert", str(tmp_path / "c.pem"),
                        "--output", str(signed), str(uki)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    data = signed.read_bytes()
    assert parse_pe(data).cert_table_size > 0
    # signing appends a certificate table that Authenticode excludes: the hash is unchanged
    assert authenticode(data) == authenticode(uki.read_bytes()) == pesign_hash(signed) == pesign_hash(uki)
