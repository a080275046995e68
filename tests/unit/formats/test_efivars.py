"""edk2 variable store and EFI_SIGNATURE_LIST parsing: live/deleted states, hostile sizes, real OVMF stores."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from sealbox.formats import efivars

MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")


def _var(guid: uuid.UUID, name: str, data: bytes, state: int = efivars.VAR_ADDED) -> bytes:
    n = (name + "\0").encode("utf-16-le")
    hdr = struct.pack("<HBBIQ16sIII16s", 0x55AA, state, 0, 7, 0, bytes(16), 0, len(n), len(data), guid.bytes_le)
    raw = hdr + n + data
    return raw + bytes(-len(raw) % 4)


def _store(*variables: bytes, size: int = 0x4000) -> bytes:
    fv = bytearray(0x48)
    struct.pack_into("<Q", fv, 32, size)
    fv[40:44] = b"_FVH"
    struct.pack_into("<H", fv, 48, 0x48)
    body = b"".join(variables)
    store_hdr = efivars.AUTH_STORE.bytes_le + struct.pack("<IBBHI", size - 0x48, 0x5A, 0xFE, 0, 0)
    return (bytes(fv) + store_hdr + body).ljust(size, b"\xff")


def _siglist(owner: uuid.UUID, *certs: bytes) -> bytes:
    size = 16 + max(len(c) for c in certs)
    entries = b"".join(owner.bytes_le + c.ljust(size - 16, b"\0") for c in certs)
    return efivars.X509.bytes_le + struct.pack("<III", 28 + len(entries), 0, size) + entries


def test_live_deleted_and_transition_states() -> None:
    g = efivars.GLOBAL
    data = _store(_var(g, "PK", b"old", efivars.VAR_ADDED_IN_TRANSITION), _var(g, "PK", b"new"),
                  _var(g, "KEK", b"gone", 0x3D), _var(efivars.IMAGE_SECURITY, "db", b"dbdata"))
    v = efivars.parse_varstore(data)
    assert v[(g, "PK")].data == b"new" and (g, "KEK") not in v and v[(efivars.IMAGE_SECURITY, "db")].data == b"dbdata"


def test_a_variable_only_in_transition_is_live() -> None:
    v = efivars.parse_varstore(_store(_var(efivars.GLOBAL, "PK", b"x", efivars.VAR_ADDED_IN_TRANSITION)))
    assert v[(efivars.GLOBAL, "PK")].data == b"x"


@pytest.mark.parametrize(("data", "msg"), [
    (b"\0" * 100, "_FVH"),
    (_store()[:0x48] + uuid.uuid4().bytes_le + _store()[0x58:], "no edk2 variable store"),
    (_store()[:0x100], "inconsistent"),
    (_store(_var(efivars.GLOBAL, "PK", b"x"))[:0x48 + 28 + 60 + 6], "runs past the end"),
])
def test_hostile_stores_are_refused(data: bytes, msg: str) -> None:
    if msg == "runs past the end":  # a header whose data size exceeds the store
        data = bytearray(_store(_var(efivars.GLOBAL, "PK", b"x")))
        struct.pack_into("<I", data, 0x48 + 28 + 36, 0x7FFFFFFF)
        data = bytes(data)
    with pytest.raises(efivars.VarStoreError, match=msg):
        efivars.parse_varstore(data)


def test_signature_lists() -> None:
    owner = uuid.uuid4()
    blob = _siglist(owner, b"A" * 30, b"B" * 30) + _siglist(owner, b"C" * 10)
    got = efivars.parse_signature_lists(blob)
    assert [(e.owner, e.data[:1]) for e in got] == [(owner, b"A"), (owner, b"B"), (owner, b"C")]
    assert got[0].raw() == owner.bytes_le + b"A" * 30
    for bad in (blob[:20], blob[:-5], efivars.X509.bytes_le + struct.pack("<III", 28, 0, 8)):
        with pytest.raises(efivars.VarStoreError):
            efivars.parse_signature_lists(bad)


def test_variable_data_event_layout() -> None:
    ev = efivars.variable_data_event(efivars.GLOBAL, "SecureBoot", b"\x01")
    assert ev[:16] == efivars.GLOBAL.bytes_le and struct.unpack_from("<QQ", ev, 16) == (10, 1)
    assert ev[32:52] == "SecureBoot".encode("utf-16-le") and ev[52:] == b"\x01"


@pytest.mark.skipif(not MS_VARS.exists(), reason="ovmf is not installed")
def test_debian_ms_store() -> None:
    v = efivars.read_varstore(MS_VARS)
    db = efivars.parse_signature_lists(v[(efivars.IMAGE_SECURITY, "db")].data)
    assert len(db) == 2 and all(e.type_guid == efivars.X509 and e.data[:1] == b"\x30" for e in db)  # DER certificates
    assert v[(efivars.GLOBAL, "PK")].data
