"""Stand-in: a SYNTHETIC Intel-like PKI and collateral in dcap-qvl's JSON format, for tests only.

It has the shape of Intel's: a root CA (path length 1) that signs a PCK Platform CA (path length 0) and a TCB
signing certificate; the PCK CA signs PCK certificates carrying the SGX extension (PPID, CPUSVN, PCESVN, PCE-ID,
FMSPC, SGX type); a root CA CRL and a PCK CRL; TDX TCB info and TD_QE identity JSON signed by the TCB signing key.
dcap-qvl (`verify_with_root_ca`, given this root) accepts the untouched set, which is what makes it a faithful
stand-in; each test then breaks exactly one thing. Nothing here is fetched: collateral in tests is generated or
vendored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from quotegen import QE_ATTRIBUTES, QE_MRSIGNER, T0, QeFields, _cert, _pem, _raw_sig, build_quote, key_usage

from sealbox.attest.verify import RootAnchor

ISSUED = T0 + timedelta(days=150)  # collateral issueDate / CRL thisUpdate
NEXT = ISSUED + timedelta(days=30)  # nextUpdate
AT = ISSUED + timedelta(days=10)  # a time inside every validity window
FMSPC = bytes.fromhex("b0c06f000000")
SGX_OID = "1.2.840.113741.1.13.1"


def _name(cn: str) -> x509.Name:
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test Corporation")])


# ---- a few DER encoders: the SGX extension is an opaque (non-critical) extension to cryptography ----

def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytes([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        while p > 0x7F:
            p >>= 7
            chunk.append(0x80 | (p & 0x7F))
        out += bytes(reversed(chunk))
    return _tlv(0x06, out)


def _int(n: int, tag: int = 0x02) -> bytes:
    return _tlv(tag, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big"))


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _pair(oid: str, value: bytes) -> bytes:
    return _seq(_oid(oid), value)


def sgx_extension(cpu_svn: bytes, pce_svn: int, fmspc: bytes = FMSPC) -> bytes:
    tcb = [_pair(f"{SGX_OID}.2.{i + 1}", _int(cpu_svn[i])) for i in range(16)]
    tcb += [_pair(f"{SGX_OID}.2.17", _int(pce_svn)), _pair(f"{SGX_OID}.2.18", _tlv(0x04, cpu_svn))]
    return _seq(
        _pair(f"{SGX_OID}.1", _tlv(0x04, bytes(range(16)))),  # PPID
        _pair(f"{SGX_OID}.2", _seq(*tcb)),
        _pair(f"{SGX_OID}.3", _tlv(0x04, bytes(2))),  # PCE-ID
        _pair(f"{SGX_OID}.4", _tlv(0x04, fmspc)),
        _pair(f"{SGX_OID}.5", _int(0, tag=0x0A)),  # SGX type: standard (ENUMERATED)
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _level(status: str, sgx: list[int], pce: int, advisories: list[str] | None = None) -> dict[str, Any]:
    level: dict[str, Any] = {
        "tcb": {"sgxtcbcomponents": [{"svn": s} for s in sgx], "pcesvn": pce, "tdxtcbcomponents": [{"svn": 0}] * 16},
        "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": status,
    }
    if advisories:
        level["advisoryIDs"] = advisories
    return level


@dataclass
class IntelLike:
    """Keys, certificates and collateral; change a field, then call quote()/collateral()."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    pck_ca_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    pck_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    tcb_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    cpu_svn: bytes = bytes([3] * 8 + [0] * 8)
    pce_svn: int = 11
    pck_not_after: datetime = T0 + timedelta(days=3650)
    pck_extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()
    revoked_pck: bool = False  # the PCK CRL lists the leaf's serial
    revoked_pck_ca: bool = False  # the root CA CRL lists the PCK CA's serial
    qe_identity: dict[str, Any] = field(default_factory=lambda: {
        "id": "TD_QE", "version": 2, "issueDate": f"{ISSUED:%Y-%m-%dT%H:%M:%SZ}", "nextUpdate": f"{NEXT:%Y-%m-%dT%H:%M:%SZ}",
        "tcbEvaluationDataNumber": 17, "miscselect": "00000000", "miscselectMask": "FFFFFFFF",
        "attributes": QE_ATTRIBUTES.hex().upper(), "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
        "mrsigner": QE_MRSIGNER.hex().upper(), "isvprodid": 2,
        "tcbLevels": [{"tcb": {"isvsvn": 4}, "tcbDate": "2024-03-13T00:00:00Z", "tcbStatus": "UpToDate"},
                      {"tcb": {"isvsvn": 2}, "tcbDate": "2023-08-09T00:00:00Z", "tcbStatus": "OutOfDate",
                       "advisoryIDs": ["INTEL-SA-00999"]}],
    })  # fmt: skip
    tcb_levels: list[dict[str, Any]] = field(default_factory=lambda: [
        _level("UpToDate", [3] * 8 + [0] * 8, 11),
        _level("OutOfDate", [2] * 8 + [0] * 8, 11, ["INTEL-SA-00837", "INTEL-SA-00960"]),
    ])  # fmt: skip

    def __post_init__(self) -> None:
        self.pck_serial = x509.random_serial_number()
        self.pck_ca_serial = x509.random_serial_number()

    # ---- certificates ----
    def root(self) -> x509.Certificate:
        return _cert(_name("Test SGX Root CA"), self.root_key, _name("Test SGX Root CA"), self.root_key, True, T0,
                     T0 + timedelta(days=3650 * 3), path_length=1, extensions=((key_usage("key_cert_sign", "crl_sign"), True),))  # fmt: skip

    def pck_ca(self) -> x509.Certificate:
        return _cert(_name("Test SGX PCK Platform CA"), self.pck_ca_key, _name("Test SGX Root CA"), self.root_key, True, T0,
                     T0 + timedelta(days=3650 * 2), path_length=0, serial=self.pck_ca_serial,
                     extensions=((key_usage("key_cert_sign", "crl_sign"), True),))  # fmt: skip

    def pck(self) -> x509.Certificate:
        ext = x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_OID), sgx_extension(self.cpu_svn, self.pce_svn))
        return _cert(_name("Test SGX PCK Certificate"), self.pck_key, _name("Test SGX PCK Platform CA"), self.pck_ca_key, False,
                     T0, self.pck_not_after, serial=self.pck_serial,
                     extensions=((key_usage("digital_signature", "content_commitment"), True), (ext, False), *self.pck_extra))  # fmt: skip

    def tcb_signer(self) -> x509.Certificate:
        return _cert(_name("Test SGX TCB Signing"), self.tcb_key, _name("Test SGX Root CA"), self.root_key, False, T0,
                     T0 + timedelta(days=3650), extensions=((key_usage("digital_signature", "content_commitment"), True),))  # fmt: skip

    def chain(self) -> list[bytes]:
        return [_pem(self.pck()), _pem(self.pck_ca()), _pem(self.root())]

    def anchor(self) -> RootAnchor:
        root = self.root()
        point = self.root_key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        return RootAnchor(subject=root.subject.rfc4514_string(), fingerprint=root.fingerprint(hashes.SHA256()).hex(),
                          public_key_point=point.hex(), not_before=root.not_valid_before_utc, not_after=root.not_valid_after_utc,
                          path_length=1, der=root.public_bytes(serialization.Encoding.DER))  # fmt: skip

    # ---- the quote and its collateral ----
    def quote(self, qe: QeFields | None = None, **kw: Any) -> bytes:
        qe = qe or QeFields(cpu_svn=self.cpu_svn)
        return build_quote(_Signer(self.pck_key), chain=self.chain(), qe=qe, **kw)  # type: ignore[arg-type]

    def _crl(self, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, revoked: list[int]) -> str:
        # webpki (dcap-qvl) wants a CRL number and the authority key identifier, as Intel's CRLs have
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(ISSUED).next_update(NEXT)
             .add_extension(x509.CRLNumber(1), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False))
        for serial in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(ISSUED - timedelta(days=1)).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER).hex()

    def collateral(self) -> dict[str, Any]:
        tcb_info = json.dumps({
            "id": "TDX", "version": 3, "issueDate": f"{ISSUED:%Y-%m-%dT%H:%M:%SZ}", "nextUpdate": f"{NEXT:%Y-%m-%dT%H:%M:%SZ}",
            "fmspc": FMSPC.hex().upper(), "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 17,
            "tdxModule": {"mrsigner": "00" * 48, "attributes": "00" * 8, "attributesMask": "FF" * 8},
            "tdxModuleIdentities": [], "tcbLevels": self.tcb_levels,
        }, separators=(",", ":"))  # fmt: skip
        qe_identity = json.dumps(self.qe_identity, separators=(",", ":"))
        signer_chain = (_pem(self.tcb_signer()) + _pem(self.root())).decode()
        return {
            "pck_crl_issuer_chain": (_pem(self.pck_ca()) + _pem(self.root())).decode(),
            "root_ca_crl": self._crl(self.root().subject, self.root_key, [self.pck_ca_serial] if self.revoked_pck_ca else []),
            "pck_crl": self._crl(self.pck_ca().subject, self.pck_ca_key, [self.pck_serial] if self.revoked_pck else []),
            "tcb_info_issuer_chain": signer_chain,
            "tcb_info": tcb_info,
            "tcb_info_signature": _raw_sig(self.tcb_key, tcb_info.encode()).hex(),
            "qe_identity_issuer_chain": signer_chain,
            "qe_identity": qe_identity,
            "qe_identity_signature": _raw_sig(self.tcb_key, qe_identity.encode()).hex(),
        }


@dataclass
class _Signer:
    """What build_quote needs of a Pki when the chain is given: the PCK key that signs the QE report."""

    pck_key: ec.EllipticCurvePrivateKey
