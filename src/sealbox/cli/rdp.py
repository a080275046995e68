"""`sealbox rdp NAME`: an SSH tunnel to a gui sandbox's desktop, and how to connect to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealbox.cli.sandbox import local_host, state_opt

if TYPE_CHECKING:
    from sealbox.sandbox.rdp import RdpInfo


@click.command()
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on the host's loopback [3389, or a free one if that is taken].")
@click.option("--user", default=None, help="Desktop user (default: the one the image gives a password).")
@click.option("--json", "as_json", is_flag=True, help="Print the connection facts as one JSON line.")
@state_opt
def rdp(name: str, port: int | None, user: str | None, as_json: bool, state_dir: Path | None) -> None:
    """Open an SSH tunnel from 127.0.0.1:PORT to the RDP server of sandbox NAME (gui module) and print how to
    connect: address, user, password and the certificate fingerprint to expect. Ctrl-C closes it."""
    from sealbox.sandbox.rdp import Closed, Tunnel

    with Tunnel(local_host(state_dir).state, name, port=port, user=user) as tunnel:
        try:  # from here Ctrl-C closes the tunnel, even one pressed while the facts are still being printed
            _print_facts(tunnel.info, as_json)
            status = tunnel.wait()
        except (KeyboardInterrupt, Closed):
            click.echo(f"sealbox: RDP tunnel to {name} closed", err=True)
            return
    raise click.ClickException(f"the SSH tunnel to {name} ended (ssh exit {status}); is the sandbox still running?")


def _print_facts(info: RdpInfo, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), sort_keys=True))
        return
    click.echo(f"RDP to sandbox {info.name}: connect to {info.address} (an SSH tunnel to its desktop; Ctrl-C closes it)")
    click.echo(f"  address      {info.address}")
    click.echo(f"  user         {info.user}")
    click.echo(f"  password     {info.password}")
    click.echo(f"  certificate  SHA-256 {info.fingerprint}")
    click.echo(f"  e.g.         {info.client_example()} /p:PASSWORD")
