"""Offline cryptographic verification of a parsed TDX quote.

Five checks, each reported separately so a failure names exactly what is wrong:
  quote_signature   the attestation key's ECDSA-P256/SHA-256 signature over header + body
  qe_report_data    SHA-256(attestation key | QE auth data) == QE report_data[:32], rest zero:
                    this is what ties the attestation key to the Quoting Enclave
  qe_report_signature  the PCK leaf certificate's signature over the 384-byte QE report
  pck_chain         every certificate signed by the next, issuers are CAs, all valid at `at`,
                    and the top is anchored in the pinned Intel SGX Root CA key (pck_root.py); see chain.py
  td_attributes     not a DEBUG TD, unless the caller accepts one
TCB status (is this platform patched?), the QE's identity and revocation need Intel's collateral: see
collateral.py, qeidentity.py and revocation.py; report.py puts them together.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from sealbox.attest import chain, pck_root
from sealbox.attest.quote import INTEL_QE_VENDOR_ID, Quote


@dataclass(frozen=True)
class RootAnchor:
    """The trust anchor facts; defaults to Intel's. Tests pass their own to exercise chain logic."""

    subject: str = pck_root.SUBJECT
    fingerprint: str = pck_root.SHA256_FINGERPRINT
    public_key_point: str = pck_root.PUBLIC_KEY_POINT
    not_before: datetime = pck_root.NOT_BEFORE
    not_after: datetime = pck_root.NOT_AFTER
    path_length: int | None = pck_root.PATH_LENGTH
    der: bytes | None = None  # the root certificate, for dcap-qvl; None: dcap-qvl's built-in Intel root

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes.fromhex(self.public_key_point))


INTEL_ROOT = RootAnchor()


@dataclass(frozen=True)
class Check:
    """One named check. `skipped`: it could not run (the detail says why); it neither passes nor fails."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @classmethod
    def not_checked(cls, name: str, why: str) -> Check:
        return cls(name, False, why, skipped=True)


@dataclass
class QuoteVerification:
    at: datetime
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    chain: list[dict[str, str]] = field(default_factory=list)  # subject/validity/fingerprint per cert
    certs: list[x509.Certificate] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok and not c.skipped]


def _raw_sig_to_der(raw: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def ecdsa_ok(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes) -> bool:
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
    if ecdsa_ok(key, q.signature, q.signed):
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


def check_pck_chain(certs: list[x509.Certificate], at: datetime, root: RootAnchor | None = None) -> Check:
    """The PCK chain, leaf first, under the rules of chain.walk."""
    problems, how = chain.walk(certs, at, root or INTEL_ROOT)
    if problems:
        return Check("pck_chain", False, "; ".join(problems))
    return Check("pck_chain", True, f"{len(certs)} certificates {how}, all valid at {chain.ts(at)}")


def check_td_attributes(q: Quote, allow_debug: bool) -> Check:
    """A DEBUG TD (TUD.DEBUG, bit 0 of TDATTRIBUTES) lets the host read and change its memory."""
    attrs = q.body.td_attributes.hex()
    if not q.body.debug:
        return Check("td_attributes", True, f"not a DEBUG TD (TDATTRIBUTES {attrs})")
    if allow_debug:
        return Check("td_attributes", True, "DEBUG TD accepted (--allow-debug): its memory is not confidential")
    return Check("td_attributes", False, f"the TD is in DEBUG mode (TDATTRIBUTES bit 0, {attrs}): its memory is not confidential "
                                         "(--allow-debug accepts it)")


def check_qe_report_signature(q: Quote, leaf: x509.Certificate) -> Check:
    key = chain.cert_key(leaf)
    if key is None:
        return Check("qe_report_signature", False, "PCK leaf certificate has no EC public key")
    if ecdsa_ok(key, q.qe_report_signature, q.qe_report_raw):
        return Check("qe_report_signature", True, "PCK leaf key signed the QE report")
    return Check("qe_report_signature", False, "QE report signature does not verify under the PCK leaf key")


def verify_quote(q: Quote, at: datetime | None = None, root: RootAnchor | None = None, allow_debug: bool = False) -> QuoteVerification:
    """Run every check that needs nothing but the quote; never raises for a bad signature, it records a failed Check."""
    at = at or datetime.now(UTC)
    result = QuoteVerification(at=at)
    result.checks.append(check_quote_signature(q))
    result.checks.append(check_qe_binding(q))
    certs, problem = chain.load_chain(q.pck_chain_pem)
    result.certs = certs
    result.chain = [chain.describe(c) for c in certs]
    if certs:
        result.checks.append(check_qe_report_signature(q, certs[0]))
    else:
        result.checks.append(Check("qe_report_signature", False, "no usable PCK leaf certificate"))
    result.checks.append(Check("pck_chain", False, problem) if problem else check_pck_chain(certs, at, root))
    result.checks.append(check_td_attributes(q, allow_debug))
    if q.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        result.warnings.append(f"QE vendor id {q.header.qe_vendor_id.hex()} is not Intel's")
    if q.body.debug and allow_debug:
        result.warnings.append("the TD is in DEBUG mode (TDATTRIBUTES bit 0): its memory is not confidential")
    return result
