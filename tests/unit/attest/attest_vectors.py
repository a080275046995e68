"""Which vendored vectors the attest tests use, and facts about them (see tests/vectors/SOURCES.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from vectors import ROOT
from vectors import vector as _vector

VECTORS = ROOT / "tdx"
# A fixed time inside every vector PCK leaf's validity, so the tests do not rot with the clock.
AT = datetime(2026, 6, 1, tzinfo=UTC)

QUOTES = {
    "spr_e4": "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "v5": "go-tdx-guest/quote_v5_sample.dat",
    "cos": "go-tdx-guest/ccel_cos-113-tdx-quote.dat",
    "dcap": "dcap-qvl/tdx_quote",
}


def vector(rel: str) -> Path:
    return _vector(f"tdx/{rel}")


def read(rel: str) -> bytes:
    return vector(rel).read_bytes()
