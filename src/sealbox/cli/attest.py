"""`sealbox attest quote|eventlog`: offline TDX attestation checks (logic in sealbox.attest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from sealbox.errors import AttestError


def _emit(output: list[str] | dict[str, Any]) -> None:
    """A dict is the --json document; a list is the human summary, one line each."""
    click.echo(json.dumps(output, indent=2, sort_keys=True) if isinstance(output, dict) else "\n".join(output))


@click.group()
def attest() -> None:
    """Verify TDX quotes and CC event logs offline (exit 0 verified, 1 failed, 2 bad input)."""


def _quote_options(f: Callable[..., None]) -> Callable[..., None]:
    """The flags that say what a quote is checked against and what the caller accepts."""
    for opt in reversed([
        click.option("--collateral", metavar="FILE",
                     help="Intel collateral JSON (dcap-qvl format): also check TCB status, QE identity and revocation."),
        click.option("--allow-status", multiple=True, metavar="STATUS", help="Accept this TCB status besides UpToDate (repeatable)."),
        click.option("--signatures-only", is_flag=True,
                     help="Accept a verdict whose TCB status, QE identity or revocation could not be checked (e.g. without --collateral)."),
        click.option("--allow-debug", is_flag=True, help="Accept a DEBUG TD (its memory is not confidential)."),
    ]):  # fmt: skip
        f = opt(f)
    return f


def _options(at_text: str | None, collateral: str | None, allow_status: tuple[str, ...], signatures_only: bool,
             allow_debug: bool) -> Any:  # fmt: skip
    from sealbox.attest import report

    return report.QuoteOptions(collateral=collateral, at=report.parse_time(at_text), allowed=("UpToDate", *allow_status),
                               signatures_only=signatures_only, allow_debug=allow_debug)  # fmt: skip


@attest.command("quote")
@click.argument("file")
@_quote_options
@click.option("--at", "at_text", metavar="TIME", help="Check validity at this time (ISO 8601 or @unix); default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote_cmd(file: str, collateral: str | None, allow_status: tuple[str, ...], signatures_only: bool, allow_debug: bool,
              at_text: str | None, as_json: bool) -> None:  # fmt: skip
    """Parse a TDX quote (v4/v5) and check it: signatures, PCK chain, DEBUG; with --collateral also TCB status,
    QE identity and revocation. Without collateral the verdict says what was NOT checked and exits 1 unless
    --signatures-only."""
    from sealbox.attest import render, report

    rep = report.quote_report(file, _options(at_text, collateral, allow_status, signatures_only, allow_debug))
    _emit(render.quote_json(rep) if as_json else render.quote_text(rep))
    if rep.failures:
        raise AttestError(f"quote {file} did not verify: {'; '.join(rep.failures)}")
    if not rep.ok:
        raise AttestError(f"quote {file}: {rep.refusal()}")


@attest.command("eventlog")
@click.argument("file")
@click.option("--table", metavar="ACPI_CCEL_TABLE", help="The ACPI CCEL table (bounds the log area).")
@click.option("--quote", metavar="QUOTE", help="Verify this quote and compare its RTMRs with the replay.")
@click.option("--expect", metavar="MEASUREMENTS_JSON", help="Compare registers and events with a sealbox prediction.")
@_quote_options
@click.option("--replay-only", is_flag=True, help="Accept a replay with nothing compared (no --quote, no --expect).")
@click.option("--at", "at_text", metavar="TIME", help="Time for the quote's certificate checks; default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eventlog_cmd(file: str, table: str | None, quote: str | None, expect: str | None, collateral: str | None,
                 allow_status: tuple[str, ...], signatures_only: bool, allow_debug: bool, replay_only: bool,
                 at_text: str | None, as_json: bool) -> None:  # fmt: skip
    """Parse a CC event log (CCEL), replay RTMR0-3 and check them against a quote and/or prediction. With neither,
    the verdict is "replay only" and exits 1 unless --replay-only."""
    from sealbox.attest import render, report

    opts = _options(at_text, collateral, allow_status, signatures_only, allow_debug)
    rep = report.eventlog_report(file, table, quote, expect, opts.at, quote_options=opts, replay_only=replay_only)
    _emit(render.eventlog_json(rep) if as_json else render.eventlog_text(rep))
    if rep.failures:
        raise AttestError(f"event log {file} did not verify: {'; '.join(rep.failures)}")
    if not rep.ok:
        raise AttestError(f"event log {file}: {rep.refusal()}")
