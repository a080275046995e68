"""Revocation: Intel's two CRLs from the collateral, checked by sealbox itself.

The root CA CRL (signed by the root key) lists revoked certificates the root issued: PCK Platform/Processor CAs
and the TCB signing certificate. The PCK CRL (signed by the PCK CA that issued the PCK certificate) lists revoked
PCK certificates. Each certificate below the root is looked up in the CRL of its issuer; a CRL counts only if its
issuer name is that issuer's and its signature verifies under that issuer's key (an issuer that may sign CRLs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sealbox.attest import AttestInputError, chain
from sealbox.attest.verify import Check, RootAnchor


@dataclass(frozen=True)
class Crl:
    label: str  # "root CA CRL" / "PCK CRL"
    crl: x509.CertificateRevocationList

    def revoked(self, cert: x509.Certificate) -> x509.RevokedCertificate | None:
        return self.crl.get_revoked_certificate_by_serial_number(cert.serial_number)


def load_crl(doc: dict[str, Any], key: str, what: str = "collateral") -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(bytes.fromhex(doc[key]))
        _ = (crl.issuer.rfc4514_string(), crl.tbs_certlist_bytes, crl.signature, list(crl))
    except Exception:  # noqa: BLE001 - bad hex, bad DER or a bad entry: all mean an unusable CRL
        raise AttestInputError(f"{what}: {key} is not a hex-encoded DER CRL") from None
    return crl


def _issuer_ok(crl: Crl, name: x509.Name, key: ec.EllipticCurvePublicKey | None, issuer: x509.Certificate | None) -> str | None:
    """Why `crl` is not a valid CRL of the issuer (name, key, certificate if known)."""
    if crl.crl.issuer != name:
        return f"the {crl.label} is issued by {crl.crl.issuer.rfc4514_string()}, not by {name.rfc4514_string()}"
    if key is None or not chain.signed_by(crl.crl, key):
        return f"the {crl.label} signature does not verify under its issuer's key"
    if issuer is not None:
        return chain.usage_problem(issuer, "crl_sign", f"the {crl.label} issuer {name.rfc4514_string()}")
    return None


def _lookup(cert: x509.Certificate, label: str, crl: Crl) -> str | None:
    entry = crl.revoked(cert)
    if entry is None:
        return None
    return f"{label} (serial {cert.serial_number:x}) is revoked by the {crl.label} since {chain.ts(entry.revocation_date_utc)}"


def check_revocation(certs: list[x509.Certificate], signers: list[x509.Certificate], doc: dict[str, Any], root: RootAnchor) -> Check:
    """`certs`: the PCK chain, leaf first; `signers`: the collateral's signing certificates (issued by the root)."""
    if not certs:
        return Check("revocation", False, "no usable PCK certificate to look up")
    root_crl = Crl("root CA CRL", load_crl(doc, "root_ca_crl"))
    pck_crl = Crl("PCK CRL", load_crl(doc, "pck_crl"))
    problems: list[str] = []
    root_name = certs[-1].subject if certs[-1].subject == certs[-1].issuer else certs[-1].issuer
    if (why := _issuer_ok(root_crl, root_name, root.public_key(), None)) is not None:
        problems.append(why)
    leaf_issuer = certs[1] if len(certs) > 1 else None
    if leaf_issuer is None:
        problems.append("the PCK certificate has no issuing CA in its chain to check the PCK CRL against")
    elif (why := _issuer_ok(pck_crl, certs[0].issuer, chain.cert_key(leaf_issuer), leaf_issuer)) is not None:
        problems.append(why)
    if (why := _lookup(certs[0], "PCK certificate", pck_crl)) is not None:
        problems.append(why)
    # every certificate the root issued: the CAs in the PCK chain and the collateral signers
    issued_by_root = [(f"cert {i} ({c.subject.rfc4514_string()})", c) for i, c in enumerate(certs[1:], 1) if c.subject != c.issuer]
    issued_by_root += [(f"collateral signer {c.subject.rfc4514_string()}", c) for c in signers]
    for label, cert in issued_by_root:
        if (why := _lookup(cert, label, root_crl)) is not None:
            problems.append(why)
    if problems:
        return Check("revocation", False, "; ".join(dict.fromkeys(problems)))
    return Check("revocation", True, f"PCK certificate not in the PCK CRL ({len(list(pck_crl.crl))} entries); "
                                     f"{len(issued_by_root)} root-issued certificate(s) not in the root CA CRL "
                                     f"({len(list(root_crl.crl))} entries), both CRLs signed by their issuers")
