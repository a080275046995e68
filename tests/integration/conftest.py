from __future__ import annotations

from pathlib import Path

import pytest

from imagecache import default_image


@pytest.fixture(scope="session")
def built_image() -> Path:
    """The default image's build directory (built once, reused while valid)."""
    return default_image()
