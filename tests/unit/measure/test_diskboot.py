"""PCR 7 for a disk-image boot: Secure Boot state from the variable store, and which db entry the firmware
records as the authority that verified the UKI (leaf in db, CA in db, untrusted, unsigned)."""

from __future__ import annotations

import datetime
import hashlib
import struct
import uuid
from typing import Any

import pytest
from pebuild import build_pe

from sealbox.errors import MeasureError
from sealbox.formats import efivars
from sealbox.measure import diskboot

OWNER = uuid.UUID("5ea1b0c5-0000-4000-8000-000000000002")


def _cert(cn: str, issuer: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ikey, iname = (issuer[1], issuer[0].subject) if issuer else (key, name)
    t = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(iname).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(t).not_valid_after(t + datetime.timedelta(days=30))
            .sign(ikey, hashes.SHA256()))
    return cert, key


def _der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return cert.public_bytes(Encoding.DER)


def _signed_pe(signer: tuple[Any, Any]) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

    p7 = pkcs7.PKCS7SignatureBuilder().set_data(b"stand-in content").add_signer(signer[0], signer[1], hashes.SHA256()).sign(Encoding.DER, [])
    return build_pe([(".text", b"\xc3" * 64)], cert=p7).data


def _siglist(*certs: bytes) -> bytes:
    out = b""
    for c in certs:  # one list per certificate: sizes differ
        out += efivars.X509.bytes_le + struct.pack("<III", 28 + 16 + len(c), 0, 16 + len(c)) + OWNER.bytes_le + c
    return out


def _vars(db: bytes, pk: bytes = b"pk", enable: bytes | None = None) -> dict[tuple[Any, str], efivars.Variable]:
    v = {(efivars.GLOBAL, "PK"): efivars.Variable(efivars.GLOBAL, "PK", 7, pk),
         (efivars.IMAGE_SECURITY, "db"): efivars.Variable(efivars.IMAGE_SECURITY, "db", 7, db)}
    if enable is not None:
        g = uuid.UUID("f0a30bc7-af08-4556-99c4-001009c93a44")
        v[(g, "SecureBootEnable")] = efivars.Variable(g, "SecureBootEnable", 3, enable)
    return v


def test_leaf_in_db_is_the_authority() -> None:
    leaf = _cert("leaf")
    other = _cert("other")
    entry = diskboot.authority(_vars(_siglist(_der(other[0]), _der(leaf[0]))), _signed_pe(leaf))
    assert entry.data == _der(leaf[0]) and entry.owner == OWNER


def test_issuing_ca_in_db_is_the_authority() -> None:
    ca = _cert("ca")
    leaf = _cert("leaf", issuer=ca)
    entry = diskboot.authority(_vars(_siglist(_der(_cert("other")[0]), _der(ca[0]))), _signed_pe(leaf))
    assert entry.data == _der(ca[0])


def test_untrusted_and_unsigned_are_errors() -> None:
    leaf = _cert("leaf")
    with pytest.raises(MeasureError, match="would refuse"):
        diskboot.authority(_vars(_siglist(_der(_cert("other")[0]))), _signed_pe(leaf))
    with pytest.raises(MeasureError, match="not signed"):
        diskboot.authority(_vars(_siglist(_der(leaf[0]))), build_pe([(".text", b"\xc3" * 64)]).data)


@pytest.mark.parametrize(("pk", "enable", "firmware", "on"), [
    (b"pk", None, True, True), (b"pk", b"\x01", True, True), (b"pk", b"\x00", True, False),
    (b"", None, True, False), (b"pk", None, False, False),
])
def test_secure_boot_state(pk: bytes, enable: bytes | None, firmware: bool, on: bool) -> None:
    assert diskboot.secure_boot_state(_vars(b"", pk=pk, enable=enable), firmware) is on


def test_pcr7_events() -> None:
    leaf = _cert("leaf")
    variables = _vars(_siglist(_der(leaf[0])))
    off = diskboot.pcr7(variables, False, b"", "vars.fd")
    assert [e.event_type for e in off.events] == ["EV_EFI_VARIABLE_DRIVER_CONFIG"] * 5 + ["EV_SEPARATOR"]
    sb = efivars.variable_data_event(efivars.GLOBAL, "SecureBoot", b"\x00")
    assert off.events[0].digest == hashlib.sha256(sb).hexdigest()
    kek = efivars.variable_data_event(efivars.GLOBAL, "KEK", b"")  # absent: measured empty
    assert off.events[2].digest == hashlib.sha256(kek).hexdigest()
    on = diskboot.pcr7(variables, True, _signed_pe(leaf), "vars.fd")
    assert on.events[0].digest == hashlib.sha256(efivars.variable_data_event(efivars.GLOBAL, "SecureBoot", b"\x01")).hexdigest()
    auth = efivars.variable_data_event(efivars.IMAGE_SECURITY, "db", OWNER.bytes_le + _der(leaf[0]))
    assert on.events[-1].event_type == "EV_EFI_VARIABLE_AUTHORITY" and on.events[-1].digest == hashlib.sha256(auth).hexdigest()
