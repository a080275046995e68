"""`sealbox exec|ssh|ssh-config`: reach a running sandbox's guest with the system OpenSSH client (through the SDK:
the command line is built by the same code as sb.commands.run's)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealbox.cli.sandbox import fleet_address, sandbox_handle, state_opt

if TYPE_CHECKING:
    from sealbox.sdk.sandbox import Sandbox


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("-u", "--user", default=None, help="Guest user (default: root).")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", "env", multiple=True, metavar="KEY=VALUE", help="Set an environment variable for COMMAND (repeatable).")
@click.option("-w", "--workdir", default=None, metavar="DIR", help="Run COMMAND in this guest directory.")
@state_opt
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, user: str | None, tty: bool, env: tuple[str, ...], workdir: str | None, state_dir: Path | None,
          command: tuple[str, ...]) -> None:
    """Run COMMAND in the guest: output streamed, exit status propagated, stdin passed through.

    Usage: sealbox exec NAME [--user U] [-t] [-e K=V] [-w DIR] -- CMD [ARGS...]"""
    environ = {}
    for item in env:
        key, eq, value = item.partition("=")
        if not eq:
            raise click.UsageError(f"--env {item!r} is not KEY=VALUE")
        environ[key] = value
    if fleet_address() is not None:
        from sealbox.cli import fleetopt

        if tty:
            fleetopt.refuse("-t/--tty", "a terminal needs an ssh session: run 'sealbox exec -t' on the sandbox's host")
        raise SystemExit(_exec_piped(sandbox_handle(name, state_dir), list(command), environ, workdir, user))
    sandbox_handle(name, state_dir).commands.exec(list(command), env=environ, cwd=workdir, user=user, tty=tty)  # does not return


class _Stdout:
    """The command's stdout bytes, written through to ours as they come."""

    def write(self, data: bytes, /) -> int:
        n = sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return n


def _stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


def _exec_piped(sb: Sandbox, argv: list[str], env: dict[str, str], cwd: str | None, user: str | None) -> int:
    """exec where the process cannot be replaced by ssh (a fleet sandbox: its host's agent runs the command):
    the same streams through sb.commands.run, stdin passed through, its exit status ours (128+N for signal N)."""
    stdin = sys.stdin.buffer if sys.stdin is not None else None
    res = sb.commands.run_background(argv, env=env, cwd=cwd, user=user, stdin=stdin, stdout_sink=_Stdout(),
                                     on_stderr=_stderr, max_output=64 * 1024).wait()
    return res.exit_code if res.exit_code >= 0 else 128 - res.exit_code


# ssh(1) options that take an argument (from its synopsis): their value is never the start of the command
SSH_OPTS_WITH_ARG = frozenset("BbcDEeFIiJLlmOoPpQRSWw")


def split_own_options(args: list[str]) -> tuple[str | None, Path | None, list[str]]:
    """Take sealbox's own -u/--user and --state-dir out of the options that lead `args`; the rest goes to ssh.

    As ssh does, options end at the first word that is not one (or at `--`): everything from there on is the
    remote command, passed through unchanged, so `sealbox ssh NAME ps -u root` runs `ps -u root`."""
    user: str | None = None
    state_dir: Path | None = None
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break
        key, eq, value = arg.partition("=")
        if key in ("-u", "--user", "--state-dir"):
            if not eq:
                if i + 1 >= len(args):
                    raise click.UsageError(f"option {key} requires an argument")
                value, i = args[i + 1], i + 1
            if key == "--state-dir":
                state_dir = Path(value)
            else:
                user = value
            i += 1
            continue
        out.append(arg)
        if not arg.startswith("--") and arg[-1] in SSH_OPTS_WITH_ARG and i + 1 < len(args):
            out.append(args[i + 1])  # e.g. -L 8080:localhost:80, -o Key=value
            i += 1
        i += 1
    return user, state_dir, out + args[i:]


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.option("-u", "--user", default=None, help="Guest user (default: root).")
@state_opt
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
def ssh(name: str, user: str | None, state_dir: Path | None, ssh_args: tuple[str, ...]) -> None:
    """Open an SSH session in the guest, or run a command as ssh does.

    Usage: sealbox ssh [-u USER] NAME [SSH-OPTIONS] [COMMAND...]  (e.g. -L 8080:localhost:80, or uname -a)"""
    own_user, own_state, extra = split_own_options(list(ssh_args))
    sandbox_handle(name, own_state or state_dir).ssh(user=own_user or user, extra=extra)


@click.command("ssh-config")
@click.argument("name")
@click.option("--alias", default=None, help="Host alias in the stanza (default: sealbox-NAME).")
@state_opt
def ssh_config(name: str, alias: str | None, state_dir: Path | None) -> None:
    """Print an ssh_config stanza so ssh, scp, rsync and -L forwards work unchanged."""
    click.echo(sandbox_handle(name, state_dir).ssh_config(alias), nl=False)
