"""A new user's first runs (issue 12), for real: root, QEMU (TCG), namespaces; each case proves nothing is left."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rt_integ import Sealbox, leftovers

pytestmark = [pytest.mark.integration]


def test_vmm_start_failure_quotes_the_vmm_log_and_names_no_deleted_file(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-mem"
    p = sealbox(*sealbox.run_args(name, "--memory", "1000000"), timeout=120)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot allocate memory" in lines[0], p.stderr
    for path in re.findall(r"(/[\w./-]+)", lines[0]):  # anything the error points at must still be there
        assert os.path.exists(path) or not path.startswith(str(sealbox.state_dir)), f"{path} named in the error is gone"
    assert leftovers(sealbox.state_dir, name) == []
