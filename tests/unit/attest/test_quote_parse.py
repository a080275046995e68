from __future__ import annotations

import struct

import pytest
from attest_vectors import QUOTES, read

from sealbox.attest import AttestInputError
from sealbox.attest.quote import parse_quote

# (version, body kind, bytes used) per vector: the buffers are longer (zero padding, or in
# SPR_E4's case a deliberate "extra bytes" trailer from go-tdx-guest's tests).
EXPECTED = {
    "spr_e4": (4, "TD1.0", 4935),
    "v5": (5, "TD1.5", 5006),
    "cos": (4, "TD1.0", 4935),
    "dcap": (4, "TD1.0", 4936),
}


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_vectors_parse_by_length_fields(name: str) -> None:
    raw = read(QUOTES[name])
    q = parse_quote(raw)
    version, kind, used = EXPECTED[name]
    assert (q.header.version, q.body.kind, q.length) == (version, kind, used)
    assert q.header.tee_type == 0x81 and q.header.attestation_key_type == 2
    assert len(q.pck_chain_pem) == 3
    assert len(q.qe_auth_data) == 32
    assert q.signed == raw[: len(q.signed)]
    assert len(q.signed) == (48 + 6 + 648 if version == 5 else 48 + 584)


def test_v5_td15_body_fields() -> None:
    q = parse_quote(read(QUOTES["v5"]))
    assert q.body_type == 3
    assert q.body.tee_tcb_svn2 is not None and len(q.body.tee_tcb_svn2) == 16
    assert q.body.mrservicetd is not None and len(q.body.mrservicetd) == 48
    assert q.body.mrtd.hex().startswith("7348651a34b2d2d3")


def test_cos_quote_reportdata_is_the_nonce() -> None:
    q = parse_quote(read(QUOTES["cos"]))
    assert q.body.report_data == read("go-tdx-guest/ccel_nonce.dat")


def test_trailing_bytes_are_ignored() -> None:
    raw = read(QUOTES["dcap"])
    assert parse_quote(raw + b"\xff" * 500).length == parse_quote(raw).length


def test_every_truncation_is_a_clean_error() -> None:
    raw = read(QUOTES["cos"])
    used = parse_quote(raw).length
    for n in range(used):
        with pytest.raises(AttestInputError) as e:
            parse_quote(raw[:n], "q")
        assert "\n" not in str(e.value) and str(e.value).startswith("q:")


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<H", 3, "unsupported quote version 3"),
        (0, "<H", 6, "unsupported quote version 6"),
        (2, "<H", 3, "attestation key type 3"),
        (4, "<I", 0, "an SGX quote"),
        (4, "<I", 0x42, "TEE type 0x42"),
        (632, "<I", 0xFFFFFFFF, "signature data length 4294967295 is implausible"),
        (632, "<I", 60000, "signature_data needs 60000 bytes"),
        (632 + 4 + 128, "<H", 4, "certification data type 4 not supported"),
        (632 + 4 + 130, "<I", 0x7FFFFFFF, "certification_data needs"),
        (632 + 4 + 134 + 384 + 64, "<H", 5000, "qe_auth_data needs 5000 bytes"),
        (632 + 4 + 134 + 384 + 64 + 2 + 32, "<H", 3, "QE certification data type 3 not supported"),
        (632 + 4 + 134 + 384 + 64 + 2 + 32 + 2, "<I", 100, "stray bytes|unexplained bytes|no PEM"),
    ],
)
def test_corrupt_fields_are_named(offset: int, fmt: str, value: int, message: str) -> None:
    raw = _patch(read(QUOTES["dcap"]), offset, fmt, value)
    with pytest.raises(AttestInputError, match=message):
        parse_quote(raw)


def test_v5_body_type_and_size_are_checked() -> None:
    raw = read(QUOTES["v5"])
    with pytest.raises(AttestInputError, match="body type 1 not supported"):
        parse_quote(_patch(raw, 48, "<H", 1))
    with pytest.raises(AttestInputError, match="must be 648 bytes, header says 584"):
        parse_quote(_patch(raw, 50, "<I", 584))


def test_chain_without_pem_is_rejected() -> None:
    raw = bytearray(read(QUOTES["dcap"]))
    start = raw.index(b"-----BEGIN CERTIFICATE-----")
    raw[start : start + 5] = b"xxxxx"  # first certificate's BEGIN line broken: its body becomes stray text
    with pytest.raises(AttestInputError, match="stray bytes"):
        parse_quote(bytes(raw))


def test_garbage_is_rejected() -> None:
    with pytest.raises(AttestInputError, match="unsupported quote version"):
        parse_quote(b"\x13\x37" + bytes(5000))
    with pytest.raises(AttestInputError, match="truncated"):
        parse_quote(b"")
