"""The PE parser and Authenticode never fail with anything but a one-line MeasureError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pebuild import build_pe

from sealbox.errors import MeasureError
from sealbox.formats.authenticode import authenticode_all
from sealbox.formats.pe import parse_pe
from sealbox.formats.ukiinfo import read_uki

VALID = build_pe([(".text", b"\x90" * 600), (".linux", b"MZ" + b"k" * 300)], cert=b"sig").data


def _check(data: bytes) -> None:
    for fn in (parse_pe, authenticode_all, read_uki):
        try:
            fn(data)
        except MeasureError as e:
            assert "\n" not in str(e) and str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    _check(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=12),
       st.integers(0, len(VALID)))
def test_mutated_valid_image(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(VALID)
    for pos, val in edits:
        data[pos] = val
    _check(bytes(data[: max(cut, 1)]))
    _check(bytes(data))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 0xFFFFFFFF), st.sampled_from([0x3C, 0x86, 0x98, 0x94 + 8 * 4, 0xD8]))
def test_hostile_header_fields(value: int, offset: int) -> None:
    data = bytearray(VALID)
    struct.pack_into("<I", data, offset, value)
    _check(bytes(data))


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "MZ"),
        (b"MZ" + bytes(100), "no 'PE' signature"),
        (VALID[:0x90], "points past"),
        (VALID[: 0x80 + 24 + 50], "truncated"),
        (b"ELF" + bytes(200), "MZ"),
    ],
)
def test_messages_name_the_problem(data: bytes, needle: str) -> None:
    with pytest.raises(MeasureError) as e:
        parse_pe(data, "thing.efi")
    assert "thing.efi" in str(e.value) and needle in str(e.value)


def test_bad_magic() -> None:
    data = bytearray(VALID)
    struct.pack_into("<H", data, 0x80 + 24, 0x999)
    with pytest.raises(MeasureError, match="magic"):
        parse_pe(bytes(data))


def test_section_past_end() -> None:
    unsigned = build_pe([(".text", b"\x90" * 600), (".linux", b"MZ" + b"k" * 300)]).data
    with pytest.raises(MeasureError, match="runs past the end"):
        parse_pe(unsigned[: len(unsigned) - 100])


def test_certificate_table_outside_file() -> None:
    with pytest.raises(MeasureError, match="certificate table"):
        parse_pe(VALID[:-8])
