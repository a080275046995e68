"""Stand-in: a SYNTHETIC TDX quote builder for tests (not a quote generator for real use).

It makes its own root/intermediate/PCK keys and certificates and an attestation key, then lays out
a v4 or v5 quote exactly as the parser expects. Tests use it to exercise failure paths that the
real vectors cannot show (wrong root, expired certificates, non-CA issuer, broken QE binding).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealbox.attest.verify import RootAnchor

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey,
          ca: bool, not_before: datetime, not_after: datetime) -> x509.Certificate:  # fmt: skip
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _raw_sig(key: ec.EllipticCurvePrivateKey, msg: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(msg, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@dataclass
class Pki:
    root_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    inter_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    pck_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    leaf_not_after: datetime = T0 + timedelta(days=365)
    inter_is_ca: bool = True

    def certs(self) -> list[x509.Certificate]:
        root = _cert("Test Root CA", self.root_key, "Test Root CA", self.root_key, True, T0, T0 + timedelta(days=3650))
        inter = _cert("Test PCK CA", self.inter_key, "Test Root CA", self.root_key, self.inter_is_ca, T0, T0 + timedelta(days=1825))
        leaf = _cert("Test PCK Certificate", self.pck_key, "Test PCK CA", self.inter_key, False, T0, self.leaf_not_after)
        return [leaf, inter, root]

    def anchor(self) -> RootAnchor:
        point = self.root_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        root = self.certs()[2]
        return RootAnchor(subject="CN=Test Root CA", fingerprint=root.fingerprint(hashes.SHA256()).hex(),
                          public_key_point=point.hex(), not_before=T0, not_after=T0 + timedelta(days=3650))  # fmt: skip


def build_quote(pki: Pki, *, version: int = 4, body_type: int = 2, chain: list[bytes] | None = None,
                break_binding: bool = False, qe_signer: ec.EllipticCurvePrivateKey | None = None,
                mrtd: bytes = b"\x11" * 48) -> bytes:  # fmt: skip
    ak = ec.generate_private_key(ec.SECP256R1())
    ak_raw = ak.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    header = struct.pack("<HHIHH", version, 2, 0x81, 0, 0) + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607") + bytes(20)
    body_size = 584 if body_type == 2 else 648
    body = bytearray(body_size)
    body[136:184] = mrtd  # MRTD offset inside the TD report body
    signed = header + (struct.pack("<HI", body_type, body_size) if version == 5 else b"") + bytes(body)
    auth = b"synthetic auth data"
    binding = hashlib.sha256(ak_raw + auth).digest()
    if break_binding:
        binding = bytes(32)
    qe_report = bytearray(384)
    qe_report[320:352] = binding
    qe_sig = _raw_sig(qe_signer or pki.pck_key, bytes(qe_report))
    pems = chain if chain is not None else [_pem(c) for c in pki.certs()]
    chain_blob = b"".join(pems) + b"\0"
    inner = bytes(qe_report) + qe_sig + struct.pack("<H", len(auth)) + auth + struct.pack("<HI", 5, len(chain_blob)) + chain_blob
    sig_data = _raw_sig(ak, signed) + ak_raw + struct.pack("<HI", 6, len(inner)) + inner
    return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(100)  # zero padding, as producers do


def pems(pki: Pki) -> list[bytes]:
    return [_pem(c) for c in pki.certs()]
