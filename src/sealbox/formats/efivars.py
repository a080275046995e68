"""UEFI variables: an edk2 (OVMF) variable store reader and EFI_SIGNATURE_LIST parsing, for PCR 7.

The store is the VARS half of OVMF: a firmware volume (`_FVH`) whose data is an authenticated
variable store (edk2 VariableFormat.h): a 28-byte store header, then variables, each a 60-byte
AUTHENTICATED_VARIABLE_HEADER (start id 0x55AA, state, attributes, counters, time, name and data
sizes, vendor GUID), its UTF-16 name and its data, the next header aligned to 4 bytes. Only variables
in state VAR_ADDED (or added and in deleted transition) are live; a later copy wins. The file is
parsed as hostile input: every size is bounded by the store.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

GLOBAL = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")  # EFI_GLOBAL_VARIABLE: SecureBoot, PK, KEK
IMAGE_SECURITY = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")  # db, dbx, dbt
X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
AUTH_STORE = uuid.UUID("aaf32c78-947b-439a-a180-2e144ec37792")
PLAIN_STORE = uuid.UUID("ddcf3616-3275-4164-98b6-fe85707ffe7d")
START_ID = 0x55AA
VAR_ADDED = 0x3F
VAR_ADDED_IN_TRANSITION = 0x3F & 0xFE
_AUTH_HDR = struct.Struct("<HBBIQ16sIII16s")  # 60 bytes
MAX_STORE = 64 << 20


class VarStoreError(ValueError):
    pass


@dataclass(frozen=True)
class Variable:
    guid: uuid.UUID
    name: str
    attributes: int
    data: bytes


def read_varstore(path: Path) -> dict[tuple[uuid.UUID, str], Variable]:
    """Live variables of an edk2 VARS file, keyed by (vendor GUID, name)."""
    try:
        size = path.stat().st_size
        if size > MAX_STORE:
            raise VarStoreError(f"{path}: {size} bytes is larger than any OVMF variable store")
        data = path.read_bytes()
    except OSError as e:
        raise VarStoreError(f"cannot read {path}: {e.strerror}") from None
    return parse_varstore(data, str(path))


def parse_varstore(data: bytes, where: str = "variable store") -> dict[tuple[uuid.UUID, str], Variable]:
    if len(data) < 0x48 or data[40:44] != b"_FVH":
        raise VarStoreError(f"{where}: not an edk2 firmware volume (no _FVH signature): pass the OVMF VARS file")
    fv_len, = struct.unpack_from("<Q", data, 32)
    hdr_len, = struct.unpack_from("<H", data, 48)
    if not 0x48 <= hdr_len < len(data) - 28 or fv_len > len(data):
        raise VarStoreError(f"{where}: firmware volume header sizes are inconsistent")
    sig = uuid.UUID(bytes_le=data[hdr_len:hdr_len + 16])
    store_size, = struct.unpack_from("<I", data, hdr_len + 16)
    if sig not in (AUTH_STORE, PLAIN_STORE):
        raise VarStoreError(f"{where}: no edk2 variable store after the firmware volume header")
    if sig != AUTH_STORE:
        raise VarStoreError(f"{where}: a non-authenticated variable store cannot hold Secure Boot keys")
    end = min(hdr_len + store_size, len(data))
    off = hdr_len + 28
    live: dict[tuple[uuid.UUID, str], Variable] = {}
    while off + _AUTH_HDR.size <= end:
        start, state, _r, attrs, _count, _time, _pk, name_size, data_size, guid = _AUTH_HDR.unpack_from(data, off)
        if start != START_ID:
            break
        name_at = off + _AUTH_HDR.size
        data_at = name_at + name_size
        if name_size % 2 or name_size < 2 or data_at + data_size > end:
            raise VarStoreError(f"{where}: variable at offset {off:#x} runs past the end of the store")
        if state in (VAR_ADDED, VAR_ADDED_IN_TRANSITION):
            name = data[name_at:data_at].decode("utf-16-le", errors="replace").split("\0", 1)[0]
            key = (uuid.UUID(bytes_le=guid), name)
            if state == VAR_ADDED or key not in live:
                live[key] = Variable(key[0], name, attrs, data[data_at:data_at + data_size])
        off = (data_at + data_size + 3) & ~3
    return live


@dataclass(frozen=True)
class SignatureData:
    type_guid: uuid.UUID
    owner: uuid.UUID
    data: bytes  # the certificate (DER) or hash

    def raw(self) -> bytes:
        """EFI_SIGNATURE_DATA as stored: owner GUID, then the signature data."""
        return self.owner.bytes_le + self.data


def parse_signature_lists(blob: bytes, where: str = "signature database") -> list[SignatureData]:
    """Every EFI_SIGNATURE_DATA in a sequence of EFI_SIGNATURE_LISTs (db, KEK, ...)."""
    out, off = [], 0
    while off < len(blob):
        if off + 28 > len(blob):
            raise VarStoreError(f"{where}: truncated EFI_SIGNATURE_LIST at offset {off}")
        type_guid = uuid.UUID(bytes_le=blob[off:off + 16])
        list_size, header_size, sig_size = struct.unpack_from("<III", blob, off + 16)
        body = off + 28 + header_size
        if list_size < 28 or off + list_size > len(blob) or sig_size <= 16 or body > off + list_size or (off + list_size - body) % sig_size:
            raise VarStoreError(f"{where}: malformed EFI_SIGNATURE_LIST at offset {off}")
        for at in range(body, off + list_size, sig_size):
            out.append(SignatureData(type_guid, uuid.UUID(bytes_le=blob[at:at + 16]), blob[at + 16:at + sig_size]))
        off += list_size
    return out


def variable_data_event(guid: uuid.UUID, name: str, data: bytes) -> bytes:
    """UEFI_VARIABLE_DATA (TCG PC Client PFP §10.2.6): what EV_EFI_VARIABLE_* events carry and hash."""
    uname = name.encode("utf-16-le")
    return guid.bytes_le + struct.pack("<QQ", len(name), len(data)) + uname + data
