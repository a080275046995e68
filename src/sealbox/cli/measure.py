"""`sealbox measure TARGET`: digests, Authenticode and predicted TPM/TDX registers (thin CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("measure")
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--firmware", type=click.Path(path_type=Path), help="TDVF/OVMF image: also predict MRTD.")
@click.option("--memory", type=click.IntRange(min=1), default=1024, show_default=True, help="Guest memory (MiB), recorded.")
@click.option("--cpus", type=click.IntRange(min=1), default=1, show_default=True, help="Guest vCPUs, recorded.")
@click.option("--mrtd-order", type=click.Choice(["single-pass", "two-pass"]), default="single-pass",
              show_default=True, help="TDX page add/extend order of the VMM (two-pass: QEMU 8 TDX series).")
@click.option("--vars", "vars_path", type=click.Path(path_type=Path),
              help="OVMF VARS file the VM starts with: predict PCR 7 from its PK/KEK/db/dbx (disk images).")
@click.option("--secure-boot", is_flag=True, help="The firmware enforces Secure Boot (OVMF secboot build): PCR 4/7 accordingly.")
def measure(target: Path, as_json: bool, firmware: Path | None, memory: int, cpus: int, mrtd_order: str,
            vars_path: Path | None, secure_boot: bool) -> None:
    """Measure a PE file (e.g. a UKI) or a build directory (writes measurements.json)."""
    from sealbox.measure.measurements import measure as run

    if target.is_dir():
        doc = run(target, firmware=firmware, memory=memory, cpus=cpus, page_order=mrtd_order, vars_path=vars_path,
                  secure_boot=secure_boot)
    else:
        if firmware is not None or vars_path is not None or secure_boot:
            from sealbox.errors import UsageError

            raise UsageError("--firmware/--vars/--secure-boot need a build directory as TARGET", hint="pass the build directory")
        doc = run(target)
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    if "registers" not in doc:
        click.echo(f"{doc['file']}: {doc['format']}, {doc['size']} bytes{', signed' if doc['signed'] else ''}")
        for alg, value in doc["authenticode"].items():
            click.echo(f"  authenticode {alg}: {value}")
        for name, facts in doc["sections"].items():
            click.echo(f"  section {name:<9} {facts['virtual_size']:>10} bytes  sha256 {facts['sha256']}")
        return
    click.echo(f"{target / 'measurements.json'} written for image {doc['name']}")
    click.echo(f"  UKI authenticode sha256: {doc['uki']['authenticode']['sha256']}")
    for name, reg in doc["registers"].items():
        click.echo(f"  {name:<6} {reg['expected']}  ({len(reg['events'])} events)")
        # why a register is empty or what it assumes: a bare row of zeros reads like a bug
        for note in reg.get("notes", []):
            click.echo(f"         note: {note}")
