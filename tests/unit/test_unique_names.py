"""pytest imports test modules by basename (rootdir-prepend mode, no packages): two test files of one name in
different directories fail the whole run at collection ("import file mismatch") — which a run of only one of the
directories never shows."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name not in ("conftest.py", "__init__.py"))
    assert not [n for n, k in names.items() if k > 1]
