"""The per-instance data a sandbox hands its guest, and the instance disk that carries it.

The instance disk (docs/guest-protocol.md) is a raw file, a multiple of 4 KiB, attached read-only:

    SEALBOX-INSTANCE-V1
    hostname=<name>
    address=<guest-ip>/<prefix>
    gateway=<host-ip>
    dns=<resolver-ip>                            (repeatable; none: no resolver)
    ssh_user=root
    authorized_key=<OpenSSH public key line>     (repeatable)
    END
    <NUL padding>

The guest side is files/instance.sh; nothing per-instance is ever in the image.
"""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict

from sealbox.errors import SandboxError
from sealbox.guest.protocol import INSTANCE_END as END
from sealbox.guest.protocol import INSTANCE_MAGIC as MAGIC

BLOCK = 4096
MAX_SIZE = 64 * 1024  # the guest reads the whole device through a shell loop: keep it small


class InstanceData(BaseModel):
    """The values written to the instance disk; each one becomes one `key=value` line."""

    model_config = ConfigDict(frozen=True)
    hostname: str
    address: ipaddress.IPv4Interface  # guest address with prefix length
    gateway: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...] = ()  # the guest's resolvers (sandbox/host/dns.py)
    ssh_user: str = "root"
    authorized_keys: tuple[str, ...] = ()


def _check_value(key: str, value: str) -> str:
    # The guest parses with `IFS='=' read -r k v`: one line, printable ASCII, no NUL/CR/LF.
    if not value or any(not (0x20 <= ord(c) < 0x7F) for c in value):
        raise SandboxError(f"instance data {key}={value!r} must be a non-empty single line of printable ASCII")
    return value


def render(data: InstanceData) -> bytes:
    """The disk image bytes: the text block padded with NULs to a multiple of 4 KiB."""
    lines = [
        MAGIC,
        f"hostname={_check_value('hostname', data.hostname)}",
        f"address={data.address.with_prefixlen}",
        f"gateway={data.gateway}",
        *(f"dns={ip}" for ip in data.dns),
        f"ssh_user={_check_value('ssh_user', data.ssh_user)}",
    ]
    lines += [f"authorized_key={_check_value('authorized_key', k.strip())}" for k in data.authorized_keys]
    lines.append(END)
    text = ("\n".join(lines) + "\n").encode("ascii")
    size = max(BLOCK, -(-len(text) // BLOCK) * BLOCK)
    if size > MAX_SIZE:
        raise SandboxError(f"instance data is {len(text)} bytes; at most {MAX_SIZE} fit the instance disk", hint="use fewer authorized keys")
    return text.ljust(size, b"\0")


def parse(blob: bytes) -> dict[str, list[str]]:
    """Read an instance disk back (tests, inspect): key -> values, in order, up to END."""
    text = blob.split(b"\0", 1)[0].decode("ascii")
    lines = text.split("\n")
    if not lines or lines[0] != MAGIC:
        raise SandboxError("not a sealbox instance disk (missing SEALBOX-INSTANCE-V1 magic)")
    out: dict[str, list[str]] = {}
    for line in lines[1:]:
        if line == END:
            return out
        if not line:
            continue  # the guest's `read` loop skips blank lines too
        key, sep, value = line.partition("=")
        if not sep:
            raise SandboxError(f"instance disk line {line!r} is not key=value")
        out.setdefault(key, []).append(value)
    raise SandboxError("instance disk has no END line")
