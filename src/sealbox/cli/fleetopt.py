"""`sealbox --fleet HEAD_IP:PORT VERB ...` (or $SEALBOX_FLEET): the sandbox verbs on a fleet instead of this host.

The verbs stay the same commands: each asks cli/sandbox.target_host() for its Host, which is a sealbox.Fleet when
the option is set (the SDK's own Host for a fleet: the same calls a Python program makes) and this machine's
LocalHost otherwise. Ray is imported only then. A sandbox verb the fleet cannot do is refused here, in one line, before
anything runs; the option given on the command line to a verb that has nothing to do with sandboxes is
refused too, while $SEALBOX_FLEET is simply not used by such verbs (build, measure, ...).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from sealbox.cli.sandbox import FLEET_META as META
from sealbox.errors import UsageError

if TYPE_CHECKING:
    from sealbox.fleet.client import Fleet

ON_FLEET = ("run", "ps", "exec", "rm", "inspect", "logs", "stop")
# sandbox verbs that need the sandbox's own host, and what to do instead
NOT_ON_FLEET = {
    "ssh": "use 'sealbox --fleet ADDRESS exec NAME -- CMD', or 'sealbox ssh' on the sandbox's host",
    "ssh-config": "run it on the sandbox's host ('sealbox --fleet ADDRESS ps' shows which)",
    "rdp": "run it on the sandbox's host ('sealbox --fleet ADDRESS ps' shows which)",
    "snapshot": "run it on the sandbox's host ('sealbox --fleet ADDRESS ps' shows which)",
    "pause": "run it on the sandbox's host ('sealbox --fleet ADDRESS ps' shows which)",
    "resume": "run it on the sandbox's host ('sealbox --fleet ADDRESS ps' shows which)",
    "gc": "each host's agent runs gc when it starts; run 'sealbox gc' on the host itself",
}


def source(ctx: click.Context) -> str:
    from click.core import ParameterSource

    return "$SEALBOX_FLEET" if ctx.get_parameter_source("fleet") == ParameterSource.ENVIRONMENT else "--fleet"


def select(ctx: click.Context, address: str | None) -> None:
    """Called by the `sealbox` group: check the address and the verb, remember the address for the verb."""
    verb = ctx.invoked_subcommand
    if not address or verb is None:
        return
    given = source(ctx)
    if verb in NOT_ON_FLEET:
        raise UsageError(f"sealbox {verb} does not work with {given}: it needs the sandbox's own host",
                         hint=NOT_ON_FLEET[verb])
    if verb not in ON_FLEET and verb != "fleet":
        if given == "$SEALBOX_FLEET":
            return  # not a sandbox verb: the fleet does not concern it
        raise UsageError(f"--fleet does not apply to sealbox {verb}", hint=f"--fleet works with {', '.join(ON_FLEET)} and fleet status")
    from sealbox.fleet.rayenv import check_address

    check_address(address, given)
    ctx.meta[META] = address


def refuse(flag: str, why: str) -> None:
    """A one-line error for a verb's flag that has no meaning on a fleet."""
    raise UsageError(f"{flag} does not work with --fleet: {why}")


def fleet(addr: str) -> Fleet:
    from sealbox.fleet.client import Fleet

    return Fleet(addr)
