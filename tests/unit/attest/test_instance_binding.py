"""`attest quote --instance NAME | --instance-data FILE`: the quote's MRCONFIGID must be the SHA-384 of that
sandbox's canonical instance data (guest/instance.py); `--expect` checks MRTD/RTMRs against measurements.json.
Synthetic quotes (quotegen.py) carry the right or a wrong MRCONFIGID."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from quotegen import T0, Pki, build_quote

from sealbox.attest import verify
from sealbox.cli.main import main
from sealbox.guest.instance import InstanceData, canonical, mrconfigid, render

AT = f"{T0 + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom sealbox-sb1"


def data(key: str = KEY) -> InstanceData:
    return InstanceData(hostname="sb1", address="10.32.0.2/30", gateway="10.32.0.1", dns=("10.32.0.1",),
                        authorized_keys={"root": (key,), "dev": (key,)})  # fmt: skip


@pytest.fixture
def quote_for(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    pki = Pki()
    monkeypatch.setattr(verify, "INTEL_ROOT", pki.anchor())

    def make(digest: bytes, mrtd: bytes = b"\x11" * 48) -> Path:
        q = tmp_path / f"quote-{digest.hex()[:8]}.dat"
        q.write_bytes(build_quote(pki, mrconfigid=digest, mrtd=mrtd))
        return q

    return make


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["attest", "quote", *args, "--at", AT, "--signatures-only"])
    out, err = capsys.readouterr()
    return code, out, err


def test_matching_instance_data_file(capsys, quote_for, tmp_path: Path) -> None:
    disk = tmp_path / "instance.img"
    disk.write_bytes(render(data()))
    digest = hashlib.sha384(canonical(data())).hexdigest()  # the oracle: hashlib over the canonical text
    code, out, err = run(capsys, str(quote_for(mrconfigid(data()))), "--instance-data", str(disk))
    assert (code, err) == (0, ""), out
    assert f"[ok] mrconfigid: {digest} = SHA-384 of the instance data in {disk}" in out


def test_other_instance_data_fails_with_the_reason(capsys, quote_for, tmp_path: Path) -> None:
    disk = tmp_path / "instance.img"
    disk.write_bytes(render(data(KEY.replace("Fom", "Fxx"))))  # the host put in another key
    code, out, err = run(capsys, str(quote_for(mrconfigid(data()))), "--instance-data", str(disk))
    assert code == 1 and out.splitlines()[-1] == "result: FAILED"
    assert err.count("\n") == 1
    assert (f"mrconfigid: the quote's MRCONFIGID {mrconfigid(data()).hex()} is not the SHA-384 of the instance data in {disk} "
            f"({mrconfigid(data(KEY.replace('Fom', 'Fxx'))).hex()}): the TD was not started with this instance data") in err


def test_unbound_td_is_named_as_such(capsys, quote_for, tmp_path: Path) -> None:
    disk = tmp_path / "instance.img"
    disk.write_bytes(render(data()))
    code, _, err = run(capsys, str(quote_for(bytes(48))), "--instance-data", str(disk))
    assert code == 1 and "the quote's MRCONFIGID is all zero: the TD was started without instance data bound to it" in err


def test_instance_by_sandbox_name(capsys, quote_for, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "sandboxes" / "sb1").mkdir(parents=True)
    (state / "sandboxes" / "sb1" / "instance.img").write_bytes(render(data()))
    q = str(quote_for(mrconfigid(data())))
    code, out, err = run(capsys, q, "--instance", "sb1", "--state-dir", str(state))
    assert (code, err) == (0, ""), out
    assert f"= SHA-384 of the instance data of sandbox sb1 ({state / 'sandboxes' / 'sb1' / 'instance.img'})" in out
    code, out, err = run(capsys, q, "--instance", "nope", "--state-dir", str(state))
    assert code == 2 and out == "" and "no sandbox 'nope' in" in err and err.count("\n") == 1


def test_not_an_instance_disk_is_bad_input(capsys, quote_for, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"hello\n")
    code, out, err = run(capsys, str(quote_for(mrconfigid(data()))), "--instance-data", str(junk))
    assert code == 2 and out == "" and "missing SEALBOX-INSTANCE-V2 magic" in err


def test_expect_checks_mrtd_and_rtmrs_from_the_quote(capsys, quote_for, tmp_path: Path) -> None:
    pred = tmp_path / "measurements.json"
    doc = {"schema": "sealbox.measurements/v1", "inputs": {},
           "registers": {"MRTD": {"expected": "11" * 48}, "RTMR1": {"expected": "00" * 48, "events": [{"digest": "aa" * 48}]},
                         "PCR4": {"expected": "00" * 32}}}  # fmt: skip
    pred.write_text(json.dumps(doc))
    q = str(quote_for(mrconfigid(data())))
    code, out, err = run(capsys, q, "--expect", str(pred))
    assert (code, err) == (0, ""), out
    assert "[ok] measurements: MRTD, RTMR1 match the prediction; not checked: PCR4 (TPM PCRs are not" in out
    doc["registers"]["MRTD"]["expected"] = "22" * 48
    pred.write_text(json.dumps(doc))
    code, out, err = run(capsys, q, "--expect", str(pred))
    assert code == 1 and f"measurements: MRTD: value: expected {'22' * 48}, actual {'11' * 48}" in err
