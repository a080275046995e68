"""Host-global names of one sandbox's network objects, derived from the sandbox name alone.

Everything here is a pure function of the name so that `undo`, `gc` and leftover detection can
find an object without any other state. These names are global to the host (not to a state
directory), so two state directories must not run sandboxes with the same name at the same time.
"""

from __future__ import annotations

import hashlib
import re

from sealbox.util.names import check_sandbox_name

NETNS_PREFIX = "sealbox-"  # /var/run/netns/sealbox-<name>
TABLE_PREFIX = "sealbox-"  # root-namespace nft table `inet sealbox-<name>` (nat mode only)
NETNS_TABLE = "sealbox"  # the nft table inside each sandbox netns (one per netns, so a constant)
TAP_NAME = "tap0"  # one TAP per netns, so the name is constant
PEER_NAME = "veth0"  # sandbox-side end of the nat veth
VETH_RE = re.compile(r"^sb[0-9a-f]{13}$")  # root-side veth ends: 'sb' + 13 hex digits = 15 chars (IFNAMSIZ-1)
GUEST_SSH_PORT = 22


def _digest(name: str) -> bytes:
    return hashlib.sha256(check_sandbox_name(name).encode()).digest()


def netns_name(name: str) -> str:
    return NETNS_PREFIX + check_sandbox_name(name)


def root_table_name(name: str) -> str:
    return TABLE_PREFIX + check_sandbox_name(name)


def veth_name(name: str) -> str:
    """Root-namespace end of the nat veth; hashed because sandbox names can be longer than IFNAMSIZ."""
    return "sb" + _digest(name).hex()[:13]


def guest_mac(name: str) -> str:
    """Locally administered unicast MAC (02:...), stable per name so the guest's view never changes."""
    return "02:" + ":".join(f"{b:02x}" for b in _digest(name)[:5])


def sandbox_of_netns(netns: str) -> str | None:
    """The sandbox name a netns belongs to, or None if it does not follow sealbox's convention."""
    if not netns.startswith(NETNS_PREFIX):
        return None
    rest = netns[len(NETNS_PREFIX):]
    try:
        return check_sandbox_name(rest)
    except Exception:  # noqa: BLE001 - not ours
        return None


def sandbox_of_table(table: str) -> str | None:
    if not table.startswith(TABLE_PREFIX):
        return None
    rest = table[len(TABLE_PREFIX):]
    try:
        return check_sandbox_name(rest)
    except Exception:  # noqa: BLE001 - not ours
        return None
