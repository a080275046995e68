"""File-level entry points used by the CLI: read inputs (size-capped), parse, verify, compare.

Each returns a report object with `ok` and `failures`; rendering lives in render.py. Bad input raises
AttestInputError (exit 2); a verification failure is a report with ok == False (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sealbox.attest import AttestInputError
from sealbox.attest.binary import read_input
from sealbox.attest.collateral import MAX_COLLATERAL, CollateralResult, check_collateral, load_collateral
from sealbox.attest.eventlog import CcelTable, EventLog, parse_ccel_table, parse_event_log, replay
from sealbox.attest.policy import PolicyResult, compare, load_measurements
from sealbox.attest.quote import Quote, parse_quote
from sealbox.attest.verify import QuoteVerification, verify_quote

MAX_QUOTE = 1024 * 1024
MAX_EVENT_LOG = 64 * 1024 * 1024
MAX_TABLE = 64 * 1024
MAX_MEASUREMENTS = 16 * 1024 * 1024


def parse_time(text: str | None) -> datetime:
    """`--at`: ISO 8601 (naive means UTC), or '@<unix seconds>'; None means now."""
    if text is None:
        return datetime.now(UTC)
    raw = text.strip()
    try:
        if raw.startswith("@"):
            return datetime.fromtimestamp(int(raw[1:]), UTC)
        t = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, OverflowError, OSError):
        raise AttestInputError(f"--at {text!r} is not a time; use ISO 8601 like 2025-07-01T00:00:00Z or @<unix seconds>") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@dataclass
class QuoteReport:
    path: str
    quote: Quote
    verification: QuoteVerification
    collateral: CollateralResult | None = None

    @property
    def failures(self) -> list[str]:
        out = list(self.verification.failures)
        if self.collateral is not None and not self.collateral.ok:
            out.append(f"collateral: {self.collateral.detail}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures


def quote_report(
    path: str | Path, collateral: str | Path | None = None, at: datetime | None = None, allowed: tuple[str, ...] = ("UpToDate",)
) -> QuoteReport:
    what = f"quote {path}"
    raw = read_input(path, "quote", MAX_QUOTE)
    q = parse_quote(raw, what)
    at = at or datetime.now(UTC)
    rep = QuoteReport(str(path), q, verify_quote(q, at))
    if collateral is not None:
        text = read_input(collateral, "collateral", MAX_COLLATERAL)
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AttestInputError(f"collateral {collateral} is not UTF-8 JSON") from None
        doc = load_collateral(decoded, f"collateral {collateral}")
        rep.collateral = check_collateral(raw, q, doc, at, allowed)
    return rep


@dataclass
class EventLogReport:
    path: str
    log: EventLog
    replayed: list[bytes]
    table: CcelTable | None = None
    quote: QuoteReport | None = None
    rtmr_mismatches: list[int] = field(default_factory=list)  # RTMRs where replay != quote
    policy: PolicyResult | None = None

    @property
    def failures(self) -> list[str]:
        out: list[str] = []
        if self.quote is not None:
            out += [f"quote: {f}" for f in self.quote.failures]
            out += [f"RTMR{i}: replay {self.replayed[i].hex()} != quote {self.quote.quote.body.rtmrs[i].hex()}" for i in self.rtmr_mismatches]
        if self.policy is not None:
            out += [m.line() for m in self.policy.mismatches]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures


def eventlog_report(
    path: str | Path,
    table: str | Path | None = None,
    quote: str | Path | None = None,
    expect: str | Path | None = None,
    at: datetime | None = None,
) -> EventLogReport:
    ccel = None
    if table is not None:
        ccel = parse_ccel_table(read_input(table, "CCEL table", MAX_TABLE), f"CCEL table {table}")
    data = read_input(path, "event log", MAX_EVENT_LOG)
    log = parse_event_log(data, f"event log {path}", laml=ccel.laml if ccel else None)
    rep = EventLogReport(str(path), log, replay(log), table=ccel)
    body = None
    if quote is not None:
        rep.quote = quote_report(quote, at=at)
        body = rep.quote.quote.body
        rep.rtmr_mismatches = [i for i in range(4) if rep.replayed[i] != body.rtmrs[i]]
    if expect is not None:
        m = load_measurements(read_input(expect, "measurements file", MAX_MEASUREMENTS), f"measurements file {expect}")
        rep.policy = compare(m, log, rep.replayed, body)
    return rep
