"""The guest's scripts and units, as installed into every image (see guest.protocol for placeholders)."""

from __future__ import annotations

from importlib import resources

from sealbox.guest.protocol import PLACEHOLDERS

UNITS = ("sealbox-early.service", "sealbox-instance.service", "sealbox-sshd-keys.service", "sealbox-ready.service")
SCRIPTS = {"early.sh": "early", "instance.sh": "instance", "sshd-keys.sh": "sshd-keys", "ready.sh": "ready"}
# Image paths that point at files the guest writes at run time into /run (the image stays read-only).
SYMLINKS = {"/etc/resolv.conf": "/run/sealbox/resolv.conf"}  # written by instance.sh from the instance data


def read(name: str) -> bytes:
    """A guest file's bytes with every @PLACEHOLDER@ replaced; an unknown placeholder is a bug."""
    data = (resources.files(__name__) / name).read_bytes()
    for key, value in PLACEHOLDERS.items():
        data = data.replace(f"@{key}@".encode(), value.encode())
    if b"@SEALBOX_" in data:
        raise RuntimeError(f"guest file {name} has an unknown @SEALBOX_...@ placeholder")
    return data
