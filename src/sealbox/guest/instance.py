"""The per-instance data a sandbox hands its guest, and the instance disk that carries it.

The instance disk (docs/guest-protocol.md) is a raw file, a multiple of 4 KiB, attached read-only:

    SEALBOX-INSTANCE-V1
    hostname=<name>
    address=<guest-ip>/<prefix>
    gateway=<host-ip>
    ssh_user=<user>                              (repeatable: the image's declared users, then root)
    authorized_key=<OpenSSH public key line>     (repeatable; installed for every ssh_user)
    END
    <NUL padding>

The guest side is files/instance.sh; nothing per-instance is ever in the image.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict

from sealbox.errors import SandboxError
from sealbox.guest.protocol import INSTANCE_END as END
from sealbox.guest.protocol import INSTANCE_MAGIC as MAGIC

USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")  # the spec's rule for user names
BLOCK = 4096
MAX_SIZE = 64 * 1024  # the guest reads the whole device through a shell loop: keep it small


class InstanceData(BaseModel):
    """The values written to the instance disk; each one becomes one `key=value` line."""

    model_config = ConfigDict(frozen=True)
    hostname: str
    address: ipaddress.IPv4Interface  # guest address with prefix length
    gateway: ipaddress.IPv4Address
    ssh_users: tuple[str, ...] = ()  # besides root, which is always written, last: a guest built before
    # several users were supported keeps only the last ssh_user line, as it did when root was the only one
    authorized_keys: tuple[str, ...] = ()


def _check_value(key: str, value: str) -> str:
    # The guest parses with `IFS='=' read -r k v`: one line, printable ASCII, no NUL/CR/LF.
    if not value or any(not (0x20 <= ord(c) < 0x7F) for c in value):
        raise SandboxError(f"instance data {key}={value!r} must be a non-empty single line of printable ASCII")
    return value


def _check_user(name: str) -> str:
    # becomes a file name in the guest (/run/sealbox/authorized_keys/<user>): a plain user name only
    if not USER_RE.fullmatch(name):
        raise SandboxError(f"instance data ssh_user={name!r} is not a user name (lowercase letters, digits, '_', '-')")
    return name


def render(data: InstanceData) -> bytes:
    """The disk image bytes: the text block padded with NULs to a multiple of 4 KiB."""
    lines = [
        MAGIC,
        f"hostname={_check_value('hostname', data.hostname)}",
        f"address={data.address.with_prefixlen}",
        f"gateway={data.gateway}",
    ]
    lines += [f"ssh_user={_check_user(u)}" for u in dict.fromkeys([*data.ssh_users, "root"])]
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
