"""The vendored public test vectors (tests/vectors, see SOURCES.md). A missing one fails the test: never a skip."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent / "vectors"


def vector(rel: str) -> Path:
    path = ROOT / rel
    if not path.is_file():
        pytest.fail(f"vendored test vector {rel} is missing from {ROOT} (see tests/vectors/SOURCES.md)")
    return path
