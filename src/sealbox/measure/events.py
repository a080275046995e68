"""Measurement registers and the events extended into them.

A TPM PCR and a TDX RTMR both start at zero and are updated as new = H(old || digest(event)); only the
bank (SHA-256 for the PCRs we predict, SHA-384 for RTMRs) differs. The JSON shape produced here is
read by the attestation verifier: registers.<NAME>.expected and registers.<NAME>.events[*].digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

# Strings the firmware measures verbatim (TCG PC Client PFP spec, section 10.4.4 / edk2 Tcg2Dxe).
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = b"Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCESS = b"Exit Boot Services Returned with Success"
SEPARATOR_DATA = b"\x00\x00\x00\x00"


def digest(bank: str, data: bytes) -> str:
    return hashlib.new(bank, data).hexdigest()


@dataclass(frozen=True)
class Event:
    event_type: str
    description: str
    digest: str  # hex, in the register's bank

    def to_json(self) -> dict[str, str]:
        return {"event_type": self.event_type, "description": self.description, "digest": self.digest}


@dataclass
class Register:
    name: str
    bank: str  # "sha256" | "sha384"
    scenario: str
    events: list[Event] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, event_type: str, description: str, hex_digest: str) -> None:
        if len(hex_digest) != 2 * hashlib.new(self.bank).digest_size:
            raise ValueError(f"{self.name}: digest {hex_digest!r} is not a {self.bank} digest")
        self.events.append(Event(event_type, description, hex_digest.lower()))

    def add_data(self, event_type: str, description: str, data: bytes) -> None:
        """An event whose digest is the hash of `data` in this register's bank."""
        self.add(event_type, description, digest(self.bank, data))

    @property
    def expected(self) -> str:
        value = bytes(hashlib.new(self.bank).digest_size)
        for ev in self.events:
            value = hashlib.new(self.bank, value + bytes.fromhex(ev.digest)).digest()
        return value.hex()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "expected": self.expected,
            "bank": self.bank,
            "scenario": self.scenario,
            "events": [e.to_json() for e in self.events],
        }
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def replay(bank: str, digests: list[str]) -> str:
    """The register value after extending `digests` (hex) in order from zero."""
    reg = Register("replay", bank, "replay")
    for d in digests:
        reg.add("replay", "", d)
    return reg.expected
