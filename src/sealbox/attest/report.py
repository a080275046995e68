"""File-level entry points used by the CLI: read inputs (size-capped), parse, verify, compare.

Each returns a report object with `ok` and `failures`; rendering lives in render.py. Bad input raises
AttestInputError (exit 2); a verification failure is a report with ok == False (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from sealbox.attest import AttestInputError, hostkey
from sealbox.attest.binary import read_input
from sealbox.attest.binding import check_measurements, check_mrconfigid
from sealbox.attest.collateral import CHECK_NAMES, COLLATERAL_CHECKS, MAX_COLLATERAL, CollateralResult, check_collateral, load_collateral
from sealbox.attest.eventlog import CcelTable, EventLog, parse_ccel_table, parse_event_log, replay
from sealbox.attest.policy import PolicyResult, compare, load_measurements
from sealbox.attest.quote import Quote, parse_quote
from sealbox.attest.verify import Check, QuoteVerification, RootAnchor, verify_quote
from sealbox.modules.bob import bob_attest

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


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@dataclass(frozen=True)
class QuoteOptions:
    """What the caller asked for and accepts (the CLI flags of `attest quote`)."""

    collateral: str | Path | None = None
    at: datetime | None = None
    allowed: tuple[str, ...] = ("UpToDate",)
    signatures_only: bool = False  # accept a verdict whose TCB status / QE identity / revocation were not checked
    allow_debug: bool = False
    instance: tuple[str, bytes] | None = None  # (where it came from, instance disk bytes): check MRCONFIGID
    expect: str | Path | None = None  # measurements.json: check MRTD and RTMRs
    root: RootAnchor | None = None  # tests: a synthetic root; None is the pinned Intel root
    hostkeys: tuple[list[hostkey.HostKey], bytes] | None = None  # (the complete key set, nonce): check REPORTDATA binds them


@dataclass
class QuoteReport:
    path: str
    quote: Quote
    verification: QuoteVerification
    options: QuoteOptions = field(default_factory=QuoteOptions)
    collateral: CollateralResult | None = None
    extra: list[Check] = field(default_factory=list)  # checks against what the caller expects (instance data, prediction)

    @property
    def checks(self) -> list[Check]:
        if self.collateral is not None:
            coll = self.collateral.checks
        else:
            coll = [Check.not_checked(n, "needs --collateral") for n in COLLATERAL_CHECKS]
        return [*self.verification.checks, *coll, *self.extra]

    @property
    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok and not c.skipped]

    @property
    def not_checked(self) -> list[str]:
        return [c.name for c in self.checks if c.skipped]

    @property
    def ok(self) -> bool:
        return not self.failures and (not self.not_checked or self.options.signatures_only)

    def verdict(self, prefix: str = "") -> str:
        if self.failures:
            return "FAILED"
        if not self.not_checked:
            return f"{prefix}VERIFIED"
        names = _and([CHECK_NAMES.get(n, n) for n in self.not_checked])
        accepted = " (accepted with --signatures-only)" if self.options.signatures_only else ""
        return f"{prefix}{'signatures valid' if prefix else 'SIGNATURES VALID'} — {names} NOT checked{accepted}"

    def refusal(self) -> str:
        """Why a report without failures is still not accepted."""
        names = _and([CHECK_NAMES.get(n, n) for n in self.not_checked])
        why = "no --collateral" if self.collateral is None else "see the report"
        return (f"signatures valid, but {names} were NOT checked ({why}); "
                "give --collateral FILE, or --signatures-only to accept this")


def quote_report(path: str | Path, options: QuoteOptions | None = None) -> QuoteReport:
    return quote_report_bytes(read_input(path, "quote", MAX_QUOTE), str(path), options)


def quote_report_bytes(raw: bytes, path: str, options: QuoteOptions | None = None) -> QuoteReport:
    """`path` names where the quote came from (a file, or "... from URL")."""
    opts = options or QuoteOptions()
    q = parse_quote(raw, f"quote {path}")
    at = opts.at or datetime.now(UTC)
    ver = verify_quote(q, at, opts.root, allow_debug=opts.allow_debug)
    rep = QuoteReport(path, q, ver, opts)
    if opts.collateral is not None:
        text = read_input(opts.collateral, "collateral", MAX_COLLATERAL)
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            raise AttestInputError(f"collateral {opts.collateral} is not UTF-8 JSON") from None
        doc = load_collateral(decoded, f"collateral {opts.collateral}")
        rep.collateral = check_collateral(raw, q, doc, at, opts.allowed, ver.certs, opts.root)
    if opts.instance is not None:
        rep.extra.append(check_mrconfigid(q, *opts.instance))
    if opts.expect is not None:
        m = load_measurements(read_input(opts.expect, "measurements file", MAX_MEASUREMENTS), f"measurements file {opts.expect}")
        rep.extra.append(check_measurements(q, m))
    if opts.hostkeys is not None:
        rep.extra.append(hostkey.check_binding(q, *opts.hostkeys))
    return rep


def hostkey_report(source: str, nonce: bytes | None, given: list[hostkey.HostKey],
                   options: QuoteOptions | None = None) -> tuple[QuoteReport, list[hostkey.HostKey]]:  # fmt: skip
    """A bob guest's answer (a saved file, or fetched from http://ADDRESS:PORT with a fresh nonce): its quote verified
    as `quote_report` does, plus: the answer is for our nonce, REPORTDATA binds its host keys to that nonce, and each
    `given` key is one of them. Returns the report and the bound keys (in binding order)."""
    whose = "the nonce you gave"
    if "://" in source:
        if nonce is None:
            nonce, whose = hostkey.fresh_nonce(), "the nonce sealbox chose for this request"
        data = hostkey.fetch(source, nonce)
    else:
        if nonce is None:
            raise AttestInputError(f"answer {source}: give --nonce HEX, the nonce you sent with the request "
                                   "(an answer to a nonce you did not choose may be replayed)")
        data = read_input(source, "answer", bob_attest.MAX_ANSWER)
    ans = hostkey.parse_answer(data, source)
    rep = quote_report_bytes(ans.quote, f"from {source}", options)
    rep.extra.append(hostkey.check_nonce(ans.nonce, nonce, whose))
    rep.extra.append(hostkey.check_binding(rep.quote, ans.keys, nonce))
    if given:
        rep.extra.append(hostkey.check_given(ans.keys, given))
    return rep, sorted(ans.keys, key=lambda k: k.blob)


@dataclass
class EventLogReport:
    path: str
    log: EventLog
    replayed: list[bytes]
    table: CcelTable | None = None
    quote: QuoteReport | None = None
    rtmr_mismatches: list[int] = field(default_factory=list)  # RTMRs where replay != quote
    policy: PolicyResult | None = None
    replay_only: bool = False  # the caller accepts a replay with nothing compared

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
    def compared(self) -> bool:
        return self.quote is not None or bool(self.policy and self.policy.checked)

    @property
    def ok(self) -> bool:
        if self.failures:
            return False
        if not self.compared:
            return self.replay_only
        return self.quote is None or self.quote.ok

    def verdict(self) -> str:
        if self.failures:
            return "FAILED"
        if not self.compared:
            return "REPLAY ONLY — nothing was compared " + ("(--replay-only)" if self.replay_only else "(give --quote and/or --expect)")
        parts = []
        if self.quote is not None:
            parts.append("RTMRs match the quote")
        if self.policy is not None and self.policy.checked:
            parts.append(f"prediction matches ({', '.join(self.policy.checked)})")
        if self.quote is not None:
            parts.append(self.quote.verdict(prefix="quote "))
        return "; ".join(parts)

    def refusal(self) -> str:
        if not self.compared:
            return "nothing was compared: give --quote and/or --expect (or --replay-only to accept a replay alone)"
        assert self.quote is not None
        return f"quote {self.quote.path}: {self.quote.refusal()}"


def eventlog_report(
    path: str | Path,
    table: str | Path | None = None,
    quote: str | Path | None = None,
    expect: str | Path | None = None,
    at: datetime | None = None,
    quote_options: QuoteOptions | None = None,
    replay_only: bool = False,
) -> EventLogReport:
    ccel = None
    if table is not None:
        ccel = parse_ccel_table(read_input(table, "CCEL table", MAX_TABLE), f"CCEL table {table}")
    data = read_input(path, "event log", MAX_EVENT_LOG)
    log = parse_event_log(data, f"event log {path}", laml=ccel.laml if ccel else None)
    rep = EventLogReport(str(path), log, replay(log), table=ccel, replay_only=replay_only)
    body = None
    if quote is not None:
        rep.quote = quote_report(quote, replace(quote_options or QuoteOptions(), at=at))
        body = rep.quote.quote.body
        rep.rtmr_mismatches = [i for i in range(4) if rep.replayed[i] != body.rtmrs[i]]
    if expect is not None:
        m = load_measurements(read_input(expect, "measurements file", MAX_MEASUREMENTS), f"measurements file {expect}")
        rep.policy = compare(m, log, rep.replayed, body)
    return rep
