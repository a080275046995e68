"""The unprivileged system user every VMM runs as (`sealbox-vmm`), created on first use.

It has no home, no login shell and no password; it is a member of `kvm` (when that group exists) so
a jailed VMM can open /dev/kvm. The user persists across sandboxes, so it is not a Step.
"""

from __future__ import annotations

import grp
import pwd
from dataclasses import dataclass

from sealbox.errors import SandboxError, ToolError
from sealbox.util.run import run, which

VMM_USER = "sealbox-vmm"
KVM_GROUP = "kvm"


@dataclass(frozen=True)
class VmmUser:
    name: str
    uid: int
    gid: int
    kvm_gid: int | None  # gid of `kvm` if the user is a member of it


def kvm_gid() -> int | None:
    try:
        return grp.getgrnam(KVM_GROUP).gr_gid
    except KeyError:
        return None


def lookup(name: str = VMM_USER) -> VmmUser | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    kg = kvm_gid()
    member = kg is not None and name in grp.getgrgid(kg).gr_mem
    return VmmUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid, kvm_gid=kg if member else None)


def ensure_vmm_user(name: str = VMM_USER) -> VmmUser:
    """Create the user/group if missing (idempotent); add it to `kvm` if that group exists."""
    user = lookup(name)
    kg = kvm_gid()
    try:
        if user is None:
            which("useradd")
            argv = ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--comment", "sealbox VMM (unprivileged)"]
            if kg is not None:
                argv += ["--groups", KVM_GROUP]
            run([*argv, name], what=f"useradd {name}")
        elif kg is not None and user.kvm_gid is None:
            run(["usermod", "--append", "--groups", KVM_GROUP, name], what=f"usermod {name}")
    except ToolError as e:
        raise SandboxError(
            f"cannot create the VMM system user {name!r}: {e}",
            hint="run sealbox as root, or create it with: useradd --system --user-group --no-create-home "
            f"--shell /usr/sbin/nologin {name}",
        ) from None
    user = lookup(name)
    if user is None:
        raise SandboxError(f"the VMM system user {name!r} still does not exist after useradd", hint="check /etc/passwd and nsswitch")
    if user.uid == 0 or user.gid == 0:
        raise SandboxError(f"the VMM user {name!r} has uid/gid 0; VMMs must never run as root", hint=f"remove it (userdel {name}) and rerun")
    return user
