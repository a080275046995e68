"""Address allocation: one /30 per sandbox link (and one more for the nat uplink) from a pool.

Pure functions over the set of /30s already in use; the host registry (host/registry.py) calls
them under its lock, so the addresses of every sandbox on a host — whatever its state dir — come
from one table and never overlap (two state dirs handing out the same /30 would give two
namespaces the same route on the host).
"""

from __future__ import annotations

import ipaddress
import os

from sealbox.errors import ResourceExhausted, SandboxError, UsageError

DEFAULT_POOL = "10.213.0.0/16"
POOL_ENV = "SEALBOX_SUBNET_POOL"
LINK_PREFIX = 30  # host .1, guest .2 (network .0 and broadcast .3 unused)
Net = ipaddress.IPv4Network


def parse_pool(text: str | None = None) -> ipaddress.IPv4Network:
    """The address pool: explicit text, else $SEALBOX_SUBNET_POOL, else 10.213.0.0/16."""
    source = "pool" if text is not None else POOL_ENV
    value = text if text is not None else os.environ.get(POOL_ENV) or DEFAULT_POOL
    try:
        pool = ipaddress.IPv4Network(value.strip(), strict=True)
    except ValueError as e:
        raise UsageError(
            f"{source}={value!r} is not an IPv4 network ({e})", hint="use CIDR notation such as 10.213.0.0/16"
        ) from None
    if pool.prefixlen > 29:
        raise UsageError(f"{source}={value!r} is too small", hint="use a /29 or larger (nat needs two /30s per sandbox)")
    return pool


def _pick(pool: Net, used: set[int], count: int) -> list[Net] | None:
    """Lowest free /30s; stops after len(used) + count probes at most, so it is fast for any pool."""
    base = int(pool.network_address)
    picked: list[Net] = []
    for i in range(pool.num_addresses // 4):
        addr = base + 4 * i
        if addr not in used:
            picked.append(ipaddress.IPv4Network((addr, LINK_PREFIX)))
            if len(picked) == count:
                return picked
    return None


def plan(pool: Net, holders: dict[Net, str], *, nat: bool, link: Net | None = None) -> tuple[Net, Net | None]:
    """(link, uplink or None) for a new sandbox; `holders` maps every /30 in use to its holder.

    `link` fixes the guest link instead of taking the lowest free one (snapshot restore: the
    guest's memory holds its old address)."""
    used = {int(n.network_address) for n in holders}
    if link is not None:
        if link.prefixlen != LINK_PREFIX or not link.subnet_of(pool):
            raise SandboxError(f"link {link} is not a /{LINK_PREFIX} inside the address pool {pool}", hint=f"set {POOL_ENV} to a pool containing it")
        if link in holders:
            owner = holders[link]
            raise SandboxError(f"link {link} is held by sandbox {owner!r}", hint=f"remove {owner!r} first (a restored guest keeps its old address)")
        rest = _pick(pool, used | {int(link.network_address)}, 1) if nat else []
        if rest is None:
            raise ResourceExhausted(f"address pool {pool} is exhausted", hint=f"remove sandboxes, or set {POOL_ENV} to a larger range")
        return link, (rest[0] if nat else None)
    picked = _pick(pool, used, 2 if nat else 1)
    if picked is None:
        raise ResourceExhausted(
            f"address pool {pool} is exhausted ({len(set(holders.values()))} sandboxes hold /30s of this host)",
            hint=f"remove sandboxes, or set {POOL_ENV} to a larger range",
        )
    return picked[0], (picked[1] if nat else None)
