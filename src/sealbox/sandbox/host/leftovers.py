"""Host objects of one state dir that no record owns any more, found by their ownership marks.

`gc` (and `rm --force` of an unreadable record) must remove what a crash left behind even when
no record names it, and must never touch what belongs to someone else. Names alone cannot tell
the two apart (they are host-wide), so every object is judged by its mark (host/owner.py):

    ours      the mark names this state dir and a sandbox without a record -> removed
    foreign   a sealbox-style name or mark of another state dir, or no mark -> reported, left alone

Objects of sandboxes that still have a record (`keep`) are theirs to undo and are not listed.
Each finder runs on its own: one failing (nft missing, say) is reported and the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups, dns, forward, netnames, nft, owner, procmark, publish
from sealbox.sandbox.host.disklock import DiskTable
from sealbox.sandbox.host.netlink import delete_marked_link, list_links_marked
from sealbox.sandbox.host.netns import list_netns, netns_mark, placeholder_temps, remove_netns
from sealbox.sandbox.host.registry import Registry
from sealbox.sandbox.state import StateDir
from sealbox.util.names import NAME_RE

log = logging.getLogger("sealbox.leftovers")
Kind = Literal["netns", "netns-placeholder", "veth", "nft-table", "lease", "uid", "ip-forward-user", "cgroup",
               "dns-forwarder", "port-forwarder", "disk-claim"]


class Leftover(BaseModel):
    kind: Kind
    ident: str  # netns/interface/table name, sandbox name (lease), uid, user key or cgroup path
    sandbox: str | None = None  # whose it is, from the mark (or the name, for foreign objects)
    mark: str | None = None  # the mark the object carries
    ours: bool = False

    def describe(self) -> str:
        who = f" (sandbox {self.sandbox})" if self.sandbox else ""
        theirs = "" if self.ours else f", {'mark ' + repr(self.mark) if self.mark else 'no sealbox mark'}"
        return f"{self.kind} {self.ident}{who}{theirs}"


class _Finder:
    def __init__(self, state: StateDir, keep: Collection[str], reg: Registry) -> None:
        self.sid, self.keep, self.reg = state.id, set(keep), reg
        self.found: list[Leftover] = []

    def judge(self, kind: Kind, ident: str, mark: str | None, guess: str | None = None) -> None:
        name = owner.name_if_ours(mark, self.sid)
        if name is not None:
            if name not in self.keep:
                self.found.append(Leftover(kind=kind, ident=ident, sandbox=name, mark=mark, ours=True))
            return
        parsed = owner.parse(mark)
        self.found.append(Leftover(kind=kind, ident=ident, sandbox=parsed[1] if parsed else guess, mark=mark))

    def netns(self) -> None:
        for ns in list_netns():
            guess = netnames.sandbox_of_netns(ns)
            if guess is not None:
                self.judge("netns", ns, netns_mark(ns), guess)
        for path, mark in placeholder_temps().items():  # a crash while a namespace was being named
            self.judge("netns-placeholder", str(path), mark)

    def veths(self) -> None:
        for ifname, kind, alias in list_links_marked():
            if kind == "veth" and (netnames.VETH_RE.fullmatch(ifname) or owner.parse(alias)):
                self.judge("veth", ifname, alias)

    def tables(self) -> None:
        for table, mark in owner.nft_table_marks().items():
            guess = netnames.sandbox_of_table(table)
            if guess is not None or mark is not None:
                self.judge("nft-table", table, mark, guess)

    def registry(self) -> None:
        leases = self.reg.leases()
        for lease in leases.values():
            self.judge("lease", lease.name, lease.owner)
        leased = {lease.uid for lease in leases.values()}
        for uid, hold in self.reg.uid_holds().items():
            if uid not in leased and hold.host == self.reg.host:  # a crash between the two writes
                self.judge("uid", str(uid), hold.owner)
        for user in forward.users(self.reg.host_dir):
            self.judge("ip-forward-user", user, user)

    def dns_forwarders(self) -> None:
        for pid, mark in dns.find_forwarders():
            self.judge("dns-forwarder", str(pid), mark)
        for pid, mark in procmark.find(publish.MODULE):
            self.judge("port-forwarder", str(pid), mark)

    def disk_claims(self) -> None:
        for key, holder in DiskTable(self.reg.root).holds():
            self.judge("disk-claim", f"{key} ({holder.path})", holder.owner)

    def cgroups(self) -> None:
        for mount in sorted(set(cgroups.detect().mounts().values())):
            parent = Path(mount) / cgroups.PARENT
            for sub in sorted(parent.iterdir()) if parent.is_dir() else []:
                if not sub.is_dir():
                    continue
                if not owner.is_state_id(sub.name):  # an unmarked name (an older sealbox's layout)
                    if NAME_RE.fullmatch(sub.name):
                        self.found.append(Leftover(kind="cgroup", ident=str(sub), sandbox=sub.name))
                    continue
                for leaf in sorted(sub.iterdir()):
                    if leaf.is_dir() and NAME_RE.fullmatch(leaf.name):
                        self.judge("cgroup", str(leaf), f"{owner.PREFIX}{sub.name}/{leaf.name}")


def find(state: StateDir, keep: Collection[str], *, run_dir: Path | None = None,
         problems: list[str] | None = None) -> list[Leftover]:
    """Every sealbox-named or sealbox-marked host object not owned by a record in `keep`."""
    f = _Finder(state, keep, Registry(run_dir))
    finders: list[tuple[str, Callable[[], None]]] = [
        ("network namespaces", f.netns), ("veths", f.veths), ("nft tables", f.tables),
        ("the host registry", f.registry), ("DNS and port forwarders", f.dns_forwarders), ("the disk table", f.disk_claims),
        ("cgroups", f.cgroups)]
    for what, run in finders:
        try:
            run()
        except Exception as e:  # noqa: BLE001 - one finder failing must not hide the others' leftovers
            if problems is None:
                raise
            problems.append(f"listing {what} failed: {' '.join(str(e).split())}")
    return f.found


def remove(item: Leftover, *, run_dir: Path | None = None) -> None:
    """Remove one leftover of ours; idempotent, any order. The mark is checked again right here."""
    if not item.ours or item.mark is None or item.sandbox is None:
        raise ValueError(f"refusing to remove {item.describe()}: not ours")
    reg = Registry(run_dir)
    if item.kind == "netns":
        if netns_mark(item.ident) == item.mark:
            remove_netns(item.ident)
    elif item.kind == "netns-placeholder":
        if placeholder_temps().get(Path(item.ident)) == item.mark:
            Path(item.ident).unlink(missing_ok=True)
    elif item.kind == "veth":
        delete_marked_link(item.ident, item.mark, kind="veth")
    elif item.kind == "nft-table":
        if owner.nft_table_marks().get(item.ident) == item.mark:
            nft.apply(nft.delete_table_doc(item.ident))
    elif item.kind == "lease":
        reg.release(item.ident, item.mark)
    elif item.kind == "uid":
        reg.release_uid(int(item.ident), item.mark)
    elif item.kind == "ip-forward-user":
        forward.release(reg.host_dir, item.ident)
    elif item.kind == "cgroup":
        remove_cgroup(Path(item.ident))
    elif item.kind == "dns-forwarder":
        left = dns.stop_forwarders(item.mark, int(item.ident))
        if left:
            raise SandboxError(f"DNS forwarder {left} survived SIGKILL", hint="retry with 'sealbox gc'")
    elif item.kind == "port-forwarder":
        left = procmark.stop(publish.MODULE, item.mark, int(item.ident))
        if left:
            raise SandboxError(f"port forwarder {left} survived SIGKILL", hint="retry with 'sealbox gc'")
    elif item.kind == "disk-claim":
        DiskTable(reg.root).release(item.ident.split()[0], item.mark)
    log.info("removed leftover %s", item.describe())


def remove_cgroup(path: Path) -> None:
    """Kill what runs in a cgroup of ours and remove it (and its state dir's parent if now empty)."""
    from sealbox.errors import SandboxError

    left = cgroups.kill_all([path])
    if left:
        raise SandboxError(f"processes {left} in {path} survived SIGKILL")
    for target in (path, path.parent):
        try:
            target.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            if target == path:
                raise
