"""`sealbox pause|resume NAME`: Firecracker-only verbs (thin: argument -> backend call); `snapshot` is in cli/snapshot.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from sealbox.sandbox.state import StateDir, state_root

if TYPE_CHECKING:  # imported when a verb runs, not at CLI start-up
    from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend

_state_opt = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                          help="State directory (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")


def _state(state_dir: Path | None) -> StateDir:
    from sealbox.sandbox.control import check_access

    root = state_root(state_dir)
    check_access(root, click.get_current_context().command_path)
    return StateDir(root)


def _backend() -> FirecrackerBackend:
    from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend

    return FirecrackerBackend()


@click.command()
@click.argument("name")
@_state_opt
def pause(name: str, state_dir: Path | None) -> None:
    """Pause a Firecracker sandbox's vCPUs (PATCH /vm Paused)."""
    sd = _state(state_dir)
    with sd.lock(name):
        _backend().pause(sd.load(name))
    click.echo(f"paused {name}")


@click.command()
@click.argument("name")
@_state_opt
def resume(name: str, state_dir: Path | None) -> None:
    """Resume a paused Firecracker sandbox (PATCH /vm Resumed)."""
    sd = _state(state_dir)
    with sd.lock(name):
        _backend().resume(sd.load(name))
    click.echo(f"resumed {name}")

