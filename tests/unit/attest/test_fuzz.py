"""Hypothesis fuzzing: any input either parses or raises AttestInputError (one line) — never another
exception. Mutations start from the real vectors so the fuzzer reaches deep fields, not just the header."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from attest_vectors import AT, QUOTES, vector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealbox.attest import AttestInputError
from sealbox.attest.eventlog import parse_ccel_table, parse_event_log, replay
from sealbox.attest.policy import load_measurements
from sealbox.attest.quote import parse_quote
from sealbox.attest.verify import verify_quote

# SEALBOX_FUZZ_EXAMPLES raises the budget for a longer campaign (the default keeps the unit run fast).
SETTINGS = settings(max_examples=int(os.environ.get("SEALBOX_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, rels: tuple[str, ...], keep: int | None = None) -> bytes:
    """A vendored vector (first `keep` bytes) with a few byte flips, u32 overwrites (lengths!), cuts or insertions.
    The seeds are read at each draw through vector(): a missing one fails the test instead of fuzzing random bytes."""
    seeds = [vector(rel).read_bytes()[:keep] for rel in rels]
    assert all(seeds), f"empty seed among {rels}"
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "u32", "cut", "insert"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "u32" and len(data) >= pos + 4:
            value = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, len(data), draw(st.integers(0, 2**32 - 1))]))
            struct.pack_into("<I", data, pos, value)
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


SEEDS_QUOTE = tuple(QUOTES.values())
SEED_LOG = ("dstack/ccel.bin",)  # the used part (first 2 KiB) plus some 0xFF fill
SEED_TABLE = ("go-tdx-guest/ccel_ccel_table.dat",)


def _one_line(e: AttestInputError) -> None:
    assert "\n" not in str(e) and str(e)


def _quote_roundtrip(data: bytes) -> None:
    try:
        q = parse_quote(data, "fuzz")
    except AttestInputError as e:
        _one_line(e)
        return
    verify_quote(q, AT)  # must not raise whatever the signatures and certificates contain


@SETTINGS
@given(st.binary(max_size=6000))
def test_quote_parser_random_bytes(data: bytes) -> None:
    _quote_roundtrip(data)


@SETTINGS
@given(st.binary(max_size=64).map(lambda tail: struct.pack("<HHI", 4, 2, 0x81) + tail))
def test_quote_parser_plausible_header_random_rest(data: bytes) -> None:
    _quote_roundtrip(data)


@SETTINGS
@given(mutated(SEEDS_QUOTE))
def test_quote_parser_and_verifier_on_mutated_vectors(data: bytes) -> None:
    _quote_roundtrip(data)


def _log_roundtrip(data: bytes) -> None:
    try:
        log = parse_event_log(data, "fuzz")
    except AttestInputError as e:
        _one_line(e)
        return
    replay(log)
    for e in log.events:
        e.describe()


@SETTINGS
@given(st.binary(max_size=4096))
def test_event_log_parser_random_bytes(data: bytes) -> None:
    _log_roundtrip(data)


@SETTINGS
@given(mutated(SEED_LOG, keep=2048))
def test_event_log_parser_on_mutated_vector(data: bytes) -> None:
    _log_roundtrip(data)


@SETTINGS
@given(mutated(SEED_TABLE))
def test_ccel_table_parser_on_mutated_vector(data: bytes) -> None:
    try:
        parse_ccel_table(data, "fuzz")
    except AttestInputError as e:
        _one_line(e)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@SETTINGS
@given(st.one_of(JSONISH, st.fixed_dictionaries({"schema": st.just("sealbox.measurements/v1"), "registers": JSONISH})))
def test_measurements_loader_on_random_json(doc: object) -> None:
    try:
        load_measurements(json.dumps(doc), "fuzz.json")
    except AttestInputError as e:
        _one_line(e)


@pytest.mark.parametrize("fuzzer", [test_quote_parser_and_verifier_on_mutated_vectors, test_event_log_parser_on_mutated_vector,
                                    test_ccel_table_parser_on_mutated_vector])
def test_a_mutation_fuzzer_fails_when_its_seed_vector_is_missing(fuzzer: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import vectors

    monkeypatch.setattr(vectors, "ROOT", tmp_path)  # an empty vector directory
    with pytest.raises(pytest.fail.Exception, match="vendored test vector tdx/.* is missing"):
        fuzzer()
