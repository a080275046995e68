"""`sealbox pause|resume|snapshot NAME`: Firecracker-only verbs (thin: argument -> backend call)."""

from __future__ import annotations

import time
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


@click.command()
@click.argument("name")
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="New directory for the snapshot (default: <state-dir>/snapshots/NAME-<UTC time>).")
@click.option("--leave-paused", is_flag=True, help="Do not resume the sandbox afterwards (safest if the snapshot will be restored).")
@_state_opt
def snapshot(name: str, dest: Path | None, leave_paused: bool, state_dir: Path | None) -> None:
    """Take a full snapshot of a running Firecracker sandbox (restore with 'sealbox run --from-snapshot DIR')."""
    sd = _state(state_dir)
    root = sd.root
    target = dest or root / "snapshots" / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    with sd.lock(name):
        manifest = _backend().snapshot(sd.load(name), target, resume=not leave_paused)
    size = sum(f.size for f in [manifest.vmstate, manifest.memory, *manifest.drives])
    click.echo(f"snapshot of {name} written to {target} ({size / 2**20:.1f} MiB)")
    click.echo(f"note: {manifest.warning}", err=True)
