"""Offline cryptographic verification of a parsed TDX quote.

Four checks, each reported separately so a failure names exactly what is wrong:
  quote_signature   the attestation key's ECDSA-P256/SHA-256 signature over header + body
  qe_report_data    SHA-256(attestation key | QE auth data) == QE report_data[:32], rest zero:
                    this is what ties the attestation key to the Quoting Enclave
  qe_report_signature  the PCK leaf certificate's signature over the 384-byte QE report
  pck_chain         every certificate signed by the next, issuers are CAs, all valid at `at`,
                    and the top is anchored in the pinned Intel SGX Root CA key (pck_root.py)
TCB status (is this platform patched?) needs Intel's collateral: see collateral.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sealbox.attest import pck_root
from sealbox.attest.quote import INTEL_QE_VENDOR_ID, Quote


@dataclass(frozen=True)
class RootAnchor:
    """The trust anchor facts; defaults to Intel's. Tests pass their own to exercise chain logic."""

    subject: str = pck_root.SUBJECT
    fingerprint: str = pck_root.SHA256_FINGERPRINT
    public_key_point: str = pck_root.PUBLIC_KEY_POINT
    not_before: datetime = pck_root.NOT_BEFORE
    not_after: datetime = pck_root.NOT_AFTER

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(self.public_key_point))


INTEL_ROOT = RootAnchor()


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class QuoteVerification:
    at: datetime
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chain: list[dict[str, str]] = field(default_factory=list)  # subject/validity/fingerprint per cert

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]


def _raw_sig_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
    try:
        key.verify(_raw_sig_to_der(raw_sig), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def attestation_public_key(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """The raw x|y attestation key as a P-256 key, or None if it is not a point on the curve."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def check_quote_signature(q: Quote) -> Check:
    key = attestation_public_key(q.attestation_key)
    if key is None:
        return Check("quote_signature", False, "attestation key is not a valid P-256 point")
    if _ecdsa_ok(key, q.signature, q.signed):
        return Check("quote_signature", True, f"attestation key signed header+body ({len(q.signed)} bytes)")
    return Check("quote_signature", False, "attestation key signature over header+body does not verify")


def check_qe_binding(q: Quote) -> Check:
    want = hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    rd = q.qe_report.report_data
    if rd[:32] != want:
        return Check(
            "qe_report_data", False, f"QE report_data[:32] is {rd[:32].hex()}, SHA-256(attestation key | auth data) is {want.hex()}"
        )
    if any(rd[32:]):
        return Check("qe_report_data", False, "QE report_data[32:64] is not zero")
    return Check("qe_report_data", True, "QE report binds the attestation key")


def load_chain(pems: tuple[bytes, ...]) -> tuple[list[x509.Certificate], str | None]:
    """The certificates that load, leaf first, up to the first bad one; and why that one is bad."""
    certs: list[x509.Certificate] = []
    for i, pem in enumerate(pems):
        try:
            cert = x509.load_pem_x509_certificate(pem)
            # cryptography decodes fields lazily: touch every one used later so a corrupt
            # certificate is reported here instead of raising mid-check.
            _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.tbs_certificate_bytes,
                 cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature, cert.extensions)
        # ValueError for bad DER, DuplicateExtension / UnsupportedGeneralNameType (plain Exception
        # subclasses) for bad extensions: any of them means this certificate is unusable.
        except Exception as e:  # noqa: BLE001
            why = " ".join(str(e).split())[:120] or type(e).__name__
            return certs, f"certificate {i} of the PCK chain is not valid X.509: {why}"
        certs.append(cert)
    return certs, None


def _is_ca(cert: x509.Certificate) -> bool:
    """BasicConstraints CA and, when KeyUsage is present, keyCertSign."""
    try:
        if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return bool(cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign)
    except x509.ExtensionNotFound:
        return True


def _cert_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def _signed_by(cert: x509.Certificate, key: ec.EllipticCurvePublicKey) -> bool:
    try:
        algo = cert.signature_hash_algorithm
        if algo is None:
            return False
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algo))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def _point(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()


def _within(cert: x509.Certificate, at: datetime) -> str | None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < nb:
        return f"not yet valid at {at:%Y-%m-%dT%H:%M:%SZ} (from {nb:%Y-%m-%dT%H:%M:%SZ})"
    if at > na:
        return f"expired at {at:%Y-%m-%dT%H:%M:%SZ} (until {na:%Y-%m-%dT%H:%M:%SZ})"
    return None


def check_pck_chain(certs: list[x509.Certificate], at: datetime, root: RootAnchor = INTEL_ROOT) -> Check:
    """Walk leaf → top; the top must be the pinned root (self-signed) or be signed by its key."""
    problems: list[str] = []
    for i, cert in enumerate(certs):
        label = f"cert {i} ({cert.subject.rfc4514_string() or 'no subject'})"
        if (why := _within(cert, at)) is not None:
            problems.append(f"{label} {why}")
        if i + 1 < len(certs):
            issuer = certs[i + 1]
            key = _cert_key(issuer)
            if cert.issuer != issuer.subject:
                problems.append(f"{label} names issuer {cert.issuer.rfc4514_string()}, next certificate is {issuer.subject.rfc4514_string()}")
            elif key is None or not _signed_by(cert, key):
                problems.append(f"{label} signature does not verify under cert {i + 1}'s key")
            if not _is_ca(issuer):
                problems.append(f"cert {i + 1} issues certificates but is not a CA")
    top = certs[-1]
    top_key = _cert_key(top)
    pinned = root.public_key()
    name = root.subject.split("CN=")[-1]
    how = f"chain to the pinned {name}"
    if top.subject == top.issuer and top_key is not None and _point(top_key) == root.public_key_point:
        if not _signed_by(top, pinned):
            problems.append("the root certificate's self-signature does not verify")
        if top.fingerprint(hashes.SHA256()).hex() != root.fingerprint:
            # the key is what anchors trust; a re-issued root with the same key is still Intel's
            how += " key (root certificate differs from the pinned fingerprint)"
    elif not _signed_by(top, pinned):
        problems.append(f"chain does not end at the pinned {name} (key {root.public_key_point[:18]}…)")
    elif not root.not_before <= at <= root.not_after:
        problems.append(f"pinned root is not valid at {at:%Y-%m-%dT%H:%M:%SZ}")
    else:
        how += " (root certificate not included; top certificate signed by the pinned key)"
    if problems:
        return Check("pck_chain", False, "; ".join(problems))
    return Check("pck_chain", True, f"{len(certs)} certificates {how}, all valid at {at:%Y-%m-%dT%H:%M:%SZ}")


def check_qe_report_signature(q: Quote, leaf: x509.Certificate) -> Check:
    key = _cert_key(leaf)
    if key is None:
        return Check("qe_report_signature", False, "PCK leaf certificate has no EC public key")
    if _ecdsa_ok(key, q.qe_report_signature, q.qe_report_raw):
        return Check("qe_report_signature", True, "PCK leaf key signed the QE report")
    return Check("qe_report_signature", False, "QE report signature does not verify under the PCK leaf key")


def _describe(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_before": f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}",
        "not_after": f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def verify_quote(q: Quote, at: datetime | None = None, root: RootAnchor = INTEL_ROOT) -> QuoteVerification:
    """Run every offline check; never raises for a bad signature, it records a failed Check."""
    at = at or datetime.now(UTC)
    result = QuoteVerification(at=at)
    result.checks.append(check_quote_signature(q))
    result.checks.append(check_qe_binding(q))
    certs, problem = load_chain(q.pck_chain_pem)
    result.chain = [_describe(c) for c in certs]
    if certs:
        result.checks.append(check_qe_report_signature(q, certs[0]))
    else:
        result.checks.append(Check("qe_report_signature", False, "no usable PCK leaf certificate"))
    result.checks.append(Check("pck_chain", False, problem) if problem else check_pck_chain(certs, at, root))
    if q.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        result.warnings.append(f"QE vendor id {q.header.qe_vendor_id.hex()} is not Intel's")
    if q.body.debug:
        result.warnings.append("the TD is in DEBUG mode (TDATTRIBUTES bit 0): its memory is not confidential")
    return result
