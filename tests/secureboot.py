"""Secure Boot test material: a throwaway db key and certificate, and an OVMF variable store that trusts
it (PK, KEK and db enrolled by `virt-fw-vars` from the pinned virt-firmware test dependency)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

OWNER = uuid.UUID("5ea1b0c5-0000-4000-8000-000000000001")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


def make_key(tmp: Path) -> tuple[Path, Path]:
    """(key.pem, cert.pem): RSA 2048, self-signed, valid 2025-2035 (OVMF does not check validity)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sealbox test db")])
    start = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    kp, cp = tmp / "db.key", tmp / "db.crt"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    kp.chmod(0o600)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return kp, cp


def virt_fw_vars() -> str:
    exe = shutil.which("virt-fw-vars") or str(Path(sys.executable).parent / "virt-fw-vars")
    if not Path(exe).exists():
        pytest.skip("virt-fw-vars is not installed (pip install the 'test' extra: virt-firmware)")
    return exe


def enrolled_vars(cert: Path, out: Path) -> Path:
    """Debian's empty OVMF_VARS_4M.fd with `cert` as PK, KEK and db, Secure Boot enabled."""
    if not OVMF_VARS.is_file():
        pytest.skip("ovmf is not installed")
    r = subprocess.run([virt_fw_vars(), "-i", str(OVMF_VARS), "-o", str(out), "--set-pk", str(OWNER), str(cert),
                        "--add-kek", str(OWNER), str(cert), "--add-db", str(OWNER), str(cert), "--secure-boot"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def sbsign(key: Path, cert: Path, src: Path, dst: Path) -> Path:
    if shutil.which("sbsign") is None:
        pytest.skip("sbsigntool is not installed")
    r = subprocess.run(["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(dst), str(src)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return dst
