"""Helpers for spec tests: write spec trees, load them, and check that errors are one clear line."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable
from pathlib import Path

import pytest

from sealbox.errors import SpecError
from sealbox.spec import LoadedSpec, load_spec


def write(base: Path, rel: str, text: str = "") -> Path:
    path = base / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(path: Path, profiles: Iterable[str] = ()) -> LoadedSpec:
    return load_spec(path, list(profiles))


def spec_error(path: Path | None, profiles: Iterable[str] = (), *, has: Iterable[str] = ()) -> str:
    """Load `path`, expect a SpecError whose text is one line containing every string in `has`."""
    with pytest.raises(SpecError) as info:
        load_spec(path, list(profiles))
    text = str(info.value)
    assert len(text.splitlines()) == 1, text
    assert "Traceback" not in text
    for part in has:
        assert part in text, f"{part!r} missing from: {text}"
    return text
