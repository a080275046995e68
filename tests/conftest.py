"""Suite-wide: tests/ is importable (pytest's rootdir-prepend mode puts this directory on sys.path).

Strict mode (tests/strict.py): under CI=true or SEALBOX_STRICT=1 a skip fails unless allow-listed; the allowed
skips are listed at the end. `--shuffle-seed N` runs the tests in a random order (modules kept together) that N
reproduces; the seed is printed in the header.
"""

from strict import (  # noqa: F401  # pytest finds hooks by name in this module
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
