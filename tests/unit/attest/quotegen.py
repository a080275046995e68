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


def key_usage(*names: str) -> x509.KeyUsage:
    """A KeyUsage with exactly the named bits set (e.g. "key_cert_sign", "crl_sign", "digital_signature")."""
    bits = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
            "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]  # fmt: skip
    return x509.KeyUsage(**{b: b in names for b in bits})


def _cert(subject: str | x509.Name, key: ec.EllipticCurvePrivateKey, issuer: str | x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, ca: bool, not_before: datetime, not_after: datetime, *,
          path_length: int | None = None, extensions: tuple[tuple[x509.ExtensionType, bool], ...] = (),
          serial: int | None = None) -> x509.Certificate:  # fmt: skip
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject) if isinstance(subject, str) else subject)
        .issuer_name(_name(issuer) if isinstance(issuer, str) else issuer)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
    )
    for ext, critical in extensions:
        b = b.add_extension(ext, critical=critical)
    return b.sign(issuer_key, hashes.SHA256())


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


# TDATTRIBUTES as real TDs have them: SEPT_VE_DISABLE (bit 28) set, DEBUG (bit 0) clear.
TD_ATTRIBUTES = (1 << 28).to_bytes(8, "little")
# The Intel TD_QE's identity as its QE identity collateral names it (public values).
QE_MRSIGNER = bytes.fromhex("dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5")
QE_ATTRIBUTES = bytes.fromhex("11000000000000000000000000000000")


@dataclass(frozen=True)
class QeFields:
    """The QE report fields a QE identity is checked against."""

    mr_signer: bytes = QE_MRSIGNER
    isv_prod_id: int = 2
    isv_svn: int = 4
    attributes: bytes = QE_ATTRIBUTES
    misc_select: int = 0
    cpu_svn: bytes = bytes(16)


def build_quote(pki: Pki, *, version: int = 4, body_type: int = 2, chain: list[bytes] | None = None,
                break_binding: bool = False, qe_signer: ec.EllipticCurvePrivateKey | None = None,
                mrtd: bytes = b"\x11" * 48, mrconfigid: bytes = bytes(48), td_attributes: bytes = TD_ATTRIBUTES,
                tee_tcb_svn: bytes = bytes(16), qe: QeFields = QeFields(), rtmrs: tuple[bytes, ...] = (bytes(48),) * 4,
                report_data: bytes = bytes(64)) -> bytes:  # fmt: skip
    ak = ec.generate_private_key(ec.SECP256R1())
    ak_raw = ak.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)[1:]
    header = struct.pack("<HHIHH", version, 2, 0x81, 0, 0) + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607") + bytes(20)
    body_size = 584 if body_type == 2 else 648
    body = bytearray(body_size)  # offsets inside the TD report body (quote.py's layout)
    body[0:16] = tee_tcb_svn
    body[120:128] = td_attributes
    body[136:184] = mrtd
    body[184:232] = mrconfigid
    body[328:520] = b"".join(rtmrs)
    body[520:584] = report_data
    signed = header + (struct.pack("<HI", body_type, body_size) if version == 5 else b"") + bytes(body)
    auth = bytes(range(32))  # 32 bytes, as the Intel QE produces
    binding = hashlib.sha256(ak_raw + auth).digest()
    if break_binding:
        binding = bytes(32)
    qe_report = bytearray(384)  # offsets: quote.parse_qe_report
    qe_report[0:16] = qe.cpu_svn
    qe_report[16:20] = struct.pack("<I", qe.misc_select)
    qe_report[48:64] = qe.attributes
    qe_report[128:160] = qe.mr_signer
    qe_report[256:260] = struct.pack("<HH", qe.isv_prod_id, qe.isv_svn)
    qe_report[320:352] = binding
    qe_sig = _raw_sig(qe_signer or pki.pck_key, bytes(qe_report))
    pems = chain if chain is not None else [_pem(c) for c in pki.certs()]
    chain_blob = b"".join(pems) + b"\0"
    inner = bytes(qe_report) + qe_sig + struct.pack("<H", len(auth)) + auth + struct.pack("<HI", 5, len(chain_blob)) + chain_blob
    sig_data = _raw_sig(ak, signed) + ak_raw + struct.pack("<HI", 6, len(inner)) + inner
    return signed + struct.pack("<I", len(sig_data)) + sig_data + bytes(100)  # zero padding, as producers do


def pems(pki: Pki) -> list[bytes]:
    return [_pem(c) for c in pki.certs()]
