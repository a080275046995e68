"""TDX quote structures (v4 and v5) and a strict parser driven by the length fields.

Layout (Intel TDX DCAP Quoting Library API, appendix "Quote Format"; all integers little-endian):

    header (48)         version u16, attestation key type u16, TEE type u32, QE SVN u16, PCE SVN u16,
                        QE vendor id 16, user data 20
    v5 only             body type u16 (2 = TD 1.0, 3 = TD 1.5), body size u32
    body (584 | 648)    TD report body; TD 1.5 appends TEE_TCB_SVN2 (16) and MRSERVICETD (48)
    sig data len u32
    sig data            quote signature 64 (r|s), attestation key 64 (x|y),
                        cert data: type u16 (6 = QE report certification data), size u32, then
                          QE report 384, QE report signature 64, QE auth data (u16 size + bytes),
                          inner cert data: type u16 (5 = PCK cert chain, PEM), size u32, bytes

The quote signature covers everything before `sig data len` (header, the v5 body descriptor and the
body). Producers hand out zero-padded buffers, so nothing after the signature data is looked at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sealbox.attest import AttestInputError
from sealbox.attest.binary import Reader

TEE_TYPE_TDX = 0x81
TEE_TYPE_SGX = 0x00
AK_ECDSA_P256 = 2
CERT_TYPE_QE_REPORT = 6
CERT_TYPE_PCK_CHAIN = 5
HEADER_SIZE = 48
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
QE_REPORT_SIZE = 384
BODY_TYPES = {2: ("TD1.0", TD10_BODY_SIZE), 3: ("TD1.5", TD15_BODY_SIZE)}
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# Real signature data is a few KiB (mostly the PEM chain); a bigger length field is corruption.
MAX_SIG_DATA = 64 * 1024

_PEM_RE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True)
class TdQuoteBody:
    """The TD report body: what the TD's measurements and REPORTDATA look like to a verifier."""

    kind: str  # "TD1.0" or "TD1.5"
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """TUD.DEBUG (bit 0 of TDATTRIBUTES): a debuggable TD's memory is not confidential."""
        return bool(self.td_attributes[0] & 1)


@dataclass(frozen=True)
class QeReport:
    """The SGX report of the Quoting Enclave (384 bytes), signed by the PCK key."""

    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body: TdQuoteBody
    body_type: int  # v4 quotes carry no type; reported as 2 (TD 1.0)
    signed: bytes = field(repr=False)  # the bytes covered by the quote signature
    signature: bytes
    attestation_key: bytes  # raw x|y, 64 bytes
    qe_report_raw: bytes = field(repr=False)
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: tuple[bytes, ...]  # leaf first, as the quote lists them
    length: int  # bytes used; the rest of the buffer is padding


def _parse_header(r: Reader) -> QuoteHeader:
    version = r.u16("header.version")
    if version not in (4, 5):
        raise AttestInputError(f"{r.what}: unsupported quote version {version} (supported: 4, 5)")
    ak_type = r.u16("header.attestation_key_type")
    tee_type = r.u32("header.tee_type")
    if tee_type != TEE_TYPE_TDX:
        kind = "an SGX quote" if tee_type == TEE_TYPE_SGX else f"TEE type {tee_type:#x}"
        raise AttestInputError(f"{r.what}: {kind}, not a TDX quote (TEE type 0x81)")
    if ak_type != AK_ECDSA_P256:
        raise AttestInputError(f"{r.what}: attestation key type {ak_type} not supported (only 2, ECDSA-P256)")
    return QuoteHeader(
        version=version,
        attestation_key_type=ak_type,
        tee_type=tee_type,
        qe_svn=r.u16("header.qe_svn"),
        pce_svn=r.u16("header.pce_svn"),
        qe_vendor_id=r.bytes(16, "header.qe_vendor_id"),
        user_data=r.bytes(20, "header.user_data"),
    )


def _parse_body(r: Reader, kind: str) -> TdQuoteBody:
    b = r.bytes
    return TdQuoteBody(
        kind=kind,
        tee_tcb_svn=b(16, "body.tee_tcb_svn"),
        mrseam=b(48, "body.mrseam"),
        mrsignerseam=b(48, "body.mrsignerseam"),
        seam_attributes=b(8, "body.seam_attributes"),
        td_attributes=b(8, "body.td_attributes"),
        xfam=b(8, "body.xfam"),
        mrtd=b(48, "body.mrtd"),
        mrconfigid=b(48, "body.mrconfigid"),
        mrowner=b(48, "body.mrowner"),
        mrownerconfig=b(48, "body.mrownerconfig"),
        rtmrs=(b(48, "body.rtmr0"), b(48, "body.rtmr1"), b(48, "body.rtmr2"), b(48, "body.rtmr3")),
        report_data=b(64, "body.report_data"),
        # keyword arguments are evaluated in order, so these read after REPORTDATA as the layout says
        tee_tcb_svn2=b(16, "body.tee_tcb_svn2") if kind == "TD1.5" else None,
        mrservicetd=b(48, "body.mrservicetd") if kind == "TD1.5" else None,
    )


def parse_qe_report(raw: bytes, what: str) -> QeReport:
    r = Reader(raw, what)
    cpu_svn = r.bytes(16, "qe_report.cpu_svn")
    misc_select = r.u32("qe_report.misc_select")
    r.bytes(28, "qe_report.reserved1")
    attributes = r.bytes(16, "qe_report.attributes")
    mr_enclave = r.bytes(32, "qe_report.mr_enclave")
    r.bytes(32, "qe_report.reserved2")
    mr_signer = r.bytes(32, "qe_report.mr_signer")
    r.bytes(96, "qe_report.reserved3")
    isv_prod_id = r.u16("qe_report.isv_prod_id")
    isv_svn = r.u16("qe_report.isv_svn")
    r.bytes(60, "qe_report.reserved4")
    report_data = r.bytes(64, "qe_report.report_data")
    return QeReport(cpu_svn, misc_select, attributes, mr_enclave, mr_signer, isv_prod_id, isv_svn, report_data)


def split_pem_chain(blob: bytes, what: str) -> tuple[bytes, ...]:
    """PEM certificates in order; producers often append a NUL, which is ignored."""
    certs = tuple(m.group(0) for m in _PEM_RE.finditer(blob))
    if not certs:
        raise AttestInputError(f"{what}: the PCK certificate chain holds no PEM certificate")
    leftover = _PEM_RE.sub(b"", blob).strip(b"\0 \t\r\n")
    if leftover:
        raise AttestInputError(f"{what}: the PCK certificate chain has {len(leftover)} stray bytes between certificates")
    return certs


def _parse_cert_data(r: Reader) -> tuple[bytes, QeReport, bytes, bytes, tuple[bytes, ...]]:
    cert_type = r.u16("certification_data.type")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise AttestInputError(
            f"{r.what}: certification data type {cert_type} not supported "
            f"(TDX quotes carry type 6, QE report certification data)"
        )
    size = r.u32("certification_data.size")
    c = r.sub(size, "certification_data")
    qe_raw = c.bytes(QE_REPORT_SIZE, "qe_report")
    qe_sig = c.bytes(64, "qe_report_signature")
    auth_size = c.u16("qe_auth_data.size")
    auth = c.bytes(auth_size, "qe_auth_data")
    inner_type = c.u16("pck_cert_data.type")
    if inner_type != CERT_TYPE_PCK_CHAIN:
        raise AttestInputError(
            f"{r.what}: QE certification data type {inner_type} not supported "
            f"(need 5, an embedded PEM PCK certificate chain, for offline verification)"
        )
    inner_size = c.u32("pck_cert_data.size")
    chain = split_pem_chain(c.bytes(inner_size, "pck_cert_data"), r.what)
    if c.remaining:
        raise AttestInputError(f"{r.what}: certification data size {size} leaves {c.remaining} unexplained bytes")
    return qe_raw, parse_qe_report(qe_raw, r.what), qe_sig, auth, chain


def parse_quote(data: bytes, what: str = "quote") -> Quote:
    """Parse a TDX v4/v5 quote; raises AttestInputError naming the field on any malformation."""
    r = Reader(data, what)
    header = _parse_header(r)
    if header.version == 4:
        body_type, kind = 2, "TD1.0"
        body = _parse_body(r, kind)
    else:
        body_type = r.u16("body_type")
        body_size = r.u32("body_size")
        if body_type not in BODY_TYPES:
            raise AttestInputError(
                f"{what}: v5 quote body type {body_type} not supported (2 = TD 1.0, 3 = TD 1.5; 1 would be SGX)"
            )
        kind, expected = BODY_TYPES[body_type]
        if body_size != expected:
            raise AttestInputError(f"{what}: v5 body type {body_type} ({kind}) must be {expected} bytes, header says {body_size}")
        body = _parse_body(r, kind)
    signed = data[: r.pos]
    sig_len = r.u32("signature_data.size")
    if sig_len > MAX_SIG_DATA:
        raise AttestInputError(f"{what}: signature data length {sig_len} is implausible (limit {MAX_SIG_DATA})")
    s = r.sub(sig_len, "signature_data")
    signature = s.bytes(64, "quote_signature")
    attestation_key = s.bytes(64, "attestation_key")
    qe_raw, qe_report, qe_sig, auth, chain = _parse_cert_data(s)
    if s.remaining:
        raise AttestInputError(f"{what}: signature data length {sig_len} leaves {s.remaining} unexplained bytes")
    return Quote(
        header=header,
        body=body,
        body_type=body_type,
        signed=signed,
        signature=signature,
        attestation_key=attestation_key,
        qe_report_raw=qe_raw,
        qe_report=qe_report,
        qe_report_signature=qe_sig,
        qe_auth_data=auth,
        pck_chain_pem=chain,
        length=r.pos,
    )
