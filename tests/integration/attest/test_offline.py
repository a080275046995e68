"""`sealbox attest` needs no network: run it inside a fresh, empty network namespace (root needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from vectors import ROOT

VECTORS = ROOT / "tdx"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a network namespace"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed"),
]


def sealbox_without_network(*args: str) -> subprocess.CompletedProcess[str]:
    argv = ["unshare", "--net", "--", sys.executable, "-m", "sealbox.cli.main", "attest", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_collateral_check_works_with_no_network() -> None:
    # inside the namespace only a down loopback exists: any network access would fail
    proc = sealbox_without_network(
        "quote", str(VECTORS / "dcap-qvl" / "tdx_quote"),
        "--collateral", str(VECTORS / "dcap-qvl" / "tdx_quote_collateral.json"),
        "--at", "2025-07-01T00:00:00Z",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[ok] tcb_status: UpToDate (platform UpToDate, QE UpToDate), no advisories" in proc.stdout
    assert proc.stdout.rstrip().endswith("result: VERIFIED")


def test_eventlog_replay_with_no_network() -> None:
    gcp = VECTORS / "go-tdx-guest"
    proc = sealbox_without_network(
        "eventlog", str(gcp / "ccel_ccel_data.dat"), "--table", str(gcp / "ccel_ccel_table.dat"),
        "--quote", str(gcp / "ccel_cos-113-tdx-quote.dat"), "--at", "2026-06-01T00:00:00Z", "--signatures-only",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("result: RTMRs match the quote; quote signatures valid — TCB status, QE identity and revocation "
                                         "NOT checked (accepted with --signatures-only)")
