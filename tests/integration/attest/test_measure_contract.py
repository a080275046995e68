"""The measure → attest contract on a real build: `sealbox measure` of the default image writes
measurements.json, and `sealbox attest` takes it as the policy for an event log and a quote.

What a TD booting exactly this image would hand over is written here from the prediction: a TCG2 crypto-agile
CC event log (encoded by this test, parsed by attest) holding the predicted RTMR1/RTMR2 events, and a SYNTHETIC
quote (tests/unit/attest/quotegen.py, its own PKI) carrying the predicted MRTD/RTMR values. attest replays the
log itself; the names, fields and digests measure writes must be the ones attest reads. Then a different kernel
(one event digest changed in log and quote alike) must fail against the same prediction, naming the event.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "attest"))
from quotegen import T0, Pki, build_quote  # noqa: E402

from sealbox.attest import verify  # noqa: E402
from sealbox.attest.evtypes import EVENT_TYPES  # noqa: E402
from sealbox.cli.main import main  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.skipif(os.geteuid() != 0, reason="building the default image needs root")]
TDVF = Path("/usr/share/ovmf/OVMF.fd")  # Debian's unified OVMF image carries TDX metadata (docs/measurements.md)
AT = f"{T0 + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
NAMES = {name: code for code, name in EVENT_TYPES.items()}


def encode_log(events: dict[int, list[dict[str, str]]]) -> bytes:
    """A TCG2 crypto-agile log with SHA-384 only; CC register index = RTMR + 1."""
    spec = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, 1) + struct.pack("<HH", 0x000C, 48) + b"\0"
    out = struct.pack("<II", 0, 0x3) + bytes(20) + struct.pack("<I", len(spec)) + spec
    for rtmr, evs in sorted(events.items()):
        for e in evs:
            data = e["description"].encode()
            out += struct.pack("<IIIH", rtmr + 1, NAMES[e["event_type"]], 1, 0x000C) + bytes.fromhex(e["digest"])
            out += struct.pack("<I", len(data)) + data
    return out


def replay(digests: list[str]) -> bytes:
    reg = bytes(48)
    for d in digests:
        reg = hashlib.sha384(reg + bytes.fromhex(d)).digest()
    return reg


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    from imagecache import default_image

    image = default_image()
    build = tmp_path_factory.mktemp("measured")
    for f in image.iterdir():  # measure writes measurements.json beside the artifacts: not into the shared image
        if f.name != "measurements.json":
            (build / f.name).symlink_to(f)
    args = ["measure", str(build), *(["--firmware", str(TDVF)] if TDVF.is_file() else [])]
    assert main(args) == 0
    return build, json.loads((build / "measurements.json").read_text())


def td_evidence(tmp: Path, regs: dict, rtmr1_events: list[dict[str, str]]) -> tuple[Path, Path]:  # type: ignore[type-arg]
    log, quote = tmp / "ccel.bin", tmp / "quote.dat"
    log.write_bytes(encode_log({1: rtmr1_events, 2: regs["RTMR2"]["events"]}))
    rtmr1 = replay([e["digest"] for e in rtmr1_events])
    rtmr2 = replay([e["digest"] for e in regs["RTMR2"]["events"]])
    mrtd = bytes.fromhex(regs["MRTD"]["expected"]) if "MRTD" in regs else b"\x11" * 48
    quote.write_bytes(build_quote(PKI, mrtd=mrtd, rtmrs=(bytes(48), rtmr1, rtmr2, bytes(48))))
    return log, quote


PKI = Pki()


def test_prediction_is_the_policy_for_log_and_quote(measured, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    build, doc = measured
    regs = doc["registers"]
    assert doc["schema"] == "sealbox.measurements/v1" and regs["RTMR1"]["events"]
    monkeypatch.setattr(verify, "INTEL_ROOT", PKI.anchor())
    log, quote = td_evidence(tmp_path, regs, regs["RTMR1"]["events"])
    pred = str(build / "measurements.json")

    code = main(["attest", "eventlog", str(log), "--quote", str(quote), "--expect", pred, "--signatures-only", "--at", AT])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), out
    checked = ["MRTD", "RTMR1", "RTMR2"] if "MRTD" in regs else ["RTMR1", "RTMR2"]
    assert f"prediction: checked {', '.join(checked)}" in out
    assert "not checked: PCR4: TPM PCRs are not recorded in a TDX CC event log" in out
    assert f"result: RTMRs match the quote; prediction matches ({', '.join(checked)}); quote signatures valid" in out

    code = main(["attest", "quote", str(quote), "--expect", pred, "--signatures-only", "--at", AT])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), out
    assert f"[ok] measurements: {', '.join(checked)} match the prediction" in out

    # another kernel: the log and the quote agree with each other, not with the prediction
    other = [dict(e) for e in regs["RTMR1"]["events"]]
    kernel = next(i for i, e in enumerate(other) if e["event_type"] == "EV_EFI_BOOT_SERVICES_APPLICATION" and i > 0)
    other[kernel]["digest"] = hashlib.sha384(b"another kernel").hexdigest()
    log, quote = td_evidence(tmp_path, regs, other)
    code = main(["attest", "eventlog", str(log), "--quote", str(quote), "--expect", pred, "--signatures-only", "--at", AT])
    out, err = capsys.readouterr()
    assert code == 1 and "[ok] replay of RTMR1 matches the quote" in out
    assert f"[FAIL] RTMR1 event {kernel} (log #{kernel}, EV_EFI_BOOT_SERVICES_APPLICATION): event" in out
    assert "[FAIL] RTMR1: value: expected " + regs["RTMR1"]["expected"] in out
