"""`sealbox disk create|inspect`: persistent data disks for `sealbox run --disk FILE:rw`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import click

from sealbox.cli.common import emit_json


@click.group()
def disk() -> None:
    """Persistent data disks (attach with `sealbox run --disk FILE:rw`)."""


def _human(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _show(r: dict[str, Any]) -> None:
    click.echo(f"{r['file']}: {r['format']}, {_human(r['virtual_size'])} virtual, {_human(r['host_bytes'])} on the host")
    if r["blank"]:
        click.echo("  blank (no data written)")
    else:
        c = r["content"]
        what = ", ".join(f"{k}={v}" for k, v in c.items()) if c else "no known partition table or filesystem in its first MiB"
        click.echo(f"  holds {_human(r['data_bytes'])} of data: {what}")


@disk.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--size", required=True, help="Virtual size, e.g. 2048G, 10GiB, 512M (binary units).")
@click.option("--format", "fmt", type=click.Choice(["qcow2", "raw"]), default="qcow2", show_default=True)
@click.option("--json", "json_mode", is_flag=True)
def create(file: Path, size: str, fmt: Literal["qcow2", "raw"], json_mode: bool) -> None:
    """Create a sparse, blank data disk FILE (never overwrites an existing file)."""
    from sealbox.sandbox import datadisk

    r = datadisk.create(file, datadisk.parse_size(size), fmt)  # fmt: click.Choice above
    emit_json(r) if json_mode else _show(r)


@disk.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "json_mode", is_flag=True)
def inspect(file: Path, json_mode: bool) -> None:
    """Show a data disk's format, sizes and what it holds."""
    from sealbox.sandbox import datadisk

    r = datadisk.inspect(file)
    emit_json(r) if json_mode else _show(r)
