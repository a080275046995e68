"""Fleet mode: the SDK's sandboxes over many hosts, placed and reached through Ray (docs/fleet.md).

    rayenv.py   the Ray settings sealbox always uses (no usage statistics, no dashboard), nodes by pid
    records.py  each sandbox's record in Ray's key-value store (which host, its reservation, its state)
    cluster.py  hosts, agents, callers' jobs and placement groups as Ray sees them
    agent.py    the host agent: a Ray actor per host owning its sandboxes through the local manager
    localproc.py  the agent's local manager, its creates (and doctor) in a child process (the runtime forks)
    execs.py    a command's pipes on the agent's side; channel.py the caller's side
    wire.py     what agents and fleet members report, parsed as hostile input
    client.py   Fleet: the SDK's Host for the whole fleet (placement, lookup, routing)
    join.py     `sealbox fleet head|join`; status.py `sealbox fleet status`
    raybackend.py  Ray's experimental BaseSandboxBackend over a Fleet (imports Ray when imported)

Layering: fleet sits above sdk and below cli; nothing below it imports Ray, and Ray is imported only when a
fleet is used (the optional extra `sealbox[fleet]`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealbox.fleet.client import Fleet

__all__ = ["Fleet"]


def __getattr__(name: str) -> Any:
    if name == "Fleet":
        from sealbox.fleet.client import Fleet

        return Fleet
    raise AttributeError(f"module 'sealbox.fleet' has no attribute {name!r}")
