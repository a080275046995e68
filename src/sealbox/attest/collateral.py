"""TCB status from Intel collateral, offline, through dcap-qvl.

Why dcap-qvl for this part: judging the TCB status means verifying Intel's signed TCB info and QE
identity (their own signing chain and CRLs), matching the PCK certificate's SGX extension (FMSPC,
CPUSVN components, PCESVN) and the TD's TEE_TCB_SVN against the sorted TCB levels, and checking
the QE report against the QE identity. That is a large, policy-heavy algorithm which Intel changes
over time; dcap-qvl (Phala Network, Rust, MIT; pinned 0.7.0 in pyproject) implements it, is widely
used, and its `verify(quote, collateral, now_secs)` works fully offline: it was run inside an
empty network namespace with the collateral JSON in shared/vectors/tdx/dcap-qvl and returned the
same result. It reads the collateral JSON format written by its own `get_collateral` (hex strings
for CRLs and signatures), which is the format accepted here.

sealbox keeps its own parsing and signature checks (quote.py, verify.py) as the primary path; this
module adds (a) the TCB status, (b) the collateral's validity window computed here from the
collateral itself, so "expired" is explained with the date that ran out, and (c) a cross-check that
dcap-qvl's parse of the TD report agrees with sealbox's, field by field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from sealbox.attest import AttestInputError
from sealbox.attest.quote import Quote
from sealbox.util.optional import require

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
    ok: bool
    status: str  # TCB status from dcap-qvl ("UpToDate", ...) or "expired" / "not-yet-valid" / "error"
    detail: str
    valid_from: datetime
    valid_until: datetime  # exclusive: at this instant the earliest nextUpdate has passed
    window_reasons: tuple[str, str] = ("", "")
    advisory_ids: list[str] = field(default_factory=list)
    cross_check: list[str] = field(default_factory=list)  # fields where the two parsers disagree


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
        try:
            crl = x509.load_der_x509_crl(bytes.fromhex(doc[key]))
            last, nxt = crl.last_update_utc, crl.next_update_utc
        except (TypeError, ValueError):
            raise AttestInputError(f"{what}: {key} is not a hex-encoded DER CRL") from None
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


def check_collateral(
    raw_quote: bytes, q: Quote, doc: dict[str, Any], at: datetime, allowed: tuple[str, ...] = ("UpToDate",)
) -> CollateralResult:
    """TCB status of the quote's platform and QE at `at`; `ok` only if the status is in `allowed`."""
    # native module, an optional extra: imported only when collateral is given
    dcap_qvl = require("dcap_qvl", "collateral", "checking collateral (--collateral)")

    start, start_why, end, end_why = validity_window(doc)

    def result(ok: bool, status: str, detail: str, **extra: Any) -> CollateralResult:
        return CollateralResult(at, ok, status, detail, start, end, (start_why, end_why), **extra)

    if at < start:
        return result(False, "not-yet-valid", f"collateral is not valid before {start:%Y-%m-%dT%H:%M:%SZ} ({start_why})")
    if at >= end:
        return result(False, "expired", f"collateral expired at {end:%Y-%m-%dT%H:%M:%SZ} ({end_why})")
    try:
        coll = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(doc))
        report = dcap_qvl.verify(raw_quote[: q.length], coll, int(at.timestamp()))
    except (ValueError, RuntimeError, TypeError) as e:
        return result(False, "error", "dcap-qvl: " + " ".join(str(e).split()))
    status = str(report.status)
    advisories = list(report.advisory_ids)
    diffs = _cross_check(report.to_json(), q)
    detail = f"TCB status {status}" + (f", advisories {', '.join(advisories)}" if advisories else "")
    if status not in allowed:
        detail += f" (accepted: {', '.join(allowed)})"
    if diffs:
        detail += f"; dcap-qvl and sealbox parse these fields differently: {', '.join(diffs)}"
    return result(status in allowed and not diffs, status, detail, advisory_ids=advisories, cross_check=diffs)
