"""go-tdx-guest's report.dat: what it is (see sealbox.attest.tdreport's docstring) and what it is not."""

from __future__ import annotations

import hashlib

import pytest
from attest_vectors import QUOTES, read

from sealbox.attest import AttestInputError
from sealbox.attest.quote import parse_quote
from sealbox.attest.tdreport import TD_REPORT_SIZE, parse_td_report

SHIFT = 48  # bytes missing at the front of report.dat


def realigned() -> bytes:
    """report.dat moved to its TDREPORT offsets; the lost 48 bytes stay unknown except REPORTTYPE."""
    raw = read("go-tdx-guest/report.dat")
    fixed = bytearray(bytes(SHIFT) + raw[: TD_REPORT_SIZE - SHIFT])
    fixed[0] = 0x81
    return bytes(fixed)


def test_report_dat_is_not_a_well_formed_tdreport() -> None:
    with pytest.raises(AttestInputError, match="REPORTTYPE.TYPE is 0x0f, not 0x81"):
        parse_td_report(read("go-tdx-guest/report.dat"))
    assert not any(read("go-tdx-guest/report.dat")[TD_REPORT_SIZE - SHIFT :])  # zero fill at the end


def test_report_dat_realigned_by_48_bytes_has_consistent_hashes() -> None:
    rep = parse_td_report(realigned())
    # TEE_INFO_HASH is intact and covers TDINFO
    assert "TEE_INFO_HASH" not in rep.hash_problems()
    # only the last 32 bytes of TEE_TCB_INFO_HASH survived; they match SHA-384(TEE_TCB_INFO)
    assert hashlib.sha384(rep.tee_tcb_info_raw).digest()[16:] == rep.tee_tcb_info_hash[16:]
    assert rep.hash_problems() == ["TEE_TCB_INFO_HASH"]  # its first 16 bytes were cut off


def test_report_dat_is_not_the_report_behind_the_spr_e4_quote() -> None:
    rep = parse_td_report(realigned())
    body = parse_quote(read(QUOTES["spr_e4"])).body
    assert rep.mrseam == body.mrseam  # same SEAM module
    assert {"mrtd", "tee_tcb_svn", "report_data"} <= set(rep.differences(body))


def test_wrong_size_is_rejected() -> None:
    with pytest.raises(AttestInputError, match="a TDREPORT is 1024 bytes, got 10"):
        parse_td_report(bytes(10))
