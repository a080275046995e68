"""`sealbox fleet head|join|status`: run a fleet's Ray head, join this host to a fleet, show the fleet.

Fleet mode needs Ray (the extra `sealbox[fleet]`); it is imported only by these commands. Ray is always
started without usage statistics and without a dashboard, and stopped by process id (sealbox.fleet.rayenv)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click


def _temp_dir(given: Path | None, role: str) -> Path:
    """Ray's session files and sockets (short: unix socket paths are limited to 107 bytes)."""
    return given or Path(os.environ.get("TMPDIR", "/tmp")) / f"sealbox-ray-{role}"  # noqa: S108 - only the default


node_ip_opt = click.option("--node-ip", required=True, metavar="IP", help="This node's address on the fleet's private network.")
temp_opt = click.option("--temp-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="Ray's session directory for this node [default: $TMPDIR/sealbox-ray-ROLE].")


@click.group()
def fleet() -> None:
    """Fleet mode: sandboxes over many hosts, placed by Ray (needs the extra sealbox[fleet])."""


@fleet.command()
@node_ip_opt
@click.option("--port", type=click.IntRange(1, 65535), default=6380, show_default=True, help="The head's GCS port.")
@temp_opt
def head(node_ip: str, port: int, temp_dir: Path | None) -> None:
    """Run the fleet's Ray head node here, in the foreground, until SIGTERM or Ctrl-C (then stopped by its pid).
    It offers no sandbox capacity: hosts join it with `sealbox fleet join`."""
    from sealbox.fleet import join

    ready = lambda: click.echo(f"sealbox: fleet head running at {node_ip}:{port}", err=True)
    raise SystemExit(join.head(node_ip=node_ip, port=port, temp_dir=_temp_dir(temp_dir, "head"), on_ready=ready))


@fleet.command("join")
@click.argument("address", metavar="HEAD_IP:PORT")
@node_ip_opt
@click.option("--cpus", type=click.IntRange(1, 4096), default=None, help="vCPUs offered to sandboxes [default: all CPUs].")
@click.option("--memory", "memory_mib", type=click.IntRange(64), default=None, help="MiB offered to sandboxes [default: 80% of RAM].")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label callers can require (repeatable). kvm and tdx are what doctor finds: they may be lowered (=false), not raised.")
@click.option("--name", default=None, help="The host's name in the fleet [default: the hostname].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory of this host's sandboxes (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")
@temp_opt
def join_(address: str, node_ip: str, cpus: int | None, memory_mib: int | None, labels: tuple[str, ...], name: str | None,
          state_dir: Path | None, temp_dir: Path | None) -> None:
    """Join this host to the fleet at ADDRESS: a Ray node offering its sandbox capacity, and the host agent that
    owns its sandboxes (doctor and gc at its start). In the foreground until SIGTERM or Ctrl-C: the host then
    leaves (its Ray node stopped by pid), its sandboxes stay, and the fleet lists them as lost."""
    from sealbox.fleet import join
    from sealbox.fleet.join import parse_labels

    if state_dir is not None:
        os.environ["SEALBOX_STATE_DIR"] = str(state_dir)  # for the agent, a Ray worker of this node
    ready = lambda: click.echo(f"sealbox: joined the fleet at {address}", err=True)
    raise SystemExit(join.join(address, node_ip=node_ip, temp_dir=_temp_dir(temp_dir, "host"), cpus=cpus, memory_mib=memory_mib,
                               labels=parse_labels(labels), name=name, state_dir=state_dir, on_ready=ready))


@fleet.command()
@click.option("--address", default=None, metavar="HEAD_IP:PORT",
              help="The fleet [default: sealbox --fleet's, else the Ray node on this machine].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(address: str | None, as_json: bool) -> None:
    """Every host of the fleet: capacity, what is reserved, its sandboxes, labels, its agent; and lost sandboxes."""
    from sealbox.cli.sandbox import fleet_address
    from sealbox.fleet.client import Fleet
    from sealbox.fleet.status import table

    st = Fleet(address or fleet_address()).status()
    click.echo(json.dumps(st, indent=2, sort_keys=True) if as_json else table(st))
