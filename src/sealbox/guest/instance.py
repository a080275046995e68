"""The per-instance data of a sandbox, defined once: schema, validation, disk layout and canonical encoding.

Schema `SEALBOX-INSTANCE-V2` (the magic line names the version; a schema change is a new version). The fields,
in their canonical order, one `key=value` line each (FIELDS below is the definition; guest/files/instance.sh the
guest side, docs/guest-protocol.md the prose):

    SEALBOX-INSTANCE-V2
    hostname=<name>                          the guest's hostname
    address=<guest-ip>/<prefix>              eth0's IPv4 address
    gateway=<host-ip>                        default route: the host side of the sandbox's own link
    dns=<ip>                                 0-3 lines, in resolver order: /etc/resolv.conf (-> /run/sealbox/resolv.conf)
    authorized_key=<user> <key line>         0+ lines: root first, then the other users by name, each user's keys
                                             in the given order -> /run/sealbox/authorized_keys/<user>
    !password_hash=<user> <crypt(3) hash>    0+ lines, SECRET, users by name (never root): the user's password in a
                                             runtime copy of /etc/shadow that the guest binds over the image's
    END

The instance disk carries exactly these bytes, then NUL padding to a multiple of 4 KiB. The canonical encoding is
the same text from the magic line to `END\n` inclusive, except that a secret field is written as
`!<key>#sha384=<hex of SHA-384(value)>`: a secret is never hashed in clear (on the disk it is `!<key>=<value>`).
MRCONFIGID (TDX) = SHA-384(canonical encoding): the host starts a TD with it, the guest recomputes it from the disk
before it applies anything, and `sealbox attest quote --instance` checks a quote's MRCONFIGID against it. Nothing
per-instance is ever in the image.

`password_hash` was added to V2 without a new version on purpose: an older V2 guest hashes every line (it takes the
`!` form generically) and applies only the keys it knows, so it stays bound to the same MRCONFIGID and simply gives
nobody a password; the host sends the field only to images that declare `users.<name>.instance_password`. A change
an older guest would misapply needs a new version.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator

from sealbox.errors import SandboxError
from sealbox.guest.protocol import INSTANCE_END as END
from sealbox.guest.protocol import INSTANCE_MAGIC as MAGIC

BLOCK = 4096
MAX_SIZE = 64 * 1024  # the guest reads the whole device through a shell loop: keep it small
MAX_DNS = 3  # resolv.conf uses at most three nameservers (MAXNS)
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,62}$")
# a user name becomes a file name in the guest (/run/sealbox/authorized_keys/<user>): Debian's NAME_REGEX, 32 max
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# a crypt(3) hash as /etc/shadow holds it ($id$[params$]salt$hash): the guest writes it into a shadow line
CRYPT_RE = re.compile(r"^\$[0-9a-z]{1,8}\$[A-Za-z0-9./$=,]{8,500}$")


@dataclass(frozen=True)
class Field:
    key: str  # the line's key on the disk and in the encoding
    attr: str  # the InstanceData attribute it comes from
    repeated: bool
    secret: bool
    doc: str


FIELDS = (
    Field("hostname", "hostname", False, False, "the guest's hostname"),
    Field("address", "address", False, False, "eth0's IPv4 address with prefix length"),
    Field("gateway", "gateway", False, False, "default route (the host side of the sandbox's link)"),
    Field("dns", "dns", True, False, "a resolver address, in order; written to /run/sealbox/resolv.conf"),
    Field("authorized_key", "authorized_keys", True, False, "'<user> <OpenSSH public key line>', root first, users by name"),
    Field("password_hash", "password_hashes", True, True, "'<user> <crypt(3) hash>', users by name, never root (secret)"),
)


def _printable(key: str, value: str, *, secret: bool = False) -> str:
    # The guest parses with `IFS= read -r line`: one line, printable ASCII, no NUL/CR/LF.
    if not value or any(not (0x20 <= ord(c) < 0x7F) for c in value):
        shown = "<secret>" if secret else repr(value)
        raise SandboxError(f"instance data {key}={shown} must be a non-empty single line of printable ASCII")
    return value


class InstanceData(BaseModel):
    """The values of one sandbox. Fill them here; the encoding, the disk and the guest follow FIELDS."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    hostname: str
    address: ipaddress.IPv4Interface  # guest address with prefix length
    gateway: ipaddress.IPv4Address
    dns: tuple[ipaddress.IPv4Address, ...] = ()
    authorized_keys: dict[str, tuple[str, ...]] = {}  # user -> public key lines (root and the image's users)
    password_hashes: dict[str, str] = {}  # user -> crypt(3) hash of the password made for this sandbox (secret)

    @field_validator("dns")
    @classmethod
    def _few_resolvers(cls, v: tuple[ipaddress.IPv4Address, ...]) -> tuple[ipaddress.IPv4Address, ...]:
        if len(v) > MAX_DNS:
            raise ValueError(f"at most {MAX_DNS} resolvers (resolv.conf reads no more), got {len(v)}")
        return v

    def users(self) -> list[str]:
        """Users in canonical order: root first, then by name."""
        return sorted(self.authorized_keys, key=lambda u: (u != "root", u))


def _entries(data: InstanceData) -> Iterator[tuple[Field, str]]:
    by_key = {f.key: f for f in FIELDS}
    if not HOSTNAME_RE.fullmatch(data.hostname):
        raise SandboxError(f"instance data hostname={data.hostname!r} must be printable ASCII: letters, digits and '-' (1-63)")
    yield by_key["hostname"], data.hostname
    yield by_key["address"], data.address.with_prefixlen
    yield by_key["gateway"], str(data.gateway)
    for ip in data.dns:
        yield by_key["dns"], str(ip)
    for user in data.users():
        if not USER_RE.fullmatch(user):
            raise SandboxError(f"instance data user {user!r} is not a valid user name ([a-z_][a-z0-9_-]*, at most 32)")
        for key in data.authorized_keys[user]:
            yield by_key["authorized_key"], f"{user} {_printable('authorized_key', key.strip())}"
    for user in sorted(data.password_hashes):
        if not USER_RE.fullmatch(user) or user == "root":
            raise SandboxError(f"instance data password for {user!r}: only a non-root user name can get a password")
        if not CRYPT_RE.fullmatch(data.password_hashes[user]):  # the value itself is secret: never in an error
            raise SandboxError(f"instance data password for {user!r} is not a crypt(3) hash ($id$salt$hash)")
        yield by_key["password_hash"], f"{user} {data.password_hashes[user]}"


def encode_lines(entries: list[tuple[Field, str]], *, canonical: bool) -> bytes:
    """The text block for these entries: the disk's (secrets in clear) or the canonical one (secrets digested)."""
    lines = [MAGIC]
    for f, value in entries:
        _printable(f.key, value, secret=f.secret)
        if not f.secret:
            lines.append(f"{f.key}={value}")
        elif canonical:
            lines.append(f"!{f.key}#sha384={hashlib.sha384(value.encode()).hexdigest()}")
        else:
            lines.append(f"!{f.key}={value}")
    lines.append(END)
    return ("\n".join(lines) + "\n").encode("ascii")


def canonical(data: InstanceData) -> bytes:
    return encode_lines(list(_entries(data)), canonical=True)


def mrconfigid(data: InstanceData) -> bytes:
    """The 48-byte MRCONFIGID a TD with this instance data is started with."""
    return hashlib.sha384(canonical(data)).digest()


def mrconfigid_base64(digest: bytes) -> str:
    """QEMU's tdx-guest object takes MRCONFIGID base64-encoded."""
    return base64.b64encode(digest).decode("ascii")


def render(data: InstanceData, size: int | None = None) -> bytes:
    """The disk image bytes: the text block padded with NULs to a multiple of 4 KiB, or to exactly `size` (a restored
    guest's kernel knows the size of the snapshot's instance disk)."""
    text = encode_lines(list(_entries(data)), canonical=False)
    need = max(BLOCK, -(-len(text) // BLOCK) * BLOCK)
    if need > MAX_SIZE:
        raise SandboxError(f"instance data is {len(text)} bytes; at most {MAX_SIZE} fit the instance disk", hint="use fewer authorized keys")
    if size is not None and (need > size or size % BLOCK or size > MAX_SIZE):
        raise SandboxError(f"instance data is {len(text)} bytes; the snapshot's instance disk holds {size}",
                           hint="restore with fewer users' keys than the snapshot's source had")
    return text.ljust(need if size is None else size, b"\0")


def _text_lines(blob: bytes) -> list[str]:
    text = blob.split(b"\0", 1)[0].decode("ascii", errors="replace")
    lines = text.split("\n")
    if not lines or lines[0] != MAGIC:
        raise SandboxError(f"not a sealbox instance disk (missing {MAGIC} magic)")
    if END not in lines[1:]:
        raise SandboxError("instance disk has no END line")
    return lines[1 : lines.index(END, 1)]


def parse(blob: bytes) -> dict[str, list[str]]:
    """Read an instance disk back (tests, inspect): key -> values, in order, up to END."""
    out: dict[str, list[str]] = {}
    for line in _text_lines(blob):
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise SandboxError(f"instance disk line {line!r} is not key=value")
        out.setdefault(key, []).append(value)
    return out


def canonical_from_disk(blob: bytes) -> bytes:
    """The canonical encoding of an instance disk, computed as the guest computes it (every line up to END,
    secrets digested): what MRCONFIGID must be the SHA-384 of."""
    out = [MAGIC]
    for line in _text_lines(blob):
        if line.startswith("!"):
            key, _, value = line[1:].partition("=")
            line = f"!{key}#sha384={hashlib.sha384(value.encode()).hexdigest()}"
        out.append(line)
    out.append(END)
    return ("\n".join(out) + "\n").encode("ascii", errors="replace")
