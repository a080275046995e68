"""`sealbox sign IMAGE_DIR --key K --cert C`: sign the UKI and rewrite the disk images that carry it."""

from __future__ import annotations

from pathlib import Path

import click

from sealbox.cli.common import emit_json


@click.command()
@click.argument("image_dir", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path), help="PEM private key of the Secure Boot db certificate.")
@click.option("--cert", required=True, type=click.Path(path_type=Path), help="The db certificate (PEM or DER).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="Where temporary files go [/var/tmp].")
@click.option("--json", "json_mode", is_flag=True, help="Machine-readable summary on stdout.")
def sign(image_dir: Path, key: Path, cert: Path, work_dir: Path | None, json_mode: bool) -> None:
    """Sign IMAGE_DIR's UKI for Secure Boot (sbsign) and rewrite its disk images around it, in place.

    Sign the output of a reproducible build once; the key is used by sbsign only and recorded nowhere.
    """
    from sealbox.builder.sign import sign_image

    result = sign_image(image_dir, key, cert, work_dir)
    if json_mode:
        emit_json(result)
        return
    click.echo(f"signed {', '.join(result['signed'])} in {result['image']}")
    click.echo(f"  certificate sha256:{result['certificate']['sha256']} ({result['certificate']['subject']})")
    click.echo(f"  UKI Authenticode sha256:{result['uki_authenticode_sha256']} (unchanged by signing)")
