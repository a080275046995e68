"""Address allocation: one /30 per sandbox link (and one more for the nat uplink) from a pool.

Storage: one small JSON file per sandbox, `<state>/ipam/<name>.json`, written atomically (fsynced
temp file + rename) while `StateDir.global_lock()` is held. The set of files *is* the allocation
table: a concurrent `sealbox run` takes the same lock, lists the directory and sees every
allocation made before it, because the rename is complete before the lock is released. Release is
the removal of that file (also under the lock). Nothing else is shared, so a crash can at worst
leave one file behind, which `gc` finds (its name names the sandbox) and removes.

Allocation is eager (network_steps calls `allocate` before any step runs) because every later step
needs the addresses in its recorded parameters; the IpamAllocation step then only re-asserts the
file, and its undo releases it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.state import StateDir
from sealbox.sandbox.steps import Step
from sealbox.util import atomic
from sealbox.util.names import check_sandbox_name

log = logging.getLogger("sealbox.ipam")

DEFAULT_POOL = "10.213.0.0/16"
POOL_ENV = "SEALBOX_SUBNET_POOL"
LINK_PREFIX = 30  # host .1, guest .2 (network .0 and broadcast .3 unused)


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


class Allocation(BaseModel):
    """One sandbox's addresses; also the exact content of its ipam file."""

    model_config = ConfigDict(frozen=True)
    name: str
    link: ipaddress.IPv4Network  # tap0 link: host .1, guest .2
    uplink: ipaddress.IPv4Network | None = None  # nat veth: root side .1, sandbox side .2
    pool: ipaddress.IPv4Network

    def subnets(self) -> list[ipaddress.IPv4Network]:
        return [n for n in (self.link, self.uplink) if n is not None]


def ipam_dir(state_root: Path) -> Path:
    return Path(state_root) / "ipam"


def _file(state_root: Path, name: str) -> Path:
    return ipam_dir(state_root) / f"{check_sandbox_name(name)}.json"


def read_allocations(state_root: Path) -> dict[str, Allocation]:
    """Every allocation on record (call with the global lock held if you act on the result)."""
    d = ipam_dir(state_root)
    if not d.is_dir():
        return {}
    found: dict[str, Allocation] = {}
    for path in sorted(d.iterdir()):
        if path.name.startswith(".") or path.suffix != ".json":
            continue  # temp files of atomic writes
        try:
            alloc = Allocation.model_validate_json(path.read_bytes())
        except (ValidationError, ValueError, OSError) as e:
            raise SandboxError(
                f"address allocation file {path} is unreadable: {str(e).splitlines()[0]}",
                hint="if no sandbox of that name exists, delete the file (or run 'sealbox gc')",
            ) from None
        found[alloc.name] = alloc
    return found


def _used(allocs: dict[str, Allocation]) -> set[int]:
    return {int(n.network_address) for a in allocs.values() for n in a.subnets()}


def _pick(pool: ipaddress.IPv4Network, used: set[int], count: int) -> list[ipaddress.IPv4Network] | None:
    """Lowest free /30s; stops after len(used) + count probes at most, so it is fast for any pool."""
    base = int(pool.network_address)
    picked: list[ipaddress.IPv4Network] = []
    for i in range(pool.num_addresses // 4):
        addr = base + 4 * i
        if addr not in used:
            picked.append(ipaddress.IPv4Network((addr, LINK_PREFIX)))
            if len(picked) == count:
                return picked
    return None


def _plan(state_root: Path, name: str, nat: bool, pool: ipaddress.IPv4Network,
          link: ipaddress.IPv4Network | None = None) -> Allocation:
    allocs = read_allocations(state_root)
    if name in allocs:
        raise SandboxError(
            f"sandbox {name!r} already holds addresses ({_file(state_root, name)})",
            hint="remove the old sandbox with 'sealbox rm', or run 'sealbox gc'",
        )
    used = _used(allocs)
    if link is not None:  # a fixed link (snapshot restore: the guest's memory holds its old address)
        if link.prefixlen != LINK_PREFIX or not link.subnet_of(pool):
            raise SandboxError(f"link {link} is not a /{LINK_PREFIX} inside the address pool {pool}", hint=f"set {POOL_ENV} to a pool containing it")
        if int(link.network_address) in used:
            owner = next(a.name for a in allocs.values() if link in a.subnets())
            raise SandboxError(f"link {link} is held by sandbox {owner!r}", hint=f"remove {owner!r} first (a restored guest keeps its old address)")
        rest = _pick(pool, used | {int(link.network_address)}, 1) if nat else []
        if rest is None:
            raise SandboxError(f"address pool {pool} is exhausted", hint=f"remove sandboxes, or set {POOL_ENV} to a larger range")
        return Allocation(name=name, link=link, uplink=rest[0] if nat else None, pool=pool)
    picked = _pick(pool, used, 2 if nat else 1)
    if picked is None:
        raise SandboxError(
            f"address pool {pool} is exhausted ({len(allocs)} sandboxes hold its /30s)",
            hint=f"remove sandboxes, or set {POOL_ENV} to a larger range",
        )
    return Allocation(name=name, link=picked[0], uplink=picked[1] if nat else None, pool=pool)


def allocate(
    state: StateDir, name: str, *, nat: bool, pool: ipaddress.IPv4Network, dry_run: bool = False,
    link: ipaddress.IPv4Network | None = None,
) -> Allocation:
    """Allocate (or with dry_run only compute) the lowest free /30s, or the given `link`. Visible to
    others before it returns."""
    if dry_run:  # a plan only: read without locking, so --dry-run creates nothing
        return _plan(state.root, name, nat, pool, link)
    with state.global_lock():
        alloc = _plan(state.root, name, nat, pool, link)
        ipam_dir(state.root).mkdir(mode=0o700, exist_ok=True)
        atomic.write_json(_file(state.root, name), alloc.model_dump(mode="json"), mode=0o600)
    return alloc


def release(state_root: Path, name: str, link: ipaddress.IPv4Network | None = None) -> bool:
    """Remove `name`'s allocation (only if it is for `link`, when given). Idempotent; True if removed."""
    state = StateDir(Path(state_root))
    path = _file(state.root, name)
    if not path.exists():
        return False
    with state.global_lock():
        try:
            current = json.loads(path.read_bytes())
        except FileNotFoundError:
            return False
        except ValueError:
            current = {}  # corrupt: it is ours by name, remove it
        if link is not None and current.get("link") not in (None, str(link)):
            # a newer sandbox of the same name holds other addresses: not ours to free
            log.warning("not releasing %s: it holds %s, not %s", path, current.get("link"), link)
            return False
        path.unlink(missing_ok=True)
    return True


class IpamAllocation(Step):
    """Holds the sandbox's /30(s). do() re-asserts the allocation file; undo() releases it."""

    kind = "net.ipam"
    state_root: str
    name: str
    link: ipaddress.IPv4Network
    uplink: ipaddress.IPv4Network | None = None
    pool: ipaddress.IPv4Network

    def describe(self) -> str:
        up = f", uplink {self.uplink}" if self.uplink else ""
        return f"allocate addresses: link {self.link}{up} from pool {self.pool}"

    def _allocation(self) -> Allocation:
        return Allocation(name=self.name, link=self.link, uplink=self.uplink, pool=self.pool)

    def do(self) -> dict[str, Any] | None:
        state = StateDir(Path(self.state_root))
        mine = self._allocation()
        with state.global_lock():
            allocs = read_allocations(state.root)
            if allocs.get(self.name) == mine:
                return {"file": str(_file(state.root, self.name))}
            if self.name in allocs:
                raise SandboxError(f"sandbox {self.name!r} already holds other addresses", hint="run 'sealbox gc'")
            clash = _used(allocs) & {int(n.network_address) for n in mine.subnets()}
            if clash:
                raise SandboxError(
                    f"addresses {', '.join(map(str, mine.subnets()))} were taken by another sandbox meanwhile",
                    hint="retry the command",
                )
            ipam_dir(state.root).mkdir(mode=0o700, exist_ok=True)
            atomic.write_json(_file(state.root, self.name), mine.model_dump(mode="json"), mode=0o600)
        return {"file": str(_file(state.root, self.name))}

    def undo(self, outputs: dict[str, Any]) -> None:
        release(Path(self.state_root), self.name, self.link)

