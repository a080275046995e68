"""Where the attest tests find the shared vectors, and facts about them (see shared/vectors/SOURCES.md)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

VECTORS = Path(__file__).resolve().parents[3] / ".." / "shared" / "vectors" / "tdx"
# A fixed time inside every vector PCK leaf's validity, so the tests do not rot with the clock.
AT = datetime(2026, 6, 1, tzinfo=timezone.utc)

QUOTES = {
    "spr_e4": "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "v5": "go-tdx-guest/quote_v5_sample.dat",
    "cos": "go-tdx-guest/ccel_cos-113-tdx-quote.dat",
    "dcap": "dcap-qvl/tdx_quote",
}


def vector(rel: str) -> Path:
    path = VECTORS / rel
    if not path.is_file():
        pytest.skip(f"test vector {rel} not found under {VECTORS} (shared/vectors is not checked out)")
    return path


def read(rel: str) -> bytes:
    return vector(rel).read_bytes()
