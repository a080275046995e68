"""The `sealbox` command: a thin, lazily loaded click group.

Commands live in small modules under sealbox.cli and are imported only when invoked, so `sealbox ps`
does not pay for importing the builder or the attestation code. All user-facing failures are
SealboxError; this is the single place that turns them into one line on stderr and an exit code.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from sealbox import __version__
from sealbox.errors import SealboxError

# command name -> "module:attribute"; each module owns one concern.
COMMANDS: dict[str, str] = {
    "build": "sealbox.cli.build:build",
    "verify-reproducible": "sealbox.cli.build:verify_reproducible",
    "summary": "sealbox.cli.build:summary",
    "settings": "sealbox.cli.build:settings",
    "pause": "sealbox.cli.firecracker:pause",
    "resume": "sealbox.cli.firecracker:resume",
    "snapshot": "sealbox.cli.snapshot:snapshot",
    "_proxy": "sealbox.cli.proxy:proxy_cmd",
    "doctor": "sealbox.cli.doctor:doctor",
    "measure": "sealbox.cli.measure:measure",
    "sign": "sealbox.cli.sign:sign",
    "disk": "sealbox.cli.disk:disk",
    "attest": "sealbox.cli.attest:attest",
    "run": "sealbox.cli.sandbox:run",
    "ps": "sealbox.cli.sandbox:ps",
    "inspect": "sealbox.cli.sandbox:inspect",
    "logs": "sealbox.cli.sandbox:logs",
    "stop": "sealbox.cli.sandbox:stop",
    "rm": "sealbox.cli.sandbox:rm",
    "gc": "sealbox.cli.sandbox:gc",
    "exec": "sealbox.cli.ssh:exec_",
    "ssh": "sealbox.cli.ssh:ssh",
    "ssh-config": "sealbox.cli.ssh:ssh_config",
    "rdp": "sealbox.cli.rdp:rdp",
    "fleet": "sealbox.cli.fleet:fleet",
}

# command name -> the first paragraph of its help, for `sealbox --help` without importing every command module
# (click would import each to read its docstring: ~200 ms). A unit test holds these to the commands' own text;
# a command missing here is imported as click would.
SUMMARIES: dict[str, str] = {
    "attest": "Verify TDX quotes and CC event logs offline (exit 0 verified, 1 failed or not all checked, 2 bad input).",
    "build": "Build an image from SPEC (default: the built-in default image).",
    "disk": "Persistent data disks (attach with `sealbox run --disk FILE:rw`).",
    "doctor": "Check host prerequisites (KVM, cgroups, TAP, tools, jail, firmware, TDX, Firecracker).",
    "exec": "Run COMMAND in the guest: output streamed, exit status propagated, stdin passed through.",
    "fleet": "Fleet mode: sandboxes over many hosts, placed by Ray (needs the extra sealbox[fleet]).",
    "gc": "Remove dead or half-created sandboxes and sealbox host objects no sandbox owns.",
    "inspect": "Show a sandbox's record, host steps, pids and the VMM's own view (JSON).",
    "logs": "Print a sandbox's serial console log: on a terminal every control character is shown escaped, colours kept unless "
            "NO_COLOR; raw bytes with --raw or into a pipe.",
    "measure": "Measure a PE file (e.g. a UKI) or a build directory (writes measurements.json).",
    "pause": "Pause a Firecracker sandbox's vCPUs (PATCH /vm Paused).",
    "ps": "List sandboxes (status checked against the live VMM processes).",
    "rdp": "Open an SSH tunnel from 127.0.0.1:PORT to the RDP server of sandbox NAME (gui module) and print how to connect: "
           "address, user, password and the certificate fingerprint to expect. Ctrl-C closes it.",
    "resume": "Resume a paused Firecracker sandbox (PATCH /vm Resumed).",
    "rm": "Remove sandboxes: undo every host step of their records and delete their state.",
    "run": "Start a sandbox from IMAGE_DIR and return once its guest is ready.",
    "settings": "List every spec setting: key, type, default, merge rule, description.",
    "sign": "Sign IMAGE_DIR's UKI for Secure Boot (sbsign) and rewrite its disk images around it, in place.",
    "snapshot": "Save a running sandbox's memory and device state (restore with 'sealbox run IMAGE --from-snapshot DIR').",
    "ssh": "Open an SSH session in the guest, or run a command as ssh does.",
    "ssh-config": "Print an ssh_config stanza so ssh, scp, rsync and -L forwards work unchanged.",
    "stop": "Shut a sandbox's guest down (graceful, then killed after --timeout).",
    "summary": "Print the fully merged spec (includes and profiles applied) as JSON.",
    "verify-reproducible": "Build SPEC twice under varied conditions and compare every artifact bit for bit.",
}
HIDDEN = frozenset({"_proxy"})  # not listed by --help (hidden=True on the command)
# verbs that never log: the root logger is set up for them only when asked for (-v, or any other group option),
# as importing logging is ~3 ms of the ~15 ms `ps` adds to click's start (tests/unit/cli/test_startup_imports.py
# holds `ps` to loading no logging at all)
NO_LOGGING = frozenset({"ps"})


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """click.Group's command list, from SUMMARIES: the same text, shortened by click's own rule."""
        names = [n for n in self.list_commands(ctx) if n not in HIDDEN]
        if not names:
            return
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in SUMMARIES:
                rows.append((name, click.Command(name, help=SUMMARIES[name]).get_short_help_str(limit)))
            elif (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sealbox")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("--fleet", metavar="HEAD_IP:PORT", envvar="SEALBOX_FLEET", default=None,
              help="run, ps, exec, rm, inspect, logs, stop on this fleet's sandboxes (sealbox.Fleet) instead of this host's.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, fleet: str | None) -> None:
    """Build, measure, run and attest minimal reproducible Linux microVM images."""
    if ctx.invoked_subcommand in NO_LOGGING and not any(ctx.params.values()):
        return
    import logging

    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if fleet:
        from sealbox.cli import fleetopt

        fleetopt.select(ctx, fleet)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI, turning every error into one line and an exit code."""
    debug = os.environ.get("SEALBOX_DEBUG") == "1"
    try:
        # not cli.main(): on Ctrl-C it prints an empty line before re-raising, so the error would not be one line
        with cli.make_context("sealbox", list(sys.argv[1:] if argv is None else argv)) as ctx:
            rv = cli.invoke(ctx)
    except SealboxError as e:
        if debug:
            raise
        click.echo(f"sealbox: error: {e}", err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("sealbox: aborted", err=True)
        return 130
    except click.exceptions.NoArgsIsHelpError as e:  # bare `sealbox` (or a bare group): the help, as written
        click.echo(e.ctx.get_help() if e.ctx else "see 'sealbox --help'", err=True)
        return e.exit_code
    except click.UsageError as e:
        # one line, like every other error: what is wrong, and where to look
        cmd = e.ctx.command_path if e.ctx else "sealbox"
        click.echo(f"sealbox: error: {' '.join(e.format_message().split())} (see '{cmd} --help')", err=True)
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"sealbox: error: {' '.join(e.format_message().split())}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except (KeyboardInterrupt, EOFError):
        click.echo("sealbox: aborted", err=True)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # noqa: BLE001 - the last line of defence: never show a traceback
        if debug:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        click.echo(f"sealbox: internal error: {type(e).__name__}: {msg} (rerun with SEALBOX_DEBUG=1 for details)", err=True)
        return 70
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
