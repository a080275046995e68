"""net.ipv4.ip_forward in the root namespace, shared by all nat sandboxes: a reference count.

nat sandboxes need forwarding in the root namespace; the host had some value before the first one
started, and that value must come back when the last one goes away — not earlier (another nat
sandbox still needs it) and not a guessed value.

Design:
- One file, `<run>/net/ip_forward.json` = {"previous": "<value before sealbox>", "users": [...]},
  changed only under an flock on `<run>/net/ip_forward.lock` (bounded wait).
- `<run>` defaults to /run/sealbox, a tmpfs: the sysctl and the file share the lifetime of the boot.
  After a reboot the file is gone and ip_forward has its boot value, so replaying an old record's
  undo (gc) finds no user and changes nothing — a file in the persistent state dir would instead
  "restore" a stale value over the boot configuration.
- A user is an owner key "<state dir>:<sandbox name>", unique across state directories.
- acquire: under the lock, if the file is absent, record the current value as `previous`; add the
  owner; write the file atomically; *then* write 1. A crash after the file write leaves a user that
  the step's undo (or gc) removes; a crash before leaves nothing changed.
- release: under the lock, remove the owner; if no user remains, write `previous` back and delete
  the file. Idempotent: an owner that is not listed changes nothing.
- acquire also re-asserts 1 when the file already exists (someone may have reset it meanwhile).
  Changes made by others while sealbox holds the count are overwritten by the final restore; the
  value restored is always the one found before the first nat sandbox.

No host-wide side effect: ip_forward is one switch for every interface of the host. When sealbox is
the one that turns it on (it was off), the host must still forward nothing but the sandboxes'
traffic, so before writing 1 acquire loads a guard table (nft.forward_guard_ruleset: forward policy
drop, except from the users' veths and replies to them) and keeps its interface list in step with
the users; the last release restores the value first and then removes the guard. When forwarding
was already on (docker, libvirt, a router), there is no guard and the host's forwarding stays
exactly as it was: each sandbox's own table matches only its own veth. `guard` in the state file
records which case holds; the guard is a callable so the unit tests can use a stand-in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from sealbox.errors import SandboxError, SealboxError
from sealbox.util import atomic, flock

DEFAULT_RUN_DIR = Path("/run/sealbox")
SYSCTL = Path("/proc/sys/net/ipv4/ip_forward")


class ForwardState(BaseModel):
    previous: str
    users: list[str] = []
    guard: bool = False  # sealbox turned forwarding on: the guard table forwards only the users' veths
    ifaces: dict[str, str] = {}  # user -> its root-namespace veth


# Loads the guard for these interfaces, or removes it (None).
Guard = Callable[[Sequence[str] | None], None]


def nft_guard(ifaces: Sequence[str] | None) -> None:
    from sealbox.sandbox.host import nft

    if ifaces is None:
        nft.apply(nft.delete_table_doc(nft.FORWARD_GUARD_TABLE, family="ip"))
    else:
        nft.apply(nft.forward_guard_ruleset(ifaces))


def _guard_ifaces(st: ForwardState) -> list[str]:
    """Every user's veth: as recorded, else derived from the owner key "<state dir>:<name>" (a user
    counted by a sealbox that did not record its interface)."""
    from sealbox.sandbox.host.netnames import veth_name

    out = set()
    for user in st.users:
        name = user.rpartition(":")[2]
        if user in st.ifaces:
            out.add(st.ifaces[user])
        else:
            with contextlib.suppress(SealboxError):
                out.add(veth_name(name))
    return sorted(out)


def _paths(run_dir: Path) -> tuple[Path, Path]:
    d = Path(run_dir) / "net"
    return d / "ip_forward.json", d / "ip_forward.lock"


def _locked(run_dir: Path, timeout: float = 30.0) -> contextlib.AbstractContextManager[None]:
    _state_file, lock_file = _paths(run_dir)
    lock_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return flock.exclusive(lock_file, timeout, f"{lock_file} is held by another sealbox command")


def _load(run_dir: Path) -> ForwardState | None:
    state_file, _ = _paths(run_dir)
    try:
        return ForwardState.model_validate_json(state_file.read_bytes())
    except FileNotFoundError:
        return None
    except (ValidationError, ValueError) as e:
        raise SandboxError(
            f"{state_file} is corrupt: {str(e).splitlines()[0]}",
            hint="check net.ipv4.ip_forward by hand, then delete the file",
        ) from None


def _write_sysctl(sysctl: Path, value: str) -> None:
    try:
        sysctl.write_text(value + "\n")
    except OSError as e:
        raise SandboxError(f"cannot write {sysctl}: {e.strerror}", hint="sealbox must run as root") from None


def acquire(run_dir: Path, owner: str, sysctl: Path = SYSCTL, *, iface: str | None = None,
            guard: Guard | None = None) -> ForwardState:
    """Count `owner` (forwarding for veth `iface`) as a user of forwarding; make sure forwarding is on."""
    state_file, _ = _paths(run_dir)
    with _locked(run_dir):
        current = sysctl.read_text().strip()
        st = _load(run_dir) or ForwardState(previous=current)
        if owner not in st.users:
            st.users.append(owner)
        if iface is not None:
            st.ifaces[owner] = iface
        st.guard = st.guard or current != "1"  # sealbox is the one turning it on
        atomic.write_json(state_file, st.model_dump(), mode=0o600)  # remembered before changed
        if st.guard:
            (guard or nft_guard)(_guard_ifaces(st))  # before forwarding goes on: never a moment without it
        if current != "1":
            _write_sysctl(sysctl, "1")
    return st


def release(run_dir: Path, owner: str, sysctl: Path = SYSCTL, *, guard: Guard | None = None) -> bool:
    """Stop counting `owner`; restore the original value when nobody is left. True if restored."""
    state_file, _ = _paths(run_dir)
    if not state_file.exists():
        return False
    with _locked(run_dir):
        st = _load(run_dir)
        if st is None or owner not in st.users:
            return False
        st.users.remove(owner)
        st.ifaces.pop(owner, None)
        if st.users:
            if st.guard:
                (guard or nft_guard)(_guard_ifaces(st))
            atomic.write_json(state_file, st.model_dump(), mode=0o600)
            return False
        _write_sysctl(sysctl, st.previous)  # first off again, then the guard goes
        if st.guard:
            (guard or nft_guard)(None)
        state_file.unlink(missing_ok=True)
    return True


def users(run_dir: Path) -> list[str]:
    st = _load(run_dir)
    return list(st.users) if st else []
