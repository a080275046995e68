"""What a quote is checked against besides Intel's chain: the sandbox's instance data (MRCONFIGID) and a
`sealbox measure` prediction (MRTD, RTMR0-3).

MRCONFIGID: a sandbox's TD is started with MRCONFIGID = SHA-384 of its canonical instance data
(guest/instance.py), so a quote whose MRCONFIGID equals that digest comes from a TD that applied exactly that
data: hostname, addresses, resolvers and who may log in as whom. The digest is recomputed here from the instance
disk, the way the guest computes it.
"""

from __future__ import annotations

import hashlib

from sealbox.attest import AttestInputError
from sealbox.attest.policy import Measurements, compare
from sealbox.attest.quote import Quote
from sealbox.attest.verify import Check
from sealbox.errors import SandboxError
from sealbox.guest.instance import canonical_from_disk


def check_mrconfigid(q: Quote, label: str, disk: bytes) -> Check:
    """`label` names where the instance data came from ("the instance data in FILE", "... of sandbox NAME")."""
    try:
        want = hashlib.sha384(canonical_from_disk(disk)).digest()
    except SandboxError as e:
        raise AttestInputError(f"{label}: {e.message}") from None
    got = q.body.mrconfigid
    if got == want:
        return Check("mrconfigid", True, f"{got.hex()} = SHA-384 of {label}")
    if not any(got):
        return Check("mrconfigid", False, "the quote's MRCONFIGID is all zero: the TD was started without instance data bound to it")
    return Check("mrconfigid", False, f"the quote's MRCONFIGID {got.hex()} is not the SHA-384 of {label} ({want.hex()}): "
                                      "the TD was not started with this instance data")


def check_measurements(q: Quote, m: Measurements) -> Check:
    """The registers a quote carries (MRTD, RTMR0-3) against the prediction; event lists need an event log."""
    res = compare(m, body=q.body)
    skipped = "; not checked: " + ", ".join(f"{k} ({v})" for k, v in res.not_checked.items()) if res.not_checked else ""
    if res.mismatches:
        return Check("measurements", False, "; ".join(x.line() for x in res.mismatches))
    if not res.checked:
        return Check("measurements", False, f"the prediction holds no register a quote carries (MRTD, RTMR0-3){skipped}")
    return Check("measurements", True, f"{', '.join(res.checked)} match the prediction{skipped}")
