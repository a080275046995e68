from __future__ import annotations

import json
from typing import Any

import pytest
from attest_vectors import QUOTES, read

from sealbox.attest import AttestInputError
from sealbox.attest.eventlog import ALG_SHA384, EventLog, parse_event_log, replay
from sealbox.attest.policy import compare, load_measurements
from sealbox.attest.quote import parse_quote

GCP_LOG = "go-tdx-guest/ccel_ccel_data.dat"


def prediction_from(log: EventLog, registers: tuple[int, ...] = (0, 1, 2)) -> dict[str, Any]:
    """A measurements.json in the shape `sealbox measure` writes, made from a known-good log."""
    values = replay(log)
    regs: dict[str, Any] = {
        f"RTMR{i}": {
            "expected": values[i].hex(),
            "events": [
                {"description": e.describe(), "digest": e.digests[ALG_SHA384].hex(), "event_type": e.type_name}
                for e in log.rtmr_events(i)
            ],
        }
        for i in registers
    }
    return {"schema": "sealbox.measurements/v1", "registers": regs, "inputs": {"uki": "x.efi"}}


def run(doc: dict[str, Any], with_quote: bool = False):
    log = parse_event_log(read(GCP_LOG))
    body = parse_quote(read(QUOTES["cos"])).body if with_quote else None
    return compare(load_measurements(json.dumps(doc)), log, replay(log), body)


def test_matching_prediction_passes_and_lists_checked_registers() -> None:
    doc = prediction_from(parse_event_log(read(GCP_LOG)))
    doc["registers"]["PCR4"] = {"expected": "00" * 32, "events": []}
    res = run(doc)
    assert res.ok, [m.line() for m in res.mismatches]
    assert res.checked == ["RTMR0", "RTMR1", "RTMR2"]
    assert "PCR4" in res.not_checked


def test_registers_absent_from_the_prediction_are_not_checked() -> None:
    res = run(prediction_from(parse_event_log(read(GCP_LOG)), registers=(1,)))
    assert res.ok and res.checked == ["RTMR1"]


def test_changed_event_digest_is_reported_with_register_index_and_type() -> None:
    doc = prediction_from(parse_event_log(read(GCP_LOG)))
    ev = doc["registers"]["RTMR1"]["events"][3]  # the shim EV_EFI_BOOT_SERVICES_APPLICATION
    ev["digest"] = "ab" * 48
    doc["registers"]["RTMR1"]["expected"] = "cd" * 48
    res = run(doc)
    kinds = sorted((m.register, m.kind) for m in res.mismatches)
    assert kinds == [("RTMR1", "event"), ("RTMR1", "value")]
    event = next(m for m in res.mismatches if m.kind == "event")
    assert (event.event_index, event.log_index, event.event_type) == (3, 17, "EV_EFI_BOOT_SERVICES_APPLICATION")
    assert event.expected == "ab" * 48 and len(event.actual) == 96
    assert "RTMR1 event 3 (log #17, EV_EFI_BOOT_SERVICES_APPLICATION): event" in event.line()


def test_event_type_missing_and_extra_events() -> None:
    doc = prediction_from(parse_event_log(read(GCP_LOG)))
    doc["registers"]["RTMR0"]["events"][0]["event_type"] = "EV_POST_CODE"
    dropped = doc["registers"]["RTMR2"]["events"].pop()  # the log then has one event more than predicted
    doc["registers"]["RTMR1"]["events"].append({"description": "extra app", "digest": "11" * 48})
    res = run(doc)
    found = {(m.register, m.kind) for m in res.mismatches}
    assert found == {("RTMR0", "event_type"), ("RTMR2", "extra_event"), ("RTMR1", "missing_event")}
    extra = next(m for m in res.mismatches if m.kind == "extra_event")
    assert extra.actual == dropped["digest"]


def test_mrtd_needs_the_quote() -> None:
    doc = prediction_from(parse_event_log(read(GCP_LOG)))
    mrtd = parse_quote(read(QUOTES["cos"])).body.mrtd.hex()
    doc["registers"]["MRTD"] = {"expected": mrtd, "events": []}
    assert "MRTD" in run(doc).not_checked
    res = run(doc, with_quote=True)
    assert res.ok and "MRTD" in res.checked
    doc["registers"]["MRTD"]["expected"] = "00" * 48
    assert [m.register for m in run(doc, with_quote=True).mismatches] == ["MRTD"]


def test_quote_only_comparison_checks_values_not_events() -> None:
    doc = prediction_from(parse_event_log(read(GCP_LOG)), registers=(0,))
    res = compare(load_measurements(json.dumps(doc)), body=parse_quote(read(QUOTES["cos"])).body)
    assert res.ok and res.checked == ["RTMR0"] and "RTMR0 events" in res.not_checked


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("not json", "is not JSON"),
        ([], "Input should be"),
        ({"schema": "other/v1", "registers": {}}, "schema.*expected schema 'sealbox.measurements/v1'"),
        ({"schema": "sealbox.measurements/v1"}, "registers: Field required"),
        ({"schema": "sealbox.measurements/v1", "registers": {"RTMR1": {"expected": "xyz"}}}, "registers.RTMR1.expected"),
        ({"schema": "sealbox.measurements/v1", "registers": {"RTMR1": {"expected": "00" * 32}}}, "must be 48 bytes"),
        (
            {"schema": "sealbox.measurements/v1", "registers": {"RTMR1": {"expected": "00" * 48, "events": [{"description": "d"}]}}},
            "events.0.digest: Field required",
        ),
    ],
)
def test_bad_prediction_files_are_one_line_errors(doc: Any, message: str) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    with pytest.raises(AttestInputError, match=message) as e:
        load_measurements(text, "m.json")
    assert "\n" not in str(e.value)
