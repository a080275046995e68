"""`sealbox snapshot NAME`: save a running sandbox (QEMU microvm or Firecracker) for `run --from-snapshot` (thin)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("name")
@click.option("--dest", type=click.Path(path_type=Path), default=None,
              help="New directory for the snapshot (default: <state-dir>/snapshots/NAME-<UTC time>).")
@click.option("--leave-paused", is_flag=True,
              help="Do not resume the sandbox afterwards (QEMU: it stays paused until stop/rm; for a template about to go).")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="State directory (default: $SEALBOX_STATE_DIR or /var/lib/sealbox).")
def snapshot(name: str, dest: Path | None, leave_paused: bool, state_dir: Path | None) -> None:
    """Save a running sandbox's memory and device state (restore with 'sealbox run IMAGE --from-snapshot DIR').

    The snapshot holds the guest's whole memory, secrets included: it is written root-only (0700/0600)."""
    from sealbox.sandbox import snapshot as snap
    from sealbox.sandbox.control import check_access
    from sealbox.sandbox.state import StateDir, state_root

    root = state_root(state_dir)
    check_access(root, click.get_current_context().command_path)
    taken = snap.take(StateDir(root), name, dest, resume=not leave_paused)
    took = f" in {taken.save_s:.2f}s" if taken.save_s is not None else ""
    click.echo(f"snapshot of {name} written to {taken.path} ({taken.size / 2**20:.1f} MiB{took})")
    if taken.warning:
        click.echo(f"note: {taken.warning}", err=True)
