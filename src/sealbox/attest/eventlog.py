"""CC event logs (CCEL): the ACPI CCEL table, TCG2 crypto-agile parsing, and RTMR replay.

Format (TCG PC Client PFP "crypto agile" log, reused by the UEFI CC measurement protocol):
  1. one TCG_PCR_EVENT in the old SHA-1 layout: index u32, type u32 (EV_NO_ACTION), digest 20 (zero),
     size u32, data = TCG_EfiSpecIdEvent ("Spec ID Event03\\0", platform class u32, version 3×u8,
     uintn size u8, algorithm count u32, {alg id u16, digest size u16}…, vendor info u8 + bytes);
  2. TCG_PCR_EVENT2 entries: index u32, type u32, digest count u32, {alg id u16, digest}…, size u32,
     data. Digest sizes come from the Spec ID event, which is why it is parsed first.
In a CC log the index is the CC measurement register: 0 = MRTD, 1..4 = RTMR0..3. EV_NO_ACTION events
are informational and never extended. The log area (LAML bytes at LASA, from the ACPI table) is
pre-filled, so the log ends where only 0xFF or 0x00 padding remains.
Replay: RTMRi starts as 48 zero bytes and each event extends it: RTMR = SHA-384(RTMR | digest).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sealbox.attest import AttestInputError
from sealbox.attest.binary import Reader
from sealbox.attest.evtypes import EV_NO_ACTION, describe, type_name

SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
ALG_SHA384 = 0x000C
# TPM_ALG_ID → (name, digest size); a log declaring another size for a known id is corrupt.
KNOWN_ALGS = {0x0004: ("sha1", 20), 0x000B: ("sha256", 32), 0x000C: ("sha384", 48), 0x000D: ("sha512", 64), 0x0012: ("sm3_256", 32)}
RTMR_COUNT = 4
MAX_EVENTS = 100_000  # a firmware log has hundreds; this bounds work on hostile input
CCEL_TABLE_SIZE = 56


@dataclass(frozen=True)
class CcelTable:
    """The ACPI CCEL table: where firmware left the event log (LASA) and how big its area is (LAML)."""

    revision: int
    oem_id: str
    oem_table_id: str
    cc_type: int  # 2 = TDX
    cc_subtype: int
    laml: int
    lasa: int


@dataclass(frozen=True)
class SpecId:
    platform_class: int
    spec_version: str
    uintn_size: int
    algorithms: dict[int, int]  # alg id -> digest size, in declared order


@dataclass(frozen=True)
class Event:
    index: int  # position among the TCG_PCR_EVENT2 entries (0-based)
    offset: int
    mr_index: int
    event_type: int
    digests: dict[int, bytes]
    data: bytes = field(repr=False)

    @property
    def type_name(self) -> str:
        return type_name(self.event_type)

    @property
    def rtmr(self) -> int | None:
        """RTMR number this event extends, or None (EV_NO_ACTION, or MRTD's index 0)."""
        if self.event_type == EV_NO_ACTION or not 1 <= self.mr_index <= RTMR_COUNT:
            return None
        return self.mr_index - 1

    def describe(self) -> str:
        return describe(self.event_type, self.data)


@dataclass(frozen=True)
class EventLog:
    spec_id: SpecId
    header_mr_index: int
    events: tuple[Event, ...]
    length: int  # bytes used; the remainder of the area is padding

    def rtmr_events(self, rtmr: int) -> list[Event]:
        return [e for e in self.events if e.rtmr == rtmr]


def parse_ccel_table(data: bytes, what: str = "CCEL table") -> CcelTable:
    r = Reader(data, what)
    signature = r.bytes(4, "signature")
    if signature != b"CCEL":
        raise AttestInputError(f"{what}: ACPI signature is {signature!r}, expected b'CCEL'")
    length = r.u32("length")
    if length < CCEL_TABLE_SIZE or length > len(data):
        raise AttestInputError(f"{what}: table length {length} is not between {CCEL_TABLE_SIZE} and the file size {len(data)}")
    if sum(data[:length]) % 256:
        raise AttestInputError(f"{what}: ACPI checksum does not add up to zero; the table is corrupt")
    revision = r.u8("revision")
    r.u8("checksum")
    oem_id = r.bytes(6, "oem_id").decode("ascii", "replace").strip()
    oem_table_id = r.bytes(8, "oem_table_id").decode("ascii", "replace").strip()
    r.bytes(12, "oem_revision, creator id, creator revision")
    cc_type, cc_subtype = r.u8("cc_type"), r.u8("cc_subtype")
    r.u16("reserved")
    laml, lasa = r.u64("laml"), r.u64("lasa")
    return CcelTable(revision, oem_id, oem_table_id, cc_type, cc_subtype, laml, lasa)


def _parse_spec_id(r: Reader) -> tuple[SpecId, int]:
    mr_index = r.u32("header event index")
    ev_type = r.u32("header event type")
    r.bytes(20, "header event digest")
    size = r.u32("header event size")
    if ev_type != EV_NO_ACTION:
        raise AttestInputError(f"{r.what}: first event has type {type_name(ev_type)}, not the EV_NO_ACTION Spec ID event (is this a TCG2 event log?)")
    s = r.sub(size, "Spec ID event")
    if s.bytes(16, "Spec ID signature") != SPEC_ID_SIGNATURE:
        raise AttestInputError(f"{r.what}: first event is not 'Spec ID Event03' (only crypto-agile TCG2 logs are supported)")
    platform_class = s.u32("platform class")
    minor, major, errata = s.u8("spec minor"), s.u8("spec major"), s.u8("spec errata")
    uintn = s.u8("uintn size")
    count = s.u32("algorithm count")
    if not 1 <= count <= len(KNOWN_ALGS) + 8:
        raise AttestInputError(f"{r.what}: Spec ID event declares {count} digest algorithms")
    algs: dict[int, int] = {}
    for _ in range(count):
        alg, dsize = s.u16("algorithm id"), s.u16("digest size")
        known = KNOWN_ALGS.get(alg)
        if known and known[1] != dsize:
            raise AttestInputError(f"{r.what}: Spec ID event gives {known[0]} a digest size of {dsize}, not {known[1]}")
        if not 1 <= dsize <= 512 or alg in algs:
            raise AttestInputError(f"{r.what}: Spec ID event entry for algorithm {alg:#06x} is invalid")
        algs[alg] = dsize
    s.bytes(s.u8("vendor info size"), "vendor info")
    return SpecId(platform_class, f"{major}.{minor}.{errata}", uintn, algs), mr_index


def _parse_event(r: Reader, spec: SpecId, index: int) -> Event:
    offset = r.pos
    mr_index = r.u32(f"event {index} index")
    ev_type = r.u32(f"event {index} type")
    count = r.u32(f"event {index} digest count")
    if count > len(spec.algorithms):
        raise AttestInputError(f"{r.what}: event {index} at offset {offset} has {count} digests, the log declares {len(spec.algorithms)} algorithms")
    digests: dict[int, bytes] = {}
    for _ in range(count):
        alg = r.u16(f"event {index} digest algorithm")
        if alg not in spec.algorithms:
            raise AttestInputError(f"{r.what}: event {index} at offset {offset} uses digest algorithm {alg:#06x}, not declared in the Spec ID event")
        if alg in digests:
            raise AttestInputError(f"{r.what}: event {index} at offset {offset} lists digest algorithm {alg:#06x} twice")
        digests[alg] = r.bytes(spec.algorithms[alg], f"event {index} digest")
    size = r.u32(f"event {index} data size")
    data = r.bytes(size, f"event {index} data")
    return Event(index, offset, mr_index, ev_type, digests, data)


def parse_event_log(data: bytes, what: str = "event log", laml: int | None = None) -> EventLog:
    """Parse a CC event log; `laml` (from the ACPI table) bounds the log area when known."""
    end = len(data) if laml is None else min(len(data), laml)
    r = Reader(data, what, 0, end)
    spec, header_index = _parse_spec_id(r)
    if ALG_SHA384 not in spec.algorithms:
        raise AttestInputError(f"{what}: no SHA-384 digests, so this is not a TDX CC event log (a TPM PCR log?)")
    # Where the 0xFF/0x00 fill of the log area begins: an event starting there would be padding.
    content_end = len(data[:end].rstrip(b"\xff\0"))
    events: list[Event] = []
    while r.pos < content_end:
        if len(events) >= MAX_EVENTS:
            raise AttestInputError(f"{what}: more than {MAX_EVENTS} events; refusing to continue")
        events.append(_parse_event(r, spec, len(events)))
    for e in events:
        if e.event_type != EV_NO_ACTION and not 1 <= e.mr_index <= RTMR_COUNT:
            raise AttestInputError(
                f"{what}: event {e.index} ({e.type_name}) has index {e.mr_index}; CC logs use 1-4 for RTMR0-3 (a TPM PCR log?)"
            )
        if e.rtmr is not None and ALG_SHA384 not in e.digests:
            raise AttestInputError(f"{what}: event {e.index} ({e.type_name}) has no SHA-384 digest to replay")
    return EventLog(spec, header_index, tuple(events), r.pos)


def extend(register: bytes, digest: bytes) -> bytes:
    return hashlib.sha384(register + digest).digest()


def replay(log: EventLog) -> list[bytes]:
    """RTMR0..3 as the log says they should be."""
    rtmrs = [bytes(48)] * RTMR_COUNT
    for e in log.events:
        if e.rtmr is not None:
            rtmrs[e.rtmr] = extend(rtmrs[e.rtmr], e.digests[ALG_SHA384])
    return rtmrs
