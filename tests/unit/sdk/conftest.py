"""SDK unit tests: the runtime unit tests' fake image (real manifest, placeholder boot files); nothing boots."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("rt_unit_conftest", Path(__file__).parents[1] / "runtime" / "conftest.py")
assert _spec and _spec.loader
_rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_rt)
write_image = _rt.write_image


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    return write_image(tmp_path / "image")
