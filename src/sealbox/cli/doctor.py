"""`sealbox doctor [--json]`: check the host's prerequisites; exit 1 if any check fails."""

from __future__ import annotations

import json

import click

from sealbox.doctor import exit_code, run_checks
from sealbox.sandbox.state import state_root

MARKS = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--state-dir", type=click.Path(), default=None, help="State directory (default /var/lib/sealbox or SEALBOX_STATE_DIR).")
@click.option("--refresh", is_flag=True, help="Re-run the KVM probe instead of using this boot's cached result.")
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, state_dir: str | None, refresh: bool) -> None:
    """Check host prerequisites (KVM, cgroups, TAP, tools, jail, firmware, TDX, Firecracker)."""
    checks = run_checks(state_root(state_dir), refresh_kvm=refresh)
    code = exit_code(checks)
    if as_json:
        click.echo(json.dumps({"ok": code == 0, "checks": [c.model_dump() for c in checks]}, indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{MARKS[c.status]}  {c.name:<{width}}  {c.detail}")
            if c.fix and c.status in ("warn", "fail"):
                click.echo(f"{'':4}  {'':<{width}}  fix: {c.fix}")
    ctx.exit(code)
