"""The Quoting Enclave's identity: is the enclave that signed the quote Intel's TD_QE, at an acceptable SVN?

The QE identity collateral (Intel PCS, JSON) names the TD quoting enclave: MRSIGNER, ISVPRODID, MISCSELECT and
ATTRIBUTES (each compared under its mask), and TCB levels by ISVSVN, highest first. The QE report in the quote
(signed by the PCK key) must match, and its ISVSVN selects the first level it reaches: that level's status is
the QE's TCB status (Revoked fails). Its signature is checked with the rest of the collateral (collateral.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sealbox.attest import AttestInputError
from sealbox.attest.quote import QeReport
from sealbox.attest.verify import Check

TDX_QE_ID = "TD_QE"
TDX_QE_VERSIONS = (2, 3)


@dataclass(frozen=True)
class QeIdentity:
    id: str
    version: int
    mrsigner: bytes
    isvprodid: int
    miscselect: bytes  # the byte string as in the report (MISCSELECT is little-endian there)
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    levels: list[tuple[int, str, list[str]]] = field(default_factory=list)  # (isvsvn, status, advisories), highest first


def _hex(body: dict[str, Any], key: str, size: int, what: str) -> bytes:
    try:
        value = bytes.fromhex(str(body[key]))
    except (KeyError, ValueError):
        raise AttestInputError(f"{what}: {key} is missing or not hex") from None
    if len(value) != size:
        raise AttestInputError(f"{what}: {key} must be {size} bytes, got {len(value)}")
    return value


def parse_qe_identity(text: str, what: str = "collateral qe_identity") -> QeIdentity:
    try:
        body = json.loads(text)
        if "enclaveIdentity" in body:  # the PCS response wraps it; dcap-qvl's JSON stores the inner object
            body = body["enclaveIdentity"]
        levels = sorted(
            ((int(lv["tcb"]["isvsvn"]), str(lv["tcbStatus"]), [str(a) for a in lv.get("advisoryIDs", [])]) for lv in body["tcbLevels"]),
            key=lambda lv: -lv[0],
        )
        ident = QeIdentity(
            id=str(body["id"]), version=int(body["version"]), mrsigner=_hex(body, "mrsigner", 32, what),
            isvprodid=int(body["isvprodid"]), miscselect=_hex(body, "miscselect", 4, what),
            miscselect_mask=_hex(body, "miscselectMask", 4, what),
            attributes=_hex(body, "attributes", 16, what), attributes_mask=_hex(body, "attributesMask", 16, what), levels=levels,
        )  # fmt: skip
    except AttestInputError:
        raise
    except (json.JSONDecodeError, TypeError, KeyError, ValueError, AttributeError) as e:
        raise AttestInputError(f"{what} is not a QE identity ({type(e).__name__}: {e})") from None
    return ident


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(a & m for a, m in zip(value, mask, strict=True))


def check_qe_identity(qe: QeReport, text: str) -> Check:
    ident = parse_qe_identity(text)
    problems = []
    if ident.id != TDX_QE_ID or ident.version not in TDX_QE_VERSIONS:
        problems.append(f"the QE identity is {ident.id} version {ident.version}, a TDX quote needs {TDX_QE_ID} version 2 or 3")
    if qe.mr_signer != ident.mrsigner:
        problems.append(f"QE MRSIGNER {qe.mr_signer.hex()} is not the {ident.id}'s {ident.mrsigner.hex()}")
    if qe.isv_prod_id != ident.isvprodid:
        problems.append(f"QE ISVPRODID {qe.isv_prod_id} is not the {ident.id}'s {ident.isvprodid}")
    # the collateral writes MISCSELECT and ATTRIBUTES as the report's bytes (hex), compared byte by byte under the mask
    for name, got, want, mask in (("MISCSELECT", qe.misc_select.to_bytes(4, "little"), ident.miscselect, ident.miscselect_mask),
                                  ("ATTRIBUTES", qe.attributes, ident.attributes, ident.attributes_mask)):  # fmt: skip
        if _masked(got, mask) != _masked(want, mask):
            problems.append(f"QE {name} {got.hex()} does not match {want.hex()} under mask {mask.hex()}")
    level = next((lv for lv in ident.levels if qe.isv_svn >= lv[0]), None)
    if level is None:
        lowest = min((lv[0] for lv in ident.levels), default=None)
        problems.append(f"QE ISVSVN {qe.isv_svn} is below every TCB level of the QE identity (lowest {lowest})")
    elif level[1] == "Revoked":
        problems.append(f"QE ISVSVN {qe.isv_svn} is at a Revoked TCB level")
    if problems:
        return Check("qe_identity", False, "; ".join(problems))
    assert level is not None
    advisories = f", advisories {', '.join(level[2])}" if level[2] else ""
    return Check("qe_identity", True, f"{ident.id} MRSIGNER {ident.mrsigner.hex()}, ISVPRODID {ident.isvprodid}, "
                                      f"ISVSVN {qe.isv_svn} → QE TCB {level[1]}{advisories}")
