from __future__ import annotations

import hashlib
import struct

import pytest
from attest_vectors import QUOTES, read

from sealbox.attest import AttestInputError
from sealbox.attest.eventlog import extend, parse_ccel_table, parse_event_log, replay
from sealbox.attest.quote import parse_quote

GCP_LOG = "go-tdx-guest/ccel_ccel_data.dat"
GCP_TABLE = "go-tdx-guest/ccel_ccel_table.dat"
DSTACK_LOG = "dstack/ccel.bin"


def test_gcp_log_replays_to_the_quote_rtmrs() -> None:
    table = parse_ccel_table(read(GCP_TABLE))
    log = parse_event_log(read(GCP_LOG), laml=table.laml)
    rtmrs = replay(log)
    quote = parse_quote(read(QUOTES["cos"]))
    assert rtmrs[:3] == list(quote.body.rtmrs[:3])
    assert rtmrs[3] == bytes(48) == quote.body.rtmrs[3]
    assert len(log.events) == 43 and log.length == 18101
    assert log.spec_id.algorithms == {0x000C: 48}


def test_ccel_table_facts() -> None:
    t = parse_ccel_table(read(GCP_TABLE))
    assert (t.cc_type, t.oem_id, t.laml, t.lasa) == (2, "INTEL", 0x40000, 0xBEDBF000)


def test_dstack_direct_boot_log_has_rtmr0_and_rtmr1_only() -> None:
    log = parse_event_log(read(DSTACK_LOG))
    rtmrs = replay(log)
    assert {e.rtmr for e in log.events} == {0, 1}
    assert len(log.events) == 18
    assert rtmrs[2] == rtmrs[3] == bytes(48)
    assert rtmrs[0] != bytes(48) and rtmrs[1] != bytes(48)
    assert [e.type_name for e in log.rtmr_events(1)][-2:] == ["EV_EFI_ACTION", "EV_EFI_ACTION"]


def test_replay_is_sha384_extend_from_zero() -> None:
    log = parse_event_log(read(DSTACK_LOG))
    value = bytes(48)
    for e in log.rtmr_events(1):
        value = hashlib.sha384(value + e.digests[0x000C]).digest()
    assert replay(log)[1] == value
    assert extend(b"\x01" * 48, b"\x02" * 48) == hashlib.sha384(b"\x01" * 48 + b"\x02" * 48).digest()


def test_descriptions_decode_common_events() -> None:
    log = parse_event_log(read(GCP_LOG))
    descs = [e.describe() for e in log.events]
    assert descs[0] == "TdxTable"
    assert "variable SecureBoot (1 bytes)" in descs
    assert "Exit Boot Services Returned with Success" in descs
    assert any(d.startswith("kernel_cmdline: /syslinux/vmlinuz.A") for d in descs)


@pytest.mark.parametrize("fill", [b"\xff", b"\x00"])
def test_padding_after_the_last_event_is_ignored(fill: bytes) -> None:
    data = read(DSTACK_LOG)
    used = parse_event_log(data).length
    log = parse_event_log(data[:used] + fill * 4096)
    assert len(log.events) == 18 and replay(log) == replay(parse_event_log(data))
    assert len(parse_event_log(data[:used]).events) == 18  # no padding at all


def test_laml_bounds_the_log_area() -> None:
    data = read(DSTACK_LOG)
    used = parse_event_log(data).length
    with pytest.raises(AttestInputError, match="truncated"):
        parse_event_log(data, laml=used - 10)


def test_every_truncation_inside_an_event_is_a_clean_error() -> None:
    data = read(DSTACK_LOG)
    used = parse_event_log(data).length
    for n in range(0, used, 7):
        try:
            log = parse_event_log(data[:n], "log")
        except AttestInputError as e:
            assert str(e).startswith("log:") and "\n" not in str(e)
        else:  # a cut exactly at an event boundary is a shorter, valid log
            assert log.length == n


def _header(alg_entries: list[tuple[int, int]], signature: bytes = b"Spec ID Event03\0") -> bytes:
    body = signature + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(alg_entries))
    body += b"".join(struct.pack("<HH", a, s) for a, s in alg_entries) + b"\0"
    return struct.pack("<II", 1, 3) + bytes(20) + struct.pack("<I", len(body)) + body


def _event(index: int, ev_type: int, digests: list[tuple[int, bytes]], data: bytes = b"x") -> bytes:
    out = struct.pack("<III", index, ev_type, len(digests))
    out += b"".join(struct.pack("<H", a) + d for a, d in digests)
    return out + struct.pack("<I", len(data)) + data


SHA384 = [(0x000C, 48)]


def test_synthetic_log_with_two_banks_replays_the_sha384_one() -> None:
    d384, d256 = b"\x01" * 48, b"\x02" * 32
    log = parse_event_log(_header([(0x000B, 32), (0x000C, 48)]) + _event(3, 0x0D, [(0x000B, d256), (0x000C, d384)]))
    assert replay(log)[2] == hashlib.sha384(bytes(48) + d384).digest()


def test_no_action_events_are_not_extended() -> None:
    log = parse_event_log(_header(SHA384) + _event(1, 3, [(0x000C, b"\x05" * 48)]))
    assert replay(log) == [bytes(48)] * 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_header(SHA384, b"Spec ID Event02\0"), "not 'Spec ID Event03'"),
        (_header([(0x000B, 32)]), "no SHA-384 digests"),
        (_header([(0x000C, 32)]), "gives sha384 a digest size of 32"),
        (_header([]), "declares 0 digest algorithms"),
        (struct.pack("<II", 0, 4) + bytes(24), "not the EV_NO_ACTION Spec ID event"),
        (_header(SHA384) + _event(0, 0x0D, [(0x000C, bytes(48))]), "has index 0; CC logs use 1-4"),
        (_header(SHA384) + _event(7, 0x0D, [(0x000C, bytes(48))]), "has index 7"),
        (_header(SHA384) + _event(1, 0x0D, [(0x000B, bytes(32))]), "algorithm 0x000b, not declared"),
        (_header(SHA384) + _event(1, 0x0D, []), "no SHA-384 digest to replay"),
        (_header([(0x000B, 32), (0x000C, 48)]) + _event(1, 0x0D, [(0x000C, bytes(48))] * 2), "lists digest algorithm 0x000c twice"),
        (_header(SHA384) + struct.pack("<III", 1, 0x0D, 9), "has 9 digests"),
        (_header(SHA384) + _event(1, 0x0D, [(0x000C, bytes(48))])[:-5] + struct.pack("<I", 0xFFFFFFF0), "needs 4294967280 bytes"),
        (_header(SHA384) + b"\x01\x02\x03", "truncated"),
    ],
)
def test_bad_logs_are_named(data: bytes, message: str) -> None:
    with pytest.raises(AttestInputError, match=message):
        parse_event_log(data)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (lambda b: b"ABCD" + b[4:], "signature is b'ABCD'"),
        (lambda b: b[:4] + struct.pack("<I", 20) + b[8:], "table length 20"),
        (lambda b: b[:4] + struct.pack("<I", 5000) + b[8:], "table length 5000"),
        (lambda b: b[:9] + bytes([b[9] ^ 1]) + b[10:], "checksum"),
        (lambda b: b[:30], "table length 56 is not between 56 and the file size 30"),
    ],
)
def test_bad_ccel_tables_are_named(patch, message: str) -> None:
    with pytest.raises(AttestInputError, match=message):
        parse_ccel_table(patch(read(GCP_TABLE)))
