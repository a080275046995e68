"""Suite-wide: tests/ is importable (pytest's rootdir-prepend mode puts this directory on sys.path).

The suite never uses the host's real sandbox registry: unless the environment already names one,
SEALBOX_RUN_DIR points into this session's temp dir and SEALBOX_UID_RANGE at a random 256-uid block
of the default range, so two test sessions on one machine do not share leases or uids.

Strict mode (tests/strict.py): under CI=true or SEALBOX_STRICT=1 a skip fails unless allow-listed; the allowed
skips are listed at the end. `--shuffle-seed N` runs the tests in a random order (modules kept together) that N
reproduces; the seed is printed in the header.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile

import pytest

from strict import (  # noqa: F401  # pytest finds hooks by name in this module
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)

_made: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("SEALBOX_RUN_DIR"):
        os.environ["SEALBOX_RUN_DIR"] = tempfile.mkdtemp(prefix="sealbox-run-")
        _made.append(os.environ["SEALBOX_RUN_DIR"])
    if not os.environ.get("SEALBOX_UID_RANGE"):
        first = 0x70000000 + 256 * random.randrange(256)
        os.environ["SEALBOX_UID_RANGE"] = f"{first}-{first + 255}"


def pytest_unconfigure(config: pytest.Config) -> None:
    for d in _made:
        shutil.rmtree(d, ignore_errors=True)
