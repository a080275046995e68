"""`sealbox attest quote|eventlog`: offline TDX attestation checks (logic in sealbox.attest)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from sealbox.errors import AttestError


def _emit(output: list[str] | dict[str, Any]) -> None:
    """A dict is the --json document; a list is the human summary, one line each."""
    click.echo(json.dumps(output, indent=2, sort_keys=True) if isinstance(output, dict) else "\n".join(output))


@click.group()
def attest() -> None:
    """Verify TDX quotes and CC event logs offline (exit 0 verified, 1 failed or not all checked, 2 bad input)."""


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


def _instance(name: str | None, data_file: str | None, state_dir: Path | None) -> tuple[str, bytes] | None:
    """The instance disk a quote's MRCONFIGID is checked against: a sandbox's (by name) or a file."""
    from sealbox.attest import AttestInputError
    from sealbox.attest.binary import read_input
    from sealbox.guest.instance import MAX_SIZE

    if name is not None and data_file is not None:
        raise AttestInputError("give --instance NAME or --instance-data FILE, not both")
    if data_file is not None:
        return f"the instance data in {data_file}", read_input(data_file, "instance data", MAX_SIZE)
    if name is None:
        return None
    from sealbox.sandbox.instance import DISK_NAME
    from sealbox.sandbox.state import StateDir, state_root

    state = StateDir(state_root(state_dir))
    disk = state.sandbox_dir(name) / DISK_NAME
    if not disk.is_file():
        raise AttestInputError(f"no sandbox {name!r} in {state.root} (or it has no instance disk {DISK_NAME})",
                               hint="check the name with 'sealbox ps --all', or pass --state-dir / --instance-data FILE")
    return f"the instance data of sandbox {name} ({disk})", read_input(disk, "instance data", MAX_SIZE)


@attest.command("quote")
@click.argument("file")
@_quote_options
@click.option("--instance", "instance_name", metavar="NAME", help="Check MRCONFIGID against this sandbox's instance data.")
@click.option("--instance-data", metavar="FILE", help="Check MRCONFIGID against this instance disk (a sandbox's instance.img).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory for --instance (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")
@click.option("--expect", metavar="MEASUREMENTS_JSON", help="Check MRTD and RTMR0-3 against a sealbox prediction.")
@click.option("--at", "at_text", metavar="TIME", help="Check validity at this time (ISO 8601 or @unix); default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote_cmd(file: str, collateral: str | None, allow_status: tuple[str, ...], signatures_only: bool, allow_debug: bool,
              instance_name: str | None, instance_data: str | None, state_dir: Path | None, expect: str | None,
              at_text: str | None, as_json: bool) -> None:  # fmt: skip
    """Parse a TDX quote (v4/v5) and check it: signatures, PCK chain, DEBUG; with --collateral also TCB status,
    QE identity and revocation; with --instance/--instance-data its MRCONFIGID; with --expect MRTD and RTMRs.
    Without collateral the verdict says what was NOT checked and exits 1 unless --signatures-only."""
    from dataclasses import replace

    from sealbox.attest import render, report

    opts = _options(at_text, collateral, allow_status, signatures_only, allow_debug)
    opts = replace(opts, instance=_instance(instance_name, instance_data, state_dir), expect=expect)
    rep = report.quote_report(file, opts)
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
