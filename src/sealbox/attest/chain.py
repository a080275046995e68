"""X.509 chains anchored in the pinned Intel SGX Root CA: the PCK chain of a quote and the collateral's signing
chains. RFC 5280 path rules that matter for these short chains, each failure named:

  - every certificate valid at `at`; each one's issuer name is the next one's subject and its signature verifies
    under the next one's key;
  - issuers are CAs (basicConstraints cA) allowed to sign certificates (keyUsage keyCertSign when present), and
    their pathLenConstraint admits the CA certificates below them (the pinned root's own, when the chain stops
    short of it);
  - the end certificate may sign (keyUsage digitalSignature when present);
  - no certificate carries a critical extension this walk does not understand (RFC 5280 4.2: reject);
  - the top is the pinned root (same key, self-signature verified) or is signed by the pinned root key.

cryptography's own verifier (x509.verification) implements the Web PKI profile (names, EKUs, SANs); Intel's
certificates are not Web PKI certificates, so these few rules are checked here instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

if TYPE_CHECKING:
    from sealbox.attest.verify import RootAnchor

# The only extensions whose semantics this walk enforces; any other one marked critical fails the chain.
UNDERSTOOD_CRITICAL = frozenset({ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE})


def ts(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M:%SZ}"


def load_chain(pems: tuple[bytes, ...] | list[bytes], what: str = "the PCK chain") -> tuple[list[x509.Certificate], str | None]:
    """The certificates that load, leaf first, up to the first bad one; and why that one is bad."""
    certs: list[x509.Certificate] = []
    for i, pem in enumerate(pems):
        try:
            cert = x509.load_pem_x509_certificate(pem)
            # cryptography decodes fields lazily: touch every one used later so a corrupt
            # certificate is reported here instead of raising mid-check.
            _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), cert.tbs_certificate_bytes,
                 cert.not_valid_before_utc, cert.not_valid_after_utc, cert.signature, cert.extensions, cert.serial_number)
        # ValueError for bad DER, DuplicateExtension / UnsupportedGeneralNameType (plain Exception
        # subclasses) for bad extensions: any of them means this certificate is unusable.
        except Exception as e:  # noqa: BLE001 - whatever decoding raises, this certificate is unusable
            why = " ".join(str(e).split())[:120] or type(e).__name__
            return certs, f"certificate {i} of {what} is not valid X.509: {why}"
        certs.append(cert)
    return certs, None


def cert_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def signed_by(cert: x509.Certificate | x509.CertificateRevocationList, key: ec.EllipticCurvePublicKey) -> bool:
    try:
        algo = cert.signature_hash_algorithm
        if algo is None:
            return False
        tbs = cert.tbs_certificate_bytes if isinstance(cert, x509.Certificate) else cert.tbs_certlist_bytes
        key.verify(cert.signature, tbs, ec.ECDSA(algo))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        return False
    return True


def point(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint).hex()


def _ext(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def usage_problem(cert: x509.Certificate, bit: str, label: str) -> str | None:
    """When keyUsage is present it must allow `bit` (e.g. key_cert_sign, crl_sign, digital_signature)."""
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not getattr(ku, bit):
        return f"{label} keyUsage does not allow {bit.replace('_', ' ')}"
    return None


def ca_problem(cert: x509.Certificate, label: str, below: int) -> str | None:
    """Why `cert` may not issue a certificate with `below` CA certificates under it (None: it may)."""
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        return f"{label} issues certificates but is not a CA"
    if bc.path_length is not None and below > bc.path_length:
        return f"{label} allows a path length of {bc.path_length} but {below} CA certificate(s) follow it"
    return usage_problem(cert, "key_cert_sign", label)


def _label(i: int, cert: x509.Certificate) -> str:
    return f"cert {i} ({cert.subject.rfc4514_string() or 'no subject'})"


def _cert_problems(i: int, cert: x509.Certificate, at: datetime) -> list[str]:
    label, out = _label(i, cert), []
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if at < nb:
        out.append(f"{label} not yet valid at {ts(at)} (from {ts(nb)})")
    if at > na:
        out.append(f"{label} expired at {ts(at)} (until {ts(na)})")
    out += [f"{label} has an unknown critical extension {e.oid.dotted_string}"
            for e in cert.extensions if e.critical and e.oid not in UNDERSTOOD_CRITICAL]  # fmt: skip
    return out


def walk(certs: list[x509.Certificate], at: datetime, root: RootAnchor) -> tuple[list[str], str]:
    """Problems along leaf → top (empty: the chain holds), and how the top is anchored."""
    problems: list[str] = []
    if (why := usage_problem(certs[0], "digital_signature", _label(0, certs[0]))) is not None:
        problems.append(why)
    for i, cert in enumerate(certs):
        problems += _cert_problems(i, cert, at)
        if i + 1 < len(certs):
            issuer, label = certs[i + 1], _label(i, cert)
            key = cert_key(issuer)
            if cert.issuer != issuer.subject:
                problems.append(f"{label} names issuer {cert.issuer.rfc4514_string()}, next certificate is {issuer.subject.rfc4514_string()}")
            elif key is None or not signed_by(cert, key):
                problems.append(f"{label} signature does not verify under cert {i + 1}'s key")
            if (why := ca_problem(issuer, f"cert {i + 1}", below=i)) is not None:
                problems.append(why)
    top = certs[-1]
    top_key = cert_key(top)
    name = root.subject.split("CN=")[-1].split(",")[0]
    how = f"chain to the pinned {name}"
    if top.subject == top.issuer and top_key is not None and point(top_key) == root.public_key_point:
        if not signed_by(top, root.public_key()):
            problems.append("the root certificate's self-signature does not verify")
        if top.fingerprint(hashes.SHA256()).hex() != root.fingerprint:
            # the key is what anchors trust; a re-issued root with the same key is still Intel's
            how += " key (root certificate differs from the pinned fingerprint)"
    elif not signed_by(top, root.public_key()):
        problems.append(f"chain does not end at the pinned {name} (key {root.public_key_point[:18]}…)")
    elif not root.not_before <= at <= root.not_after:
        problems.append(f"pinned root is not valid at {ts(at)}")
    else:
        how += " (root certificate not included; top certificate signed by the pinned key)"
        if root.path_length is not None and len(certs) - 1 > root.path_length:
            problems.append(f"the pinned root allows a path length of {root.path_length} but {len(certs) - 1} CA certificate(s) follow it")
    return problems, how


def describe(cert: x509.Certificate) -> dict[str, str]:
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_before": ts(cert.not_valid_before_utc),
        "not_after": ts(cert.not_valid_after_utc),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "serial": f"{cert.serial_number:x}",
    }
