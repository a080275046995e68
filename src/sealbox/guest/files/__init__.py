"""The guest's scripts and units, as installed into every image (see guest.protocol for placeholders)."""

from __future__ import annotations

from importlib import resources

from sealbox.guest.protocol import PLACEHOLDERS

UNITS = ("sealbox-early.service", "sealbox-instance.service", "sealbox-sshd-keys.service", "sealbox-ready.service",
         "sealbox-powerbutton.service", "sealbox-agent.service")
RESEED = "reseed"  # not a file: the program guest/reseed.py writes
SCRIPTS = {"early.sh": "early", "instance.sh": "instance", "sshd-keys.sh": "sshd-keys", "ready.sh": "ready",
           "powerbutton.sh": "powerbutton", "agent.sh": "agent", RESEED: "reseed"}
READY_AFTER = ("ssh.service", "nftables.service")  # sealbox-ready waits for these (its unit says After=)
READY_ORDER_DROPIN = "/usr/lib/systemd/system/sealbox-ready.service.d/sealbox-order.conf"
# Image paths that point at files the guest writes at run time into /run (the image stays read-only).
SYMLINKS = {"/etc/resolv.conf": "/run/sealbox/resolv.conf"}  # written by instance.sh from the instance data


def read(name: str) -> bytes:
    """A guest file's bytes with every @PLACEHOLDER@ replaced; an unknown placeholder is a bug."""
    if name == RESEED:
        from sealbox.guest.reseed import program

        return program()
    data = (resources.files(__name__) / name).read_bytes()
    for key, value in PLACEHOLDERS.items():
        data = data.replace(f"@{key}@".encode(), value.encode())
    if b"@SEALBOX_" in data:
        raise RuntimeError(f"guest file {name} has an unknown @SEALBOX_...@ placeholder")
    return data


def ready_order(enabled: list[str]) -> bytes | None:
    """A drop-in ordering sealbox-ready before every unit the spec enables (but its own dependencies): the
    host pins the host keys printed before the ready marker, so nothing of the spec may reach the console
    first. Units that are pulled in earlier than multi-user.target make a cycle; systemd then drops a job
    and the guest never gets ready, which fails the run instead of pinning a forged key."""
    units = sorted({u for u in enabled if u not in UNITS and u not in READY_AFTER})
    if not units:
        return None
    return ("# sealbox: the ready marker and the host keys come before anything the image's spec enables\n"
            f"[Unit]\nBefore={' '.join(units)}\n").encode()
