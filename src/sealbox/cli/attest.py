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


def _hostkeys(texts: tuple[str, ...], nonce_text: str | None) -> Any:
    """(--ssh-hostkey keys, --nonce bytes); one-line errors naming the flag and its value."""
    from sealbox.attest import hostkey

    keys = hostkey.parse_hostkeys(list(texts), lambda _i, t: f"--ssh-hostkey '{t}'",
                                  lambda k: f"--ssh-hostkey {k.fingerprint} is given twice")
    nonce = None if nonce_text is None else hostkey.parse_nonce(nonce_text, f"--nonce '{hostkey.shown(nonce_text, 80)}'")
    return keys, nonce


@attest.command("quote")
@click.argument("file")
@_quote_options
@click.option("--instance", "instance_name", metavar="NAME", help="Check MRCONFIGID against this sandbox's instance data.")
@click.option("--instance-data", metavar="FILE", help="Check MRCONFIGID against this instance disk (a sandbox's instance.img).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory for --instance (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")
@click.option("--expect", metavar="MEASUREMENTS_JSON", help="Check MRTD and RTMR0-3 against a sealbox prediction.")
@click.option("--ssh-hostkey", "ssh_hostkeys", multiple=True, metavar="'TYPE BASE64'",
              help="Check REPORTDATA binds exactly these SSH host keys (repeatable) to --nonce (a bob guest's binding).")
@click.option("--nonce", "nonce_text", metavar="HEX", help="The nonce the quote was asked for (with --ssh-hostkey).")
@click.option("--at", "at_text", metavar="TIME", help="Check validity at this time (ISO 8601 or @unix); default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def quote_cmd(file: str, collateral: str | None, allow_status: tuple[str, ...], signatures_only: bool, allow_debug: bool,
              instance_name: str | None, instance_data: str | None, state_dir: Path | None, expect: str | None,
              ssh_hostkeys: tuple[str, ...], nonce_text: str | None, at_text: str | None, as_json: bool) -> None:  # fmt: skip
    """Parse a TDX quote (v4/v5) and check it: signatures, PCK chain, DEBUG; with --collateral also TCB status,
    QE identity and revocation; with --instance/--instance-data its MRCONFIGID; with --expect MRTD and RTMRs; with
    --ssh-hostkey and --nonce that REPORTDATA binds those host keys to that nonce.
    Without collateral the verdict says what was NOT checked and exits 1 unless --signatures-only."""
    from dataclasses import replace

    from sealbox.attest import AttestInputError, render, report

    if bool(ssh_hostkeys) != (nonce_text is not None):
        raise AttestInputError("--ssh-hostkey needs --nonce HEX (the nonce the quote was asked for)" if ssh_hostkeys
                               else "--nonce needs --ssh-hostkey KEY (the host keys the quote should bind)")
    opts = _options(at_text, collateral, allow_status, signatures_only, allow_debug)
    opts = replace(opts, instance=_instance(instance_name, instance_data, state_dir), expect=expect,
                   hostkeys=_hostkeys(ssh_hostkeys, nonce_text) if ssh_hostkeys else None)
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


@attest.command("hostkey")
@click.argument("source")
@_quote_options
@click.option("--ssh-hostkey", "ssh_hostkeys", multiple=True, metavar="'TYPE BASE64'",
              help="Also check this key (e.g. the one your ssh client is offered) is one the quote binds (repeatable).")
@click.option("--nonce", "nonce_text", metavar="HEX",
              help="The nonce the answer must be for: required for a saved answer; for a URL, sealbox makes a fresh one.")
@click.option("--expect", metavar="MEASUREMENTS_JSON", help="Check MRTD and RTMR0-3 against a sealbox prediction.")
@click.option("--at", "at_text", metavar="TIME", help="Check validity at this time (ISO 8601 or @unix); default now.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def hostkey_cmd(source: str, collateral: str | None, allow_status: tuple[str, ...], signatures_only: bool,
                allow_debug: bool, ssh_hostkeys: tuple[str, ...], nonce_text: str | None, expect: str | None,
                at_text: str | None, as_json: bool) -> None:  # fmt: skip
    """Attested first contact with a bob guest: SOURCE is its attestation endpoint (http://ADDRESS:PORT, asked with a
    fresh nonce) or an answer saved from it. Verifies the answer's quote as `attest quote` does, then that it answers
    the nonce and that its REPORTDATA binds the listed SSH host keys to it; prints those keys. A guest that is not a
    TDX TD has no quote: that is an error (exit 1), never a pass."""
    from dataclasses import replace

    from sealbox.attest import render, report

    given, nonce = _hostkeys(ssh_hostkeys, nonce_text)
    opts = replace(_options(at_text, collateral, allow_status, signatures_only, allow_debug), expect=expect)
    rep, keys = report.hostkey_report(source, nonce, given, opts)
    if as_json:
        doc = render.quote_json(rep)
        doc["ssh_host_keys"] = [k.line for k in keys]
        _emit(doc)
    else:
        lines = render.quote_text(rep)
        _emit([*lines[:-1], *(f"  bound host key: {k.line} ({k.fingerprint})" for k in keys), lines[-1]])
    if rep.failures:
        raise AttestError(f"answer {source} did not verify: {'; '.join(rep.failures)}")
    if not rep.ok:
        raise AttestError(f"answer {source}: {rep.refusal()}")
