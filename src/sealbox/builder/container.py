"""The image tree of a container image (output.formats = ["oci"]): what it shares with a VM's, and what not.

A VM image boots its own kernel and systemd, and sealbox's guest protocol (guest/files: read-only root and RAM
copies, instance data, SSH host keys and the ready marker on the console, the power button) does at boot what a
container runtime does when it starts a container: mounts, hostname, network, DNS, the command to run. So a
container's tree gets, in the configure step:
- the spec's users, the locked accounts and files[], exactly as a VM's;
- no guest protocol (its units, scripts and /init), no kernel modules, no unit configuration (default target,
  enable/mask): the runtime starts the [oci] entrypoint/cmd as PID 1, not systemd;
- no /etc/resolv.conf (the bootstrap leaves the build host's there; the runtime mounts the container's own),
  /etc/hostname and /etc/hosts as a VM's (the runtime mounts its own over them), /etc/machine-id empty if present;
- nothing below /dev: the runtime mounts its own /dev, and a device node in a layer fails to unpack in rootless
  podman.
The strip step and the ELF link check then run as for a VM: the same groups (docs, locales, package manager ...
each switchable in [strip]) and the same always-removed list (SSH host keys, random seeds, logs, caches, apt
lists), so a container image carries nothing secret or per-instance either.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sealbox.builder.configure import HOSTS, copy_files, create_users, lock_accounts
from sealbox.builder.intree import Tree
from sealbox.spec.load import LoadedSpec


def empty_dev(tree: Path) -> None:
    """Remove everything below the image's /dev (a real directory of the tree; a link there is left alone)."""
    dev = tree / "dev"
    if not dev.is_dir() or dev.is_symlink():
        return
    for child in sorted(dev.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def configure_container(tree: Path, loaded: LoadedSpec, epoch: int) -> None:
    spec = loaded.spec
    with Tree(tree) as t:
        t.remove("/etc/resolv.conf")
        t.write_bytes("/etc/hostname", b"localhost\n", 0o644)
        t.write_bytes("/etc/hosts", HOSTS, 0o644)
        if t.resolve("/etc/machine-id") is not None:
            t.rewrite("/etc/machine-id", b"")
    empty_dev(tree)
    create_users(tree, spec, epoch)
    lock_accounts(tree, spec, epoch)
    copy_files(tree, loaded)
