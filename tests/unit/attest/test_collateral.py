from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from attest_vectors import QUOTES, read

from sealbox.attest import AttestInputError
from sealbox.attest.collateral import check_collateral, load_collateral, validity_window
from sealbox.attest.quote import parse_quote

COLLATERAL = "dcap-qvl/tdx_quote_collateral.json"
# The window SOURCES.md states for this collateral.
START = datetime(2025, 6, 19, 10, 32, 27, tzinfo=UTC)
END = datetime(2025, 7, 19, 10, 0, 35, tzinfo=UTC)


def check(at: datetime, doc: dict | None = None, quote: str = "dcap", allowed: tuple[str, ...] = ("UpToDate",)):
    raw = read(QUOTES[quote])
    return check_collateral(raw, parse_quote(raw), doc or load_collateral(read(COLLATERAL).decode()), at, allowed)


def test_window_is_computed_from_the_collateral_itself() -> None:
    start, start_why, end, end_why = validity_window(load_collateral(read(COLLATERAL).decode()))
    assert (start, end) == (START, END)
    assert (start_why, end_why) == ("qeIdentity issueDate", "pck_crl nextUpdate")


@pytest.mark.parametrize("at", [START, START + timedelta(days=12), END - timedelta(seconds=1)])
def test_up_to_date_inside_the_window(at: datetime) -> None:
    res = check(at)
    assert res.ok and res.status == "UpToDate", res.detail
    assert res.cross_check == []  # dcap-qvl's parse of the TD report agrees with ours


@pytest.mark.parametrize(
    ("at", "status"),
    [
        (START - timedelta(seconds=1), "not-yet-valid"),
        (END, "expired"),
        (END + timedelta(days=1), "expired"),
        (datetime(2026, 11, 1, tzinfo=UTC), "expired"),
    ],
)
def test_outside_the_window_the_collateral_is_reported_as_such(at: datetime, status: str) -> None:
    res = check(at)
    assert not res.ok and res.status == status
    assert ("2025-07-19T10:00:35Z" if status == "expired" else "2025-06-19T10:32:27Z") in res.detail


def test_tampered_tcb_info_fails_in_sealbox_and_in_dcap_qvl() -> None:
    doc = load_collateral(read(COLLATERAL).decode())
    original = doc["tcb_info"]
    doc["tcb_info"] = original.replace('"tcbEvaluationDataNumber":', '"tcbEvaluationDataNumber":1', 1)
    assert doc["tcb_info"] != original
    res = check(START + timedelta(days=1), doc)
    assert not res.ok and res.status == "error"
    signer = "C=US,ST=CA,L=Santa Clara,O=Intel Corporation,CN=Intel SGX TCB Signing"
    assert res.detail.startswith(f"collateral: tcb_info_signature does not verify under {signer}")
    assert "tcb_status: dcap-qvl: Verification failed: Signature is invalid for tcb_info" in res.detail


def test_collateral_for_another_platform_does_not_verify_the_cos_quote() -> None:
    res = check(START + timedelta(days=1), quote="cos")
    assert not res.ok and res.status == "error"


def test_status_not_in_allowed_list_fails() -> None:
    res = check(START + timedelta(days=1), allowed=("OutOfDate",))
    assert not res.ok and res.status == "UpToDate" and "accepted: OutOfDate" in res.detail


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"tcb_info": "{}"}', "lacks pck_crl_issuer_chain"),
    ],
)
def test_bad_collateral_files(text: str, message: str) -> None:
    with pytest.raises(AttestInputError, match=message):
        load_collateral(text)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("pck_crl", "zz", "pck_crl is not a hex-encoded DER CRL"),
        ("tcb_info", "not json", "tcb_info is not a JSON string"),
        ("qe_identity", json.dumps({"issueDate": "yesterday", "nextUpdate": "x"}), "is not an ISO 8601 time"),
        ("qe_identity", json.dumps({"id": "TD_QE"}), "qe_identity lacks issueDate/nextUpdate"),
    ],
)
def test_bad_collateral_fields(key: str, value: str, message: str) -> None:
    doc = load_collateral(read(COLLATERAL).decode())
    doc[key] = value
    with pytest.raises(AttestInputError, match=message):
        validity_window(doc)
