"""The guest's scripts and units, as installed into every image (see guest.protocol for placeholders)."""

from __future__ import annotations

from collections.abc import Sequence
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


# Guest features a spec switches on (persistent.enable, cloud.providers): sealbox's own units, installed and enabled by
# the build only then, and ordered before sealbox-ready like the units above (never after it, as a spec's units are).
PERSISTENT_UNITS = ("sealbox-persistent.service",)
PERSISTENT_SCRIPTS = {"persistent.sh": "persistent", "diskid.sh": "diskid"}
PERSISTENT_MOUNT = "/persistent"
CLOUD_UNITS = ("sealbox-dhcp.service", "sealbox-cloud.service")
CLOUD_SCRIPTS = {"cloud.sh": "cloud", "dhcp.sh": "dhcp"}
FEATURE_UNITS = PERSISTENT_UNITS + CLOUD_UNITS


def feature_files(persistent_disk: Sequence[str], cloud_providers: Sequence[str]) -> tuple[list[str], dict[str, tuple[bytes, int]]]:
    """(units to enable, image path -> (bytes, mode)) for the features a spec switched on: persistent_disk is the
    disk's identities when persistent.enable (else empty), cloud_providers the clouds of cloud.providers."""
    units: list[str] = []
    out: dict[str, tuple[bytes, int]] = {}
    if persistent_disk:
        units += PERSISTENT_UNITS
        out.update({f"/usr/lib/sealbox/{dest}": (read(src), 0o644 if dest == "diskid" else 0o755)  # diskid is sourced
                    for src, dest in PERSISTENT_SCRIPTS.items()})
        out["/usr/lib/sealbox/persistent.conf"] = ("".join(f"disk={d}\n" for d in persistent_disk).encode(), 0o644)
    if cloud_providers:
        units += CLOUD_UNITS
        out.update({f"/usr/lib/sealbox/{dest}": (read(src), 0o755) for src, dest in CLOUD_SCRIPTS.items()})
        out["/usr/lib/sealbox/cloud.conf"] = (f"providers={' '.join(sorted(set(cloud_providers)))}\n".encode(), 0o644)
    out.update({f"/usr/lib/systemd/system/{u}": (read(u), 0o644) for u in units})
    return units, out


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
    units = sorted({u for u in enabled if u not in UNITS and u not in FEATURE_UNITS and u not in READY_AFTER})
    if not units:
        return None
    return ("# sealbox: the ready marker and the host keys come before anything the image's spec enables\n"
            f"[Unit]\nBefore={' '.join(units)}\n").encode()
