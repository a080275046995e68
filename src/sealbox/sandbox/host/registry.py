"""The host registry: who holds which sandbox name, addresses and uid on this host.

Network namespace names, nft table names, veth names, Firecracker jail ids and routes are global to
a host, not to a state dir. So they are handed out from one registry per host network namespace,
shared by every sealbox process and state dir, instead of from each state dir:

    <run>/                          $SEALBOX_RUN_DIR, default /run/sealbox (root only, 0700)
    <run>/net-<ino>/                one host: the network namespace sealbox runs in (its inode),
                                    so simulated hosts in namespaces of one machine each get theirs
    <run>/net-<ino>/leases/<name>.json   the lease of one sandbox name: owner mark, state dir,
                                    link and uplink /30s, uid/gid
    <run>/net-<ino>/net/ip_forward.json  the ip_forward reference count (host/forward.py)
    <run>/uids/<uid>.json           uids are per machine, not per network namespace: one table
                                    for all hosts on this machine, so no two sandboxes anywhere
                                    on it share a uid
    <run>/states/<state id>.json    the path of each state dir that ever held a lease: the only way
                                    back from a mark's state id to its state dir, so `gc --orphans`
                                    can tell objects whose state dir was deleted (nobody's, forever)

Changes happen under flocks (the host's, then the uid table's: always in that order) and every
file is written atomically, so concurrent `run`s from different state dirs see each other's
leases. /run is a tmpfs: after a reboot the table starts empty, like the namespaces and processes
it describes. A lease is released only by its owner (the mark of host/owner.py); a crash between
allocating and recording leaves a lease that `gc` of the owning state dir finds by its mark.
Tests and helpers sharing a machine point SEALBOX_RUN_DIR (and SEALBOX_UID_RANGE) elsewhere.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from sealbox.errors import SandboxError
from sealbox.sandbox.host import ipam, users
from sealbox.sandbox.host import owner as marks
from sealbox.sandbox.steps import Step, StepRefused
from sealbox.util import atomic, flock
from sealbox.util.names import check_sandbox_name

RUN_ENV = "SEALBOX_RUN_DIR"
DEFAULT_RUN_DIR = Path("/run/sealbox")
LOCK_TIMEOUT = 30.0
Net = ipaddress.IPv4Network


def run_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    return Path(explicit or os.environ.get(RUN_ENV) or DEFAULT_RUN_DIR).absolute()


def host_key() -> str:
    """This host's registry key: the inode of the calling thread's network namespace."""
    return f"net-{os.stat('/proc/thread-self/ns/net').st_ino}"


class Lease(BaseModel):
    """One sandbox's hold on host-wide names and numbers; also the exact content of its file."""

    model_config = ConfigDict(frozen=True)
    name: str
    owner: str  # ownership mark of the state dir + sandbox (host/owner.py)
    state_dir: str  # shown to whoever else wants the name
    link: Net  # tap0 link: host .1, guest .2
    uplink: Net | None = None  # nat veth: root side .1, sandbox side .2
    pool: Net
    uid: int
    gid: int

    def subnets(self) -> list[Net]:
        return [n for n in (self.link, self.uplink) if n is not None]


class UidHold(BaseModel):
    uid: int
    owner: str
    host: str


def _read(path: Path, model: type[Any]) -> Any:
    try:
        return model.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError, OSError) as e:
        raise SandboxError(f"host registry file {path} is unreadable: {str(e).splitlines()[0]}",
                           hint="if no sandbox uses it, delete the file (or run 'sealbox gc')") from None


class Registry:
    def __init__(self, root: str | os.PathLike[str] | None = None, host: str | None = None) -> None:
        self.root = run_root(root)
        self.host = host or host_key()

    @property
    def host_dir(self) -> Path:
        """This host's directory; also the run dir of host/forward.py (ip_forward users)."""
        return self.root / self.host

    def lease_path(self, name: str) -> Path:
        return self.host_dir / "leases" / f"{check_sandbox_name(name)}.json"

    def uid_path(self, uid: int) -> Path:
        return self.root / "uids" / f"{int(uid)}.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        for d in (self.root, self.host_dir, self.host_dir / "leases", self.root / "uids"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        busy = "the host registry {} is locked by another sealbox command"
        with flock.exclusive(self.host_dir / "registry.lock", LOCK_TIMEOUT, busy.format(self.host_dir)), \
                flock.exclusive(self.root / "uids.lock", LOCK_TIMEOUT, busy.format(self.root / "uids")):
            yield

    # reading (call under the lock when acting on the result) ------------------------------------
    def leases(self) -> dict[str, Lease]:
        d = self.host_dir / "leases"
        if not d.is_dir():
            return {}
        found = {}
        for path in sorted(d.glob("*.json")):
            lease = _read(path, Lease)
            if lease is not None:
                found[lease.name] = lease
        return found

    def uid_holds(self) -> dict[int, UidHold]:
        d = self.root / "uids"
        holds = [_read(p, UidHold) for p in sorted(d.glob("*.json"))] if d.is_dir() else []
        return {h.uid: h for h in holds if h is not None}

    # allocation ---------------------------------------------------------------------------------
    def plan(self, name: str, owner: str, state_dir: str, *, nat: bool, pool: Net, link: Net | None = None) -> Lease:
        leases = self.leases()
        held = leases.get(name)
        if held is not None:
            if held.owner == owner:
                raise SandboxError(f"sandbox {name!r} already holds a lease on this host ({self.lease_path(name)})",
                                   hint="remove the old sandbox with 'sealbox rm', or run 'sealbox gc'")
            raise SandboxError(f"sandbox name {name!r} is in use on this host by the state dir {held.state_dir}",
                               hint="choose another --name: namespace, table, interface and jail names are host-wide")
        holders = {n: lease.name for lease in leases.values() for n in lease.subnets()}
        got_link, uplink = ipam.plan(pool, holders, nat=nat, link=link)
        uid = users.free_uid(taken=self.uid_holds())
        return Lease(name=name, owner=owner, state_dir=state_dir, link=got_link, uplink=uplink, pool=pool, uid=uid, gid=uid)

    def allocate(self, name: str, owner: str, state_dir: str, *, nat: bool, pool: Net, link: Net | None = None,
                 dry_run: bool = False) -> Lease:
        """Allocate (dry_run: only compute) a lease; visible to every other sealbox before it returns."""
        if dry_run:
            return self.plan(name, owner, state_dir, nat=nat, pool=pool, link=link)
        with self.locked():
            lease = self.plan(name, owner, state_dir, nat=nat, pool=pool, link=link)
            self._write(lease)
        return lease

    def _write(self, lease: Lease) -> None:
        self._note_state(lease)  # before the lease: every object the lease leads to can be traced to a path
        atomic.write_json(self.uid_path(lease.uid), UidHold(uid=lease.uid, owner=lease.owner, host=self.host).model_dump(), mode=0o600)
        atomic.write_json(self.lease_path(lease.name), lease.model_dump(mode="json"), mode=0o600)

    def claim(self, lease: Lease) -> None:
        """Make sure `lease` is on record (idempotent); refuse if any part of it is held by another."""
        with self.locked():
            leases = self.leases()
            if leases.get(lease.name) == lease and self.uid_holds().get(lease.uid, UidHold(uid=-1, owner="", host="")).owner == lease.owner:
                return
            if lease.name in leases:
                raise StepRefused(f"sandbox name {lease.name!r} is held by another lease on this host",
                                   hint="run 'sealbox gc', or choose another --name")
            theirs = {n for other in leases.values() for n in other.subnets()}
            if theirs & set(lease.subnets()):
                raise StepRefused(f"addresses {', '.join(map(str, lease.subnets()))} were taken by another sandbox meanwhile",
                                   hint="retry the command")
            hold = self.uid_holds().get(lease.uid)
            if hold is not None and hold.owner != lease.owner:
                raise StepRefused(f"uid {lease.uid} was taken by another sandbox meanwhile", hint="retry the command")
            self._write(lease)

    def release(self, name: str, owner: str, uid: int | None = None) -> bool:
        """Drop `owner`'s lease of `name` and its uid; never another owner's. True if anything went."""
        if not self.lease_path(name).exists() and (uid is None or not self.uid_path(uid).exists()):
            return False  # nothing to do: no lock, no directories created (a replay after reboot)
        gone = False
        with self.locked():
            uids = {uid} if uid is not None else set()
            lease = _read(self.lease_path(name), Lease)
            if lease is not None and lease.owner == owner:
                self.lease_path(name).unlink(missing_ok=True)
                uids.add(lease.uid)
                gone = True
            for u in uids:
                hold = _read(self.uid_path(u), UidHold)
                if hold is not None and hold.owner == owner:
                    self.uid_path(u).unlink(missing_ok=True)
                    gone = True
        return gone

    # state dirs -------------------------------------------------------------------------------
    def state_path(self, sid: str) -> Path:
        if not marks.is_state_id(sid):
            raise ValueError(f"not a state id: {sid!r}")
        return self.root / "states" / f"{sid}.json"

    def _note_state(self, lease: Lease) -> None:
        parsed = marks.parse(lease.owner)
        if parsed is None or self.state_path(parsed[0]).exists():
            return
        (self.root / "states").mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_json(self.state_path(parsed[0]), {"state_dir": lease.state_dir}, mode=0o600)

    def gone_states(self) -> dict[str, str]:
        """State id -> path of each recorded state dir that no longer exists (deleted with its sandboxes running
        or crashed): their host objects carry a mark no living state dir will ever claim."""
        gone: dict[str, str] = {}
        for f in sorted((self.root / "states").glob("*.json")):
            sid = f.stem
            try:
                path = json.loads(f.read_bytes()[:65536])["state_dir"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours to interpret: never a reason to remove anything
            if marks.is_state_id(sid) and isinstance(path, str) and os.path.isabs(path) and not os.path.lexists(path):
                gone[sid] = path
        return gone

    def forget_state(self, sid: str) -> None:
        self.state_path(sid).unlink(missing_ok=True)

    def release_uid(self, uid: int, owner: str) -> bool:
        """Drop a uid hold whose lease is gone (a crash between the two writes)."""
        with self.locked():
            hold = _read(self.uid_path(uid), UidHold)
            if hold is None or hold.owner != owner or any(le.uid == uid and le.owner == owner for le in self.leases().values()):
                return False
            self.uid_path(uid).unlink(missing_ok=True)
        return True


class HostLeaseStep(Step):
    """Holds the sandbox's name, /30(s) and uid in the host registry; undo releases them (if ours)."""

    kind = "host.lease"
    run_dir: str
    host: str
    lease: Lease

    @property
    def uid(self) -> int:
        return self.lease.uid

    @property
    def gid(self) -> int:
        return self.lease.gid

    def describe(self) -> str:
        le = self.lease
        up = f", uplink {le.uplink}" if le.uplink else ""
        return f"lease name {le.name!r}, link {le.link}{up} (pool {le.pool}) and uid/gid {le.uid} in the host registry {self.run_dir}/{self.host}"

    def registry(self) -> Registry:
        return Registry(self.run_dir, self.host)

    def do(self) -> dict[str, Any]:
        reg = self.registry()
        reg.claim(self.lease)
        return {"file": str(reg.lease_path(self.lease.name))}

    def undo(self, outputs: dict[str, Any]) -> None:
        self.registry().release(self.lease.name, self.lease.owner, self.lease.uid)
