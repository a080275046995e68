"""The jail every VMM runs in: setpriv (drop to the VMM user, no caps, no_new_privs) -> bubblewrap.

Order matters: setpriv runs first as root and drops to the unprivileged VMM user, so bubblewrap runs
unprivileged and builds its namespaces inside a user namespace owned by that user; nothing in the
chain keeps root. Inside: read-only /usr (with Debian's usr-merge symlinks), a private /dev (plus
/dev/kvm when KVM is used), private /proc, tmpfs /tmp, an empty network namespace (the TAP arrives as
an inherited fd) and no way to create further user namespaces.

What the jail deliberately does NOT do: --die-with-parent. The VMM must outlive `sealbox run`. It
stays alive because it is detached in its own session; it is killed through its cgroup (see
host/cgroups.py), which also catches anything it forked.

Host files reach the VMM as file descriptors opened by the root launcher, not as bind mounts:
bubblewrap runs as the VMM user and cannot resolve paths under root-only directories (the state dir
is 0700), and an fd grants access to exactly one object without touching its owner or mode.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from sealbox.sandbox.model import Limits

SETPRIV = "/usr/bin/setpriv"
BWRAP = "/usr/bin/bwrap"
USR_MERGE_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


@dataclass(frozen=True)
class JailSpec:
    uid: int
    gid: int
    kvm_gid: int | None = None  # supplementary group for /dev/kvm (only when KVM is used)
    devices: tuple[str, ...] = ()  # host device nodes bound into the private /dev, e.g. /dev/kvm
    ro_binds: tuple[tuple[str, str], ...] = ()  # (host path, jail path), only for world-traversable paths
    root_links: dict[str, str] = field(default_factory=dict)  # /lib -> usr/lib etc., from the host


def host_root_links(root: Path = Path("/")) -> dict[str, str]:
    """Top-level usr-merge symlinks of the host (Debian 12: /bin -> usr/bin, /lib -> usr/lib, ...)."""
    links = {}
    for name in USR_MERGE_LINKS:
        p = root / name
        if p.is_symlink():
            links[f"/{name}"] = os.readlink(p)
    return links


def setpriv_argv(spec: JailSpec) -> list[str]:
    groups = ["--groups", str(spec.kvm_gid)] if spec.kvm_gid is not None else ["--clear-groups"]
    return [
        SETPRIV, "--reuid", str(spec.uid), "--regid", str(spec.gid), *groups,
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--reset-env", "--",
    ]


def bwrap_argv(spec: JailSpec) -> list[str]:
    argv = [
        BWRAP, "--unshare-all", "--unshare-user", "--disable-userns", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin", "--hostname", "sealbox-vmm",
        "--ro-bind", "/usr", "/usr",
    ]
    for link, target in sorted(spec.root_links.items()):
        argv += ["--symlink", target, link]
    argv += ["--dev", "/dev"]
    for dev in spec.devices:
        argv += ["--dev-bind", dev, dev]
    argv += ["--proc", "/proc", "--tmpfs", "/tmp"]  # noqa: S108 a fresh private tmpfs inside the jail, not the host's /tmp
    for src, dest in spec.ro_binds:
        argv += ["--ro-bind", src, dest]
    argv += ["--chdir", "/", "--"]
    return argv


def jail_argv(spec: JailSpec, command: list[str]) -> list[str]:
    """The full command line: setpriv ... -- bwrap ... -- command..."""
    return [*setpriv_argv(spec), *bwrap_argv(spec), *command]


def rlimits(limits: Limits) -> dict[int, tuple[int, int]]:
    """Resource limits set in the VMM child before exec (inherited through setpriv and bwrap)."""
    return {
        resource.RLIMIT_NOFILE: (limits.nofile, limits.nofile),
        resource.RLIMIT_CORE: (0, 0),  # a VMM core dump would contain guest memory
    }


def apply_rlimits(limits: dict[int, tuple[int, int]]) -> None:
    for res, value in limits.items():
        resource.setrlimit(res, value)
