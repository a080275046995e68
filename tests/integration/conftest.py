from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for imagecache

from imagecache import default_image  # noqa: E402


@pytest.fixture(scope="session")
def built_image() -> Path:
    """The default image's build directory (built once, reused while valid)."""
    return default_image()
