"""What Intel's collateral lets a verifier check, offline: its own signatures and validity window, revocation
(revocation.py), the QE identity (qeidentity.py), and the TCB status with its advisories (through dcap-qvl).

Why dcap-qvl for the TCB status: matching the PCK certificate's SGX extension (FMSPC, CPUSVN components,
PCESVN) and the TD's TEE_TCB_SVN against the sorted TCB levels, and folding in the TDX module identity, is a
large, policy-heavy algorithm which Intel changes over time; dcap-qvl (Phala Network, Rust, MIT; pinned 0.7.0 in
pyproject) implements it, and its `verify(quote, collateral, now_secs)` works fully offline (tested inside an empty
network namespace). It reads the collateral JSON format written by its own `get_collateral` (hex strings for
CRLs and signatures), which is the format accepted here. dcap-qvl checks signatures, CRLs and the QE identity
too; sealbox checks those itself as well, so that each failure is named on its own line, and uses dcap-qvl's
status and advisory IDs as dcap-qvl reports them (overall, platform, QE). A cross-check makes sure dcap-qvl's
parse of the TD report agrees with sealbox's, field by field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from sealbox.attest import AttestInputError, chain, verify
from sealbox.attest.qeidentity import check_qe_identity
from sealbox.attest.quote import Quote
from sealbox.attest.revocation import check_revocation, load_crl
from sealbox.attest.verify import Check, RootAnchor, ecdsa_ok
from sealbox.util.optional import require

# What only the collateral can check, in report order; without it each is "NOT checked".
COLLATERAL_CHECKS = ("tcb_status", "qe_identity", "revocation")
CHECK_NAMES = {"tcb_status": "TCB status", "qe_identity": "QE identity", "revocation": "revocation"}

REQUIRED_KEYS = (
    "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
    "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
)
MAX_COLLATERAL = 4 * 1024 * 1024
# dcap-qvl's report field → sealbox TdQuoteBody attribute, for the cross-check.
_FIELDS = {
    "tee_tcb_svn": "tee_tcb_svn", "mr_seam": "mrseam", "mr_td": "mrtd", "mr_config_id": "mrconfigid",
    "mr_owner": "mrowner", "mr_owner_config": "mrownerconfig", "td_attributes": "td_attributes",
    "xfam": "xfam", "report_data": "report_data",
}


@dataclass
class CollateralResult:
    at: datetime
    status: str  # TCB status from dcap-qvl ("UpToDate", ...) or "expired" / "not-yet-valid" / "error" / "not-checked"
    valid_from: datetime
    valid_until: datetime  # exclusive: at this instant the earliest nextUpdate has passed
    window_reasons: tuple[str, str] = ("", "")
    checks: list[Check] = field(default_factory=list)  # collateral, revocation, qe_identity, tcb_status
    advisory_ids: list[str] = field(default_factory=list)
    platform_status: dict[str, Any] | None = None  # dcap-qvl's split: {"status", "advisory_ids"}
    qe_status: dict[str, Any] | None = None
    cross_check: list[str] = field(default_factory=list)  # fields where the two parsers disagree

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def detail(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok) or "all collateral checks passed"


def _time(text: Any, what: str) -> datetime:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        raise AttestInputError(f"collateral {what} {text!r} is not an ISO 8601 time") from None


def load_collateral(text: str, what: str = "collateral") -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AttestInputError(f"{what} is not JSON: {e.msg if hasattr(e, 'msg') else e}") from None
    if not isinstance(doc, dict):
        raise AttestInputError(f"{what} must be a JSON object with the dcap-qvl collateral keys")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise AttestInputError(f"{what} lacks {', '.join(missing)} (expected dcap-qvl's collateral JSON)")
    return doc


def validity_window(doc: dict[str, Any], what: str = "collateral") -> tuple[datetime, str, datetime, str]:
    """(latest issue time, its source, earliest next update, its source) over TCB info, QE identity, CRLs."""
    starts: list[tuple[datetime, str]] = []
    ends: list[tuple[datetime, str]] = []
    for key, label in (("tcb_info", "tcbInfo"), ("qe_identity", "qeIdentity")):
        try:
            body = json.loads(doc[key])
        except (TypeError, json.JSONDecodeError):
            raise AttestInputError(f"{what}: {key} is not a JSON string") from None
        if not isinstance(body, dict) or "issueDate" not in body or "nextUpdate" not in body:
            raise AttestInputError(f"{what}: {key} lacks issueDate/nextUpdate")
        starts.append((_time(body["issueDate"], f"{label}.issueDate"), f"{label} issueDate"))
        ends.append((_time(body["nextUpdate"], f"{label}.nextUpdate"), f"{label} nextUpdate"))
    for key in ("root_ca_crl", "pck_crl"):
        crl = load_crl(doc, key, what)
        last, nxt = crl.last_update_utc, crl.next_update_utc
        starts.append((last, f"{key} thisUpdate"))
        if nxt is not None:
            ends.append((nxt, f"{key} nextUpdate"))
    start = max(starts)
    end = min(ends)
    return start[0], start[1], end[0], end[1]


def _cross_check(report_json: str, q: Quote) -> list[str]:
    """Names of TD report fields where dcap-qvl's parse differs from ours."""
    try:
        report = json.loads(report_json)["report"]
        (body,) = report.values()  # {"TD10": {...}} or {"TD15": {...}}
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        return ["dcap-qvl report not readable"]
    diffs = []
    for theirs, ours in _FIELDS.items():
        if body.get(theirs) != getattr(q.body, ours).hex():
            diffs.append(theirs)
    for i in range(4):
        if body.get(f"rt_mr{i}") != q.body.rtmrs[i].hex():
            diffs.append(f"rt_mr{i}")
    return diffs


def _pem_chain(doc: dict[str, Any], key: str) -> list[x509.Certificate]:
    text = doc[key] if isinstance(doc[key], str) else ""
    pems = [m.encode() for m in re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S)]
    certs, problem = chain.load_chain(pems, f"collateral {key}")
    if problem or not certs:
        raise AttestInputError(problem or f"collateral {key} holds no PEM certificate")
    return certs


def check_signatures(doc: dict[str, Any], at: datetime, root: RootAnchor) -> tuple[Check, list[x509.Certificate]]:
    """TCB info and QE identity are signed (raw r|s, hex) by a signing certificate that chains to the pinned root."""
    problems: list[str] = []
    signers: dict[bytes, x509.Certificate] = {}
    for body_key, sig_key, chain_key in (("tcb_info", "tcb_info_signature", "tcb_info_issuer_chain"),
                                         ("qe_identity", "qe_identity_signature", "qe_identity_issuer_chain")):  # fmt: skip
        certs = _pem_chain(doc, chain_key)
        walk_problems, _how = chain.walk(certs, at, root)
        problems += [f"{chain_key}: {p}" for p in walk_problems]
        key = chain.cert_key(certs[0])
        try:
            raw = bytes.fromhex(str(doc[sig_key]))
        except ValueError:
            raise AttestInputError(f"collateral {sig_key} is not hex") from None
        if len(raw) != 64 or key is None or not ecdsa_ok(key, raw, str(doc[body_key]).encode()):
            problems.append(f"{sig_key} does not verify under {certs[0].subject.rfc4514_string()}")
        signers[certs[0].fingerprint(hashes.SHA256())] = certs[0]
    if problems:
        return Check("collateral", False, "; ".join(problems)), list(signers.values())
    names = ", ".join(sorted({c.subject.rfc4514_string() for c in signers.values()}))
    return Check("collateral", True, f"TCB info and QE identity signed by {names} (chain to the pinned root)"), list(signers.values())


def _status(report_json: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    try:
        doc = json.loads(report_json)
        return doc.get("platform_status"), doc.get("qe_status")
    except (json.JSONDecodeError, AttributeError):
        return None, None


def check_tcb_status(raw_quote: bytes, q: Quote, doc: dict[str, Any], at: datetime, allowed: tuple[str, ...],
                     root: RootAnchor, res: CollateralResult) -> Check:  # fmt: skip
    """dcap-qvl's verdict: TCB status (worse of platform and QE) with advisory IDs, as dcap-qvl reports them."""
    dcap_qvl = require("dcap_qvl", "collateral", "checking collateral (--collateral)")  # native, an optional extra

    if q.body.debug:
        res.status = "not-checked"
        return Check.not_checked("tcb_status", "dcap-qvl evaluates no TCB status for a DEBUG TD")
    try:
        coll = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(doc))
        now = int(at.timestamp())
        if root.der is None:
            report = dcap_qvl.verify(raw_quote[: q.length], coll, now)
        else:
            report = dcap_qvl.verify_with_root_ca(raw_quote[: q.length], coll, root.der, now)
    except (ValueError, RuntimeError, TypeError) as e:
        res.status = "error"
        return Check("tcb_status", False, "dcap-qvl: " + " ".join(str(e).split()))
    res.status, res.advisory_ids = str(report.status), list(report.advisory_ids)
    text = report.to_json()
    res.platform_status, res.qe_status = _status(text)
    res.cross_check = _cross_check(text, q)
    split = ""
    if res.platform_status and res.qe_status:
        split = f" (platform {res.platform_status.get('status')}, QE {res.qe_status.get('status')})"
    detail = f"{res.status}{split}, " + (f"advisories {', '.join(res.advisory_ids)}" if res.advisory_ids else "no advisories")
    if res.status not in allowed:
        detail += f" (accepted: {', '.join(allowed)})"
    if res.cross_check:
        detail += f"; dcap-qvl and sealbox parse these fields differently: {', '.join(res.cross_check)}"
    return Check("tcb_status", res.status in allowed and not res.cross_check, detail)


def check_collateral(raw_quote: bytes, q: Quote, doc: dict[str, Any], at: datetime, allowed: tuple[str, ...] = ("UpToDate",),
                     certs: list[x509.Certificate] | None = None, root: RootAnchor | None = None) -> CollateralResult:  # fmt: skip
    """Everything the collateral lets us check at `at`: its own signatures and validity window, revocation of the
    PCK chain (`certs`, leaf first; parsed from the quote when not given), the QE identity, and the TCB status."""
    require("dcap_qvl", "collateral", "checking collateral (--collateral)")  # the extra first, before any input is read
    root = root or verify.INTEL_ROOT
    if certs is None:
        certs, _ = chain.load_chain(q.pck_chain_pem)
    start, start_why, end, end_why = validity_window(doc)
    res = CollateralResult(at, "", start, end, (start_why, end_why))
    if at < start or at >= end:
        res.status = "not-yet-valid" if at < start else "expired"
        why = (f"collateral is not valid before {chain.ts(start)} ({start_why})" if at < start
               else f"collateral expired at {chain.ts(end)} ({end_why})")  # fmt: skip
        res.checks = [Check("collateral", False, why),
                      *(Check.not_checked(n, f"the collateral is not valid at {chain.ts(at)}") for n in COLLATERAL_CHECKS)]
        return res
    signed, signers = check_signatures(doc, at, root)
    res.checks = [signed, check_revocation(certs, signers, doc, root), check_qe_identity(q.qe_report, doc["qe_identity"])]
    res.checks.append(check_tcb_status(raw_quote, q, doc, at, allowed, root, res))
    res.checks.sort(key=lambda c: ("collateral", *COLLATERAL_CHECKS).index(c.name))
    return res
