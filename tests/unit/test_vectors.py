"""The vendored vectors are the upstream bytes: every file listed in SHA256SUMS is present and unchanged."""

from __future__ import annotations

import hashlib

from vectors import ROOT, vector


def test_vendored_vectors_match_their_checksums() -> None:
    lines = (ROOT / "SHA256SUMS").read_text().splitlines()
    assert len(lines) >= 11
    for line in lines:
        digest, rel = line.split(" ", 1)
        assert hashlib.sha256(vector(rel).read_bytes()).hexdigest() == digest, rel
    listed = {line.split(" ", 1)[1] for line in lines}
    present = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and p.suffix != ".md" and p.name != "SHA256SUMS"}
    assert present == listed
