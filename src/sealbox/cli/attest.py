"""`sealbox attest quote|eventlog`: offline TDX attestation checks (logic in sealbox.attest)."""

from __future__ import annotations

import json
from typing import Any

import click

from sealbox.errors import AttestError


def _emit(output: list[str] | dict[str, Any]) -> None:
    """A dict is the --json document; a list is the human summary, one line each."""
    click.echo(json.dumps(output, indent=2, sort_keys=True) if isinstance(output, dict) else "\n".join(output))


@click.group()
def attest() -> None:
    """Verify TDX quotes and CC event logs offline (exit 0 verified, 1 failed, 2 bad input)."""


@attest.command("quote")
@click.argument("file")
@click.option("--collateral", metavar="FILE", help="Intel collateral JSON (dcap-qvl format): also check the TCB status.")
@click.option("--at", "at_text", metavar="TIME", help="Check validity at this time (ISO 8601 or @unix); default now.")
@click.option("--allow-status", multiple=True, metavar="STATUS", help="Accept this TCB status besides UpToDate (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote_cmd(file: str, collateral: str | None, at_text: str | None, allow_status: tuple[str, ...], as_json: bool) -> None:
    """Parse a TDX quote (v4/v5) and verify its signatures and PCK chain."""
    from sealbox.attest import render, report

    rep = report.quote_report(file, collateral, report.parse_time(at_text), ("UpToDate", *allow_status))
    _emit(render.quote_json(rep) if as_json else render.quote_text(rep))
    if not rep.ok:
        raise AttestError(f"quote {file} did not verify: {'; '.join(rep.failures)}")


@attest.command("eventlog")
@click.argument("file")
@click.option("--table", metavar="ACPI_CCEL_TABLE", help="The ACPI CCEL table (bounds the log area).")
@click.option("--quote", metavar="QUOTE", help="Verify this quote and compare its RTMRs with the replay.")
@click.option("--expect", metavar="MEASUREMENTS_JSON", help="Compare registers and events with a sealbox prediction.")
@click.option("--at", "at_text", metavar="TIME", help="Time for the quote's certificate checks; default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def eventlog_cmd(file: str, table: str | None, quote: str | None, expect: str | None, at_text: str | None, as_json: bool) -> None:
    """Parse a CC event log (CCEL), replay RTMR0-3 and check them against a quote and/or prediction."""
    from sealbox.attest import render, report

    rep = report.eventlog_report(file, table, quote, expect, report.parse_time(at_text))
    _emit(render.eventlog_json(rep) if as_json else render.eventlog_text(rep))
    if not rep.ok:
        raise AttestError(f"event log {file} did not verify: {'; '.join(rep.failures)}")
