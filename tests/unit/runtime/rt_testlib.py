"""Shared test data for the runtime unit tests (SSH key blobs and a boot id)."""

from __future__ import annotations

import base64
import struct


def blob(key_type: str, body: bytes = b"\x00\x00\x00\x20" + b"k" * 32) -> str:
    """A well-formed OpenSSH public key blob of `key_type` (wire format: string type, then key data)."""
    raw = struct.pack(">I", len(key_type)) + key_type.encode() + body
    return base64.b64encode(raw).decode()


ED = blob("ssh-ed25519")
ECDSA = blob("ecdsa-sha2-nistp256")
BOOT_ID = "a1e4fabd-3b3d-4521-aed6-7205ef73c9b9"
