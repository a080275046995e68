"""TDX attestation verification, offline and in pure Python.

quote.py parses TDX quotes (v4/v5), verify.py checks their signatures and PCK chain against the
pinned Intel SGX Root CA (pck_root.py), collateral.py adds the TCB status from Intel collateral via
dcap-qvl, eventlog.py parses and replays CC event logs (CCEL), policy.py compares the replay with a
measurements.json prediction, tdreport.py parses the 1024-byte TDREPORT.
"""

from sealbox.errors import AttestError


class AttestInputError(AttestError):
    """The input file itself is malformed (truncated, wrong version, bad length): exit code 2."""

    exit_code = 2


__all__ = ["AttestError", "AttestInputError"]
