"""Compare what a TD reported (event log replay, quote) with a `sealbox measure` prediction.

The prediction file (measurements.json, schema "sealbox.measurements/v1"):
    {"schema": "sealbox.measurements/v1",
     "registers": {"RTMR1": {"expected": "<hex>", "events": [{"description": "...", "digest": "<hex>",
                                                              "event_type": "EV_..." (optional)}]},
                   "MRTD": {...}, "PCR4": {...}, ...},
     "inputs": {...}}
Only registers present in the prediction are checked. RTMR values and events come from the event
log (its replay); MRTD needs the quote; TPM PCRs are not part of a CC event log and are reported as
not checked. Every difference is listed, not just the first, so one run shows the whole picture.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sealbox.attest import AttestInputError
from sealbox.attest.eventlog import ALG_SHA384, EventLog
from sealbox.attest.quote import TdQuoteBody

SCHEMA = "sealbox.measurements/v1"
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_RTMR = re.compile(r"^RTMR([0-3])$")
_PCR = re.compile(r"^PCR([0-9]|1[0-9]|2[0-3])$")


def _hex(v: str) -> str:
    if not _HEX.fullmatch(v):
        raise ValueError("must be an even number of hex digits")
    return v.lower()


class PredictedEvent(BaseModel):
    model_config = ConfigDict(extra="allow")
    description: str = ""
    digest: str
    event_type: str | None = None

    @field_validator("digest")
    @classmethod
    def _digest_hex(cls, v: str) -> str:
        return _hex(v)


class PredictedRegister(BaseModel):
    model_config = ConfigDict(extra="allow")
    expected: str
    events: list[PredictedEvent] = []

    @field_validator("expected")
    @classmethod
    def _expected_hex(cls, v: str) -> str:
        return _hex(v)


class Measurements(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    schema_: Literal["sealbox.measurements/v1"] = Field(alias="schema")
    registers: dict[str, PredictedRegister]
    inputs: dict[str, Any] = {}


def load_measurements(text: str | bytes, what: str = "measurements file") -> Measurements:
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AttestInputError(f"{what} is not JSON: {e}") from None
    try:
        m = Measurements.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        hint = f" (expected schema {SCHEMA!r})" if loc == "schema" else ""
        raise AttestInputError(f"{what}: {loc}: {err['msg']}{hint}") from None
    for name, reg in m.registers.items():
        if (_RTMR.match(name) or name == "MRTD") and len(reg.expected) != 96:
            raise AttestInputError(f"{what}: registers.{name}.expected must be 48 bytes (96 hex digits), got {len(reg.expected) // 2}")
    return m


@dataclass(frozen=True)
class Mismatch:
    register: str
    kind: str  # "value", "event", "event_type", "missing_event", "extra_event"
    expected: str
    actual: str
    event_index: int | None = None  # position among this register's events
    log_index: int | None = None  # position in the whole log
    event_type: str | None = None
    description: str = ""

    def line(self) -> str:
        where = self.register
        if self.event_index is not None:
            where += f" event {self.event_index}"
            if self.log_index is not None:
                where += f" (log #{self.log_index}, {self.event_type})"
        what = f" [{self.description}]" if self.description else ""
        return f"{where}: {self.kind}{what}: expected {self.expected}, actual {self.actual}"


@dataclass
class PolicyResult:
    checked: list[str] = field(default_factory=list)
    not_checked: dict[str, str] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def _compare_events(name: str, reg: PredictedRegister, log: EventLog, rtmr: int, out: list[Mismatch]) -> None:
    actual = log.rtmr_events(rtmr)
    for j in range(max(len(reg.events), len(actual))):
        exp = reg.events[j] if j < len(reg.events) else None
        act = actual[j] if j < len(actual) else None
        if act is None and exp is not None:
            out.append(Mismatch(name, "missing_event", exp.digest, "(none)", j, None, exp.event_type, exp.description))
            continue
        assert act is not None  # j < max(len(expected), len(actual))
        digest = act.digests[ALG_SHA384].hex()
        if exp is None:
            out.append(Mismatch(name, "extra_event", "(none)", digest, j, act.index, act.type_name, act.describe()))
            continue
        if exp.digest != digest:
            out.append(Mismatch(name, "event", exp.digest, digest, j, act.index, act.type_name, exp.description))
        if exp.event_type is not None and exp.event_type != act.type_name:
            out.append(Mismatch(name, "event_type", exp.event_type, act.type_name, j, act.index, act.type_name, exp.description))


def compare(
    m: Measurements, log: EventLog | None = None, replayed: list[bytes] | None = None, body: TdQuoteBody | None = None
) -> PolicyResult:
    """Check each predicted register against what is available; never raises on a mismatch."""
    res = PolicyResult()
    for name in sorted(m.registers):
        reg = m.registers[name]
        if rt := _RTMR.match(name):
            i = int(rt.group(1))
            if replayed is not None and log is not None:
                actual = replayed[i].hex()
                _compare_events(name, reg, log, i, res.mismatches)
            elif body is not None:
                actual = body.rtmrs[i].hex()
                if reg.events:
                    res.not_checked[f"{name} events"] = "no event log given"
            else:
                res.not_checked[name] = "needs an event log or a quote"
                continue
        elif name == "MRTD":
            if body is None:
                res.not_checked[name] = "MRTD is only in the quote (give --quote)"
                continue
            actual = body.mrtd.hex()
        elif _PCR.match(name):
            res.not_checked[name] = "TPM PCRs are not recorded in a TDX CC event log"
            continue
        else:
            res.not_checked[name] = "unknown register name"
            continue
        res.checked.append(name)
        if reg.expected != actual:
            res.mismatches.append(Mismatch(name, "value", reg.expected, actual))
    return res
