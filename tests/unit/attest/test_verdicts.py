"""`sealbox attest` claims only what it checked: the verdict names what was not checked, and only the checks that
ran can make it pass. Vendored vectors for the real-world cases, the synthetic Intel-like PKI (collgen.py) for the
constructed ones; every constructed failure is one line on stderr naming the reason."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import dcap_qvl
import pytest
from attest_vectors import QUOTES, vector
from collgen import AT as SYN_AT
from collgen import IntelLike
from cryptography import x509
from quotegen import QeFields

from sealbox.attest import verify
from sealbox.cli.main import main

AT = "2026-06-01T00:00:00Z"
INSIDE = "2025-07-01T00:00:00Z"  # inside the vendored dcap-qvl collateral's window
COLLATERAL = "dcap-qvl/tdx_quote_collateral.json"
UNCHECKED = "result: SIGNATURES VALID — TCB status, QE identity and revocation NOT checked"
DEBUG_ATTRS = ((1 << 28) | 1).to_bytes(8, "little")
PCK = "O=Test Corporation,CN=Test SGX PCK Certificate"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["attest", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("sealbox: error: "), err
    return err


# ---- vendored vectors -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(QUOTES))
def test_without_collateral_the_verdict_says_what_was_not_checked_and_fails(capsys, name: str) -> None:
    code, out, err = run(capsys, "quote", str(vector(QUOTES[name])), "--at", AT)
    assert code == 1 and "VERIFIED" not in out
    assert out.splitlines()[-1] == UNCHECKED
    for what in ("tcb_status", "qe_identity", "revocation"):
        assert f"[--] {what}: NOT checked: needs --collateral" in out
    assert "--signatures-only" in one_line(err) and "TCB status, QE identity and revocation were NOT checked" in err


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_signatures_only_is_an_explicit_opt_in(capsys, name: str) -> None:
    code, out, err = run(capsys, "quote", str(vector(QUOTES[name])), "--at", AT, "--signatures-only")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == UNCHECKED + " (accepted with --signatures-only)"


def test_vendored_collateral_checks_everything(capsys) -> None:
    code, out, err = run(capsys, "quote", str(vector(QUOTES["dcap"])), "--collateral", str(vector(COLLATERAL)), "--at", INSIDE)
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-1] == "result: VERIFIED"
    assert "[ok] tcb_status: UpToDate (platform UpToDate, QE UpToDate), no advisories" in out
    mrsigner = "dc9e2a7c6f948f17474e34a7fc43ed030f7c1563f1babddf6340c82e0e54a8c5"
    assert f"[ok] qe_identity: TD_QE MRSIGNER {mrsigner}, ISVPRODID 2, ISVSVN 6 → QE TCB UpToDate" in out
    assert "[ok] revocation: PCK certificate not in the PCK CRL" in out
    assert "[ok] collateral: TCB info and QE identity signed by" in out


def test_json_lists_not_checked_items(capsys) -> None:
    code, out, _ = run(capsys, "quote", str(vector(QUOTES["v5"])), "--at", AT, "--json")
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and doc["verdict"] == UNCHECKED.removeprefix("result: ")
    assert doc["not_checked"] == ["tcb_status", "qe_identity", "revocation"]


def test_eventlog_without_quote_or_prediction_never_says_ok(capsys) -> None:
    log = str(vector("go-tdx-guest/ccel_ccel_data.dat"))
    code, out, err = run(capsys, "eventlog", log)
    assert code == 1 and "result: OK" not in out
    assert out.splitlines()[-1] == "result: REPLAY ONLY — nothing was compared (give --quote and/or --expect)"
    assert "nothing was compared" in one_line(err)
    code, out, err = run(capsys, "eventlog", log, "--replay-only")
    assert (code, err) == (0, "") and out.splitlines()[-1] == "result: REPLAY ONLY — nothing was compared (--replay-only)"


def test_eventlog_with_a_quote_carries_the_quote_verdict(capsys) -> None:
    gcp = "go-tdx-guest/"
    args = ["eventlog", str(vector(gcp + "ccel_ccel_data.dat")), "--quote", str(vector(QUOTES["cos"])), "--at", AT]
    code, out, err = run(capsys, *args)
    assert code == 1 and "TCB status, QE identity and revocation were NOT checked" in one_line(err)
    code, out, err = run(capsys, *args, "--signatures-only")
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == ("result: RTMRs match the quote; quote signatures valid — TCB status, QE identity and revocation "
                                    "NOT checked (accepted with --signatures-only)")


# ---- constructed cases (synthetic Intel-like PKI; dcap-qvl with the same root is the oracle) ---

@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `attest quote` on a synthetic quote + collateral, trusting the synthetic root."""

    def go(capsys, pki: IntelLike, *extra: str, qe: QeFields | None = None, **quote_kw) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
        monkeypatch.setattr(verify, "INTEL_ROOT", pki.anchor())
        q, c = tmp_path / "quote.dat", tmp_path / "collateral.json"
        q.write_bytes(pki.quote(qe, **quote_kw))
        c.write_text(json.dumps(pki.collateral()))
        return run(capsys, "quote", str(q), "--collateral", str(c), "--at", f"{SYN_AT:%Y-%m-%dT%H:%M:%SZ}", *extra)

    return go


def oracle(pki: IntelLike, qe: QeFields | None = None, **quote_kw) -> str:  # type: ignore[no-untyped-def]
    """dcap-qvl's own verdict on the same inputs (status, or its error)."""
    coll = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(pki.collateral()))
    try:
        return str(dcap_qvl.verify_with_root_ca(pki.quote(qe, **quote_kw), coll, pki.anchor().der, int(SYN_AT.timestamp())).status)
    except ValueError as e:
        return "error: " + " ".join(str(e).split())


def test_synthetic_set_verifies(capsys, synthetic) -> None:
    pki = IntelLike()
    assert oracle(pki) == "UpToDate"
    code, out, err = synthetic(capsys, pki)
    assert (code, err) == (0, ""), out
    assert out.splitlines()[-1] == "result: VERIFIED"


@pytest.mark.parametrize(
    ("make", "qe", "reason"),
    [
        (lambda: IntelLike(pck_not_after=SYN_AT - timedelta(days=1)), None, f"pck_chain: cert 0 ({PCK}) expired at"),
        (lambda: IntelLike(revoked_pck=True), None, "revocation: PCK certificate (serial "),
        (lambda: IntelLike(revoked_pck_ca=True), None, "revocation: cert 1 (O=Test Corporation,CN=Test SGX PCK Platform CA) (serial "),
        (IntelLike, QeFields(mr_signer=b"\x01" * 32), f"qe_identity: QE MRSIGNER {'01' * 32} is not the TD_QE's dc9e2a7c"),
        (IntelLike, QeFields(isv_prod_id=3), "qe_identity: QE ISVPRODID 3 is not the TD_QE's 2"),
        (IntelLike, QeFields(isv_svn=1), "qe_identity: QE ISVSVN 1 is below every TCB level of the QE identity (lowest 2)"),
        (lambda: IntelLike(pck_extra=((x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),)),
         None, f"pck_chain: cert 0 ({PCK}) has an unknown critical extension 1.3.6.1.4.1.99999.1"),
    ],
    ids=["expired-pck", "revoked-pck", "revoked-pck-ca", "qe-mrsigner", "qe-isvprodid", "qe-isvsvn", "unknown-critical-ext"],
)
def test_constructed_failures_each_have_a_one_line_reason(capsys, synthetic, make, qe: QeFields | None, reason: str) -> None:
    pki = make()
    qe = QeFields(cpu_svn=pki.cpu_svn, **{k: getattr(qe, k) for k in ("mr_signer", "isv_prod_id", "isv_svn")}) if qe else None
    assert oracle(pki, qe).startswith("error: ")  # dcap-qvl refuses the same inputs
    code, out, err = synthetic(capsys, pki, qe=qe)
    assert code == 1 and out.splitlines()[-1] == "result: FAILED"
    assert reason in one_line(err), err


def test_debug_td_fails_unless_allowed(capsys, synthetic) -> None:
    pki = IntelLike()
    assert oracle(pki, td_attributes=DEBUG_ATTRS) == "error: Verification failed: Debug mode is enabled"
    code, out, err = synthetic(capsys, pki, td_attributes=DEBUG_ATTRS)
    assert code == 1 and "td_attributes: the TD is in DEBUG mode (TDATTRIBUTES bit 0" in one_line(err)
    code, out, err = synthetic(capsys, pki, "--allow-debug", td_attributes=DEBUG_ATTRS)
    # dcap-qvl evaluates no TCB status for a DEBUG TD: that is said, and not passed off as checked
    assert code == 1 and "[ok] td_attributes: DEBUG TD accepted (--allow-debug)" in out
    assert "[--] tcb_status: NOT checked: dcap-qvl evaluates no TCB status for a DEBUG TD" in out
    assert out.splitlines()[-1] == "result: SIGNATURES VALID — TCB status NOT checked"
    code, out, err = synthetic(capsys, pki, "--allow-debug", "--signatures-only", td_attributes=DEBUG_ATTRS)
    assert (code, err) == (0, "")
    assert out.splitlines()[-1] == "result: SIGNATURES VALID — TCB status NOT checked (accepted with --signatures-only)"


def test_advisories_are_reported_the_way_dcap_qvl_does(capsys, synthetic) -> None:
    pki = IntelLike(cpu_svn=bytes([2] * 8 + [0] * 8))  # matches only the OutOfDate TCB level
    assert oracle(pki) == "OutOfDate"
    code, out, err = synthetic(capsys, pki)
    assert code == 1
    line = "tcb_status: OutOfDate (platform OutOfDate, QE UpToDate), advisories INTEL-SA-00837, INTEL-SA-00960 (accepted: UpToDate)"
    assert f"[FAIL] {line}" in out and line in one_line(err)
    code, out, err = synthetic(capsys, pki, "--allow-status", "OutOfDate", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["collateral"]["tcb_status"] == "OutOfDate"
    assert doc["collateral"]["advisory_ids"] == ["INTEL-SA-00837", "INTEL-SA-00960"]
    assert doc["collateral"]["platform_status"] == {"status": "OutOfDate", "advisory_ids": ["INTEL-SA-00837", "INTEL-SA-00960"]}
