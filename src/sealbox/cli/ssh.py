"""`sealbox exec|ssh|ssh-config`: reach a running sandbox's guest with the system OpenSSH client."""

from __future__ import annotations

from pathlib import Path

import click

from sealbox.cli.sandbox import _state, state_opt


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("-u", "--user", default=None, help="Guest user (default: root).")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@state_opt
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, user: str | None, tty: bool, state_dir: Path | None, command: tuple[str, ...]) -> None:
    """Run COMMAND in the guest: output streamed, exit status propagated, stdin passed through.

    Usage: sealbox exec NAME [--user U] [-t] -- CMD [ARGS...]"""
    from sealbox.sandbox import control

    control.exec_command(_state(state_dir), name, list(command), user=user, tty=tty)  # does not return


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("-u", "--user", default=None, help="Guest user (default: root).")
@state_opt
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, user: str | None, state_dir: Path | None, ssh_args: tuple[str, ...]) -> None:
    """Open an interactive SSH session in the guest (extra arguments go to ssh, e.g. -L 8080:localhost:80)."""
    from sealbox.sandbox import control

    control.interactive(_state(state_dir), name, user=user, extra=list(ssh_args))


@click.command("ssh-config")
@click.argument("name")
@click.option("--alias", default=None, help="Host alias in the stanza (default: sealbox-NAME).")
@state_opt
def ssh_config(name: str, alias: str | None, state_dir: Path | None) -> None:
    """Print an ssh_config stanza so ssh, scp, rsync and -L forwards work unchanged."""
    from sealbox.sandbox import control
    from sealbox.sandbox.ssh import config_stanza

    click.echo(config_stanza(control.ssh_target(_state(state_dir), name), alias), nl=False)
