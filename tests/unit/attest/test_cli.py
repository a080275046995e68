"""`sealbox attest ...` through the real entry point: exit codes 0/1/2, one-line stderr, JSON output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from attest_vectors import QUOTES, read, vector

from sealbox.attest.eventlog import ALG_SHA384, parse_event_log, replay
from sealbox.cli.main import main

AT = "2026-06-01T00:00:00Z"
INSIDE = "2025-07-01T00:00:00Z"  # inside the dcap-qvl collateral window


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["attest", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("sealbox: error: "), err
    return err


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_quote_signatures_verify(capsys, name: str) -> None:
    code, out, err = run(capsys, "quote", str(vector(QUOTES[name])), "--at", AT, "--signatures-only")
    assert (code, err) == (0, "")
    assert out.rstrip().endswith("result: SIGNATURES VALID — TCB status, QE identity and revocation NOT checked (accepted with --signatures-only)")


def test_quote_json_has_hex_fields(capsys) -> None:
    code, out, _ = run(capsys, "quote", str(vector(QUOTES["v5"])), "--at", AT, "--json", "--signatures-only")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] is True and doc["body_kind"] == "TD1.5"
    assert doc["body"]["mrtd"].startswith("7348651a34b2d2d3") and len(doc["body"]["rtmrs"]) == 4
    assert [c["name"] for c in doc["checks"] if c["ok"]] == ["quote_signature", "qe_report_data", "qe_report_signature", "pck_chain", "td_attributes"]


def test_flipped_body_byte_exits_1_with_reason(capsys, tmp_path: Path) -> None:
    raw = bytearray(read(QUOTES["cos"]))
    raw[200] ^= 1
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(raw))
    code, out, err = run(capsys, "quote", str(bad), "--at", AT)
    assert code == 1 and "[FAIL] quote_signature" in out
    assert "did not verify: quote_signature:" in one_line(err)


def test_collateral_inside_and_outside_the_window(capsys) -> None:
    args = ["quote", str(vector(QUOTES["dcap"])), "--collateral", str(vector("dcap-qvl/tdx_quote_collateral.json"))]
    code, out, _ = run(capsys, *args, "--at", INSIDE, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["collateral"]["tcb_status"] == "UpToDate"
    code, out, err = run(capsys, *args, "--at", "2025-08-01T00:00:00Z")
    assert code == 1 and "collateral expired at 2025-07-19T10:00:35Z" in one_line(err)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "cannot read quote"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\x07\x00" + bytes(700)), "unsupported quote version 7"),
        (lambda p: p.write_bytes(read(QUOTES["cos"])[:1000]), "truncated at offset"),
        (lambda p: p.write_bytes(bytes(2 * 1024 * 1024)), "larger than"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_bad_quote_input_exits_2(capsys, tmp_path: Path, make, message: str) -> None:
    path = tmp_path / "q.dat"
    make(path)
    code, out, err = run(capsys, "quote", str(path))
    assert code == 2 and out == "" and message in one_line(err)


def test_bad_time_exits_2(capsys) -> None:
    code, _, err = run(capsys, "quote", str(vector(QUOTES["cos"])), "--at", "next tuesday")
    assert code == 2 and "--at 'next tuesday' is not a time" in one_line(err)


def test_eventlog_matches_quote(capsys) -> None:
    code, out, err = run(
        capsys, "eventlog", str(vector("go-tdx-guest/ccel_ccel_data.dat")),
        "--table", str(vector("go-tdx-guest/ccel_ccel_table.dat")),
        "--quote", str(vector(QUOTES["cos"])), "--at", AT, "--json", "--signatures-only",
    )  # fmt: skip
    doc = json.loads(out)
    assert (code, err) == (0, "")
    assert doc["quote_rtmr_match"] == {"RTMR0": True, "RTMR1": True, "RTMR2": True, "RTMR3": True}
    assert doc["ccel_table"]["laml"] == 262144 and len(doc["events"]) == 43


def test_eventlog_against_a_foreign_quote_exits_1(capsys) -> None:
    code, out, err = run(capsys, "eventlog", str(vector("dstack/ccel.bin")), "--quote", str(vector(QUOTES["cos"])), "--at", AT)
    assert code == 1 and "[FAIL] replay of RTMR0 differs from the quote" in out
    assert "RTMR0: replay 274c2344" in one_line(err)


def test_eventlog_with_prediction(capsys, tmp_path: Path) -> None:
    log = parse_event_log(read("go-tdx-guest/ccel_ccel_data.dat"))
    values = replay(log)
    events = [{"description": e.describe(), "digest": e.digests[ALG_SHA384].hex(), "event_type": e.type_name} for e in log.rtmr_events(1)]
    doc = {"schema": "sealbox.measurements/v1", "inputs": {},
           "registers": {"RTMR1": {"expected": values[1].hex(), "events": events}, "PCR4": {"expected": "00" * 32}}}  # fmt: skip
    pred = tmp_path / "measurements.json"
    pred.write_text(json.dumps(doc))
    logfile = str(vector("go-tdx-guest/ccel_ccel_data.dat"))
    code, out, err = run(capsys, "eventlog", logfile, "--expect", str(pred))
    assert (code, err) == (0, "") and "prediction: checked RTMR1" in out and "not checked: PCR4" in out

    events[2]["digest"] = "00" * 48
    events[2]["event_type"] = "EV_IPL"
    pred.write_text(json.dumps(doc))
    code, out, err = run(capsys, "eventlog", logfile, "--expect", str(pred), "--json")
    mismatches = json.loads(out)["policy"]["mismatches"]
    assert code == 1 and [(m["register"], m["kind"], m["event_index"]) for m in mismatches] == [
        ("RTMR1", "event", 2), ("RTMR1", "event_type", 2)
    ]  # the final value still matches: only the prediction's event list is wrong
    one_line(err)


@pytest.mark.parametrize(
    ("flag", "content", "message"),
    [
        (None, b"\x00" * 64, "not the EV_NO_ACTION Spec ID event"),
        ("--table", b"XXXX" + bytes(52), "ACPI signature is b'XXXX'"),
        ("--expect", b"{}", "schema: Field required"),
    ],
)
def test_eventlog_bad_inputs_exit_2(capsys, tmp_path: Path, flag: str | None, content: bytes, message: str) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    args = [str(bad)] if flag is None else [str(vector("dstack/ccel.bin")), flag, str(bad)]
    code, out, err = run(capsys, "eventlog", *args)
    assert code == 2 and out == "" and message in one_line(err)
