"""Turn the bootstrapped tree into a sealbox guest: users, files, services, hardening, guest protocol units.

Everything here writes into the tree only, through builder.intree (paths resolved as if the tree were /, so
no symlink in the image can redirect a write to the host); commands that must run "inside" (systemctl,
useradd) run with chroot and a scrubbed environment so the host cannot leak into the image.
"""

from __future__ import annotations

import os
from pathlib import Path

from sealbox.builder.intree import Tree
from sealbox.errors import BuildError
from sealbox.guest import files as guest_files
from sealbox.spec.load import LoadedSpec
from sealbox.spec.model import ImageSpec
from sealbox.util.run import run

HOSTS = b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def chroot_env(epoch: int) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/root",
            "SOURCE_DATE_EPOCH": str(epoch), "SYSTEMD_OFFLINE": "1"}


def in_tree(tree: Path, *argv: str, epoch: int, what: str | None = None) -> None:
    run(["chroot", str(tree), *argv], env=chroot_env(epoch), what=what or f"{argv[0]} in the image")


def write_in_tree(tree: Path, dest: str, data: bytes, mode: int) -> None:
    """Create `dest` in the image afresh (whatever stood there, a symlink included, is replaced), root-owned."""
    with Tree(tree) as t:
        t.write_bytes(dest, data, mode)


def install_guest_protocol(tree: Path) -> None:
    with Tree(tree) as t:
        for src, dest in guest_files.SCRIPTS.items():
            t.write_bytes(f"/usr/lib/sealbox/{dest}", guest_files.read(src), 0o755)
        for unit in guest_files.UNITS:
            t.write_bytes(f"/usr/lib/systemd/system/{unit}", guest_files.read(unit), 0o644)
        for link, target in guest_files.SYMLINKS.items():  # replaces whatever the bootstrap left (e.g. the host's resolv.conf)
            t.symlink(link, target)
        t.symlink("/init", "/sbin/init")  # the kernel runs /init from an initramfs


def _refuse_pre_ready_units(t: Tree, enabled: list[str]) -> None:
    """Every unit the spec enables starts after the ready marker (guest_files.ready_order); one that orders itself
    before it makes a cycle, and systemd would silently drop a job at boot. Fail the build naming it instead."""
    for unit in enabled:
        if unit in guest_files.UNITS or unit in guest_files.FEATURE_UNITS or unit in guest_files.READY_AFTER:
            continue  # the guest protocol's own units (sealbox's, not the spec's) may come first
        for d in ("/etc/systemd/system", "/usr/lib/systemd/system"):
            try:
                text = t.read_bytes(f"{d}/{unit}").decode(errors="replace")
            except (BuildError, OSError):
                continue
            before = {w for line in text.splitlines() if line.strip().startswith("Before=") for w in line.split("=", 1)[1].split()}
            if "sealbox-ready.service" in before:
                raise BuildError(f"services.enable: {unit} orders itself Before=sealbox-ready.service, but every unit a spec "
                                 "enables starts after the ready marker (an ordering cycle systemd would break at boot)",
                                 hint=f"drop sealbox-ready.service from {unit}'s Before=")
            break


def firewall_conf(spec: ImageSpec) -> str:
    h = spec.hardening
    rules = ["iif lo accept", "ct state established,related accept", "ct state invalid drop",
             "icmp type { destination-unreachable, time-exceeded, parameter-problem } accept",
             "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem, "
             "nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept"]
    if h.firewall_allow_tcp:
        rules.append(f"tcp dport {{ {', '.join(map(str, sorted(set(h.firewall_allow_tcp))))} }} accept")
    if h.firewall_allow_udp:
        rules.append(f"udp dport {{ {', '.join(map(str, sorted(set(h.firewall_allow_udp))))} }} accept")
    body = "\n".join(f"\t\t{r}" for r in rules)
    return ("#!/usr/sbin/nft -f\n# sealbox: default-deny incoming; only what the image declares is allowed.\n"
            "flush ruleset\n\ntable inet sealbox {\n"
            f"\tchain input {{\n\t\ttype filter hook input priority filter; policy drop;\n{body}\n\t}}\n"
            "\tchain forward {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n"
            "\tchain output {\n\t\ttype filter hook output priority filter; policy accept;\n\t}\n}\n")


def _passwd_ids(tree: Path, file: str) -> dict[str, int]:
    out = {}
    with Tree(tree) as t:
        text = t.read_bytes(f"/etc/{file}").decode(errors="replace")
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def create_users(tree: Path, spec: ImageSpec, epoch: int) -> None:
    # fixed uids first, then the others in name order (a stable order): useradd gives the next uid after the highest,
    # so a user without one made first could take a uid another user fixes
    for name in sorted(spec.users, key=lambda n: (spec.users[n].uid is None, n)):
        user = spec.users[name]
        groups, existing = _passwd_ids(tree, "group"), _passwd_ids(tree, "passwd")
        if name in existing:
            raise BuildError(f"users.{name}: {name!r} is already an account in the image (uid {existing[name]}, created by a package)",
                             hint="choose another user name")
        if name in groups:
            raise BuildError(f"users.{name}: a group named {name!r} already exists in the image", hint="choose another user name")
        taken = {uid: n for n, uid in existing.items()}
        if user.uid is not None and user.uid in taken:
            raise BuildError(f"users.{name}.uid: {user.uid} is already used by {taken[user.uid]!r} in the image",
                             hint="choose another uid or leave it out")
        for g in user.groups:
            if g not in groups:
                raise BuildError(f"users.{name}.groups: group {g!r} does not exist in the image", hint="add the package that creates it")
        argv = ["useradd", "--create-home", "--user-group", "--shell", user.shell]
        if user.uid is not None:
            argv += ["--uid", str(user.uid)]
        if user.groups:
            argv += ["--groups", ",".join(user.groups)]
        in_tree(tree, *argv, name, epoch=epoch, what=f"useradd {name}")
        if user.authorized_keys:
            uid, gid = _passwd_ids(tree, "passwd")[name], _passwd_ids(tree, "group")[name]
            keys = "".join(k + "\n" for k in user.authorized_keys).encode()
            with Tree(tree) as t:
                t.mkdir(f"/home/{name}/.ssh", 0o700, uid, gid, what=f"users.{name}.authorized_keys")
                t.write_bytes(f"/home/{name}/.ssh/authorized_keys", keys, 0o600, uid, gid, what=f"users.{name}.authorized_keys")


def lock_accounts(tree: Path, spec: ImageSpec, epoch: int) -> None:
    """Root locked (if asked), every password field unusable, last-change dates fixed to the epoch."""
    days = str(epoch // 86400)
    lines = []
    with Tree(tree) as t:
        text = t.read_bytes("/etc/shadow").decode()
        for line in text.splitlines():
            f = line.split(":")
            if len(f) >= 3:
                if f[0] == "root" and spec.hardening.lock_root:
                    f[1] = "!*"
                elif not f[1].startswith(("!", "*")):
                    f[1] = "!" + f[1]  # no password logins, ever
                if f[2]:
                    f[2] = days
            lines.append(":".join(f))
        t.rewrite("/etc/shadow", ("\n".join(lines) + "\n").encode())


def copy_files(tree: Path, loaded: LoadedSpec) -> None:
    users, groups = _passwd_ids(tree, "passwd"), _passwd_ids(tree, "group")
    with Tree(tree) as t:
        for i, entry in enumerate(loaded.spec.files):
            if entry.owner not in users or entry.group not in groups:
                raise BuildError(f"files[{i}]: owner {entry.owner}:{entry.group} does not exist in the image")
            _copy_entry(t, f"files[{i}].dest", loaded.resolve_source(entry.source), entry.dest.rstrip("/") or "/",
                        users[entry.owner], groups[entry.group], entry.mode)


def _copy_entry(t: Tree, what: str, src: Path, dest: str, uid: int, gid: int, mode: int | None) -> None:
    """One files[] entry: a file, or a directory copied item by item (its symlinks copied as links, never followed)."""
    items = [(src, dest)]
    if src.is_dir() and not src.is_symlink():
        t.mkdir(dest, None, uid, gid, what=what)
        items = [(p, f"{dest}/{p.relative_to(src).as_posix()}") for p in sorted(src.rglob("*"))]
    for s, d in items:
        if s.is_symlink():
            t.symlink(d, os.readlink(s), uid, gid, what=what)
        elif s.is_dir():
            t.mkdir(d, 0o755, uid, gid, what=what)
        else:
            t.copy_file(d, s, mode if mode is not None else (0o755 if os.access(s, os.X_OK) else 0o644), uid, gid, what=what)
    # a final link is replaced, never followed: when that link was also on the way to it (dest /l/l with l -> /),
    # the written entry is no longer at `dest` as the guest will see it; a chroot's `cp` would have failed too
    if src.is_symlink():
        return  # the link itself is the entry (where it points is the guest's business)
    got = t.resolve(dest)
    if got is None or got.is_dir() != src.is_dir():
        raise BuildError(f"{what}: writing {dest!r} replaced a link on its own path, so the entry is not at {dest!r} in the image",
                         hint="name the destination by its real path inside the image")


def configure(tree: Path, loaded: LoadedSpec, kernel_load: list[str], epoch: int) -> None:
    spec = loaded.spec
    install_guest_protocol(tree)
    with Tree(tree) as t:
        t.rewrite("/etc/fstab", b"# sealbox: / is the read-only image; see /usr/lib/sealbox/early\n")
        t.rewrite("/etc/machine-id", b"")  # empty: systemd makes a transient one at boot
        if kernel_load:
            t.write_bytes("/etc/modules-load.d/sealbox.conf", "".join(m + "\n" for m in kernel_load).encode(), 0o644)
        t.write_bytes("/etc/hostname", b"localhost\n", 0o644)
        # no netbase in the image: without this, "localhost" does not resolve (ssh -L 3389:localhost:3389)
        t.write_bytes("/etc/hosts", HOSTS, 0o644)
        if spec.hardening.ssh:
            t.write_bytes("/etc/ssh/sshd_config.d/00-sealbox.conf", guest_files.read("sshd-sealbox.conf"), 0o644)
            t.write_bytes("/etc/systemd/system/ssh.service.d/sealbox.conf", guest_files.read("ssh-service-sealbox.conf"), 0o644)
        if spec.hardening.firewall:
            t.write_bytes("/etc/nftables.conf", firewall_conf(spec).encode(), 0o755)
    create_users(tree, spec, epoch)
    lock_accounts(tree, spec, epoch)
    copy_files(tree, loaded)
    own: list[str] = []  # units of sealbox's own modules: not ordered after the ready marker like a spec's
    if spec.bob.enable:
        from sealbox.builder import bob_image

        with Tree(tree) as t:
            own = bob_image.install(t, loaded)
    features, feature_files = guest_files.feature_files(spec.persistent.disk if spec.persistent.enable else [], spec.cloud.providers)
    with Tree(tree) as t:
        for dest, (data, mode) in feature_files.items():
            t.write_bytes(dest, data, mode)
        if spec.persistent.enable:  # the mount point: / is read-only at run time
            t.mkdir(guest_files.PERSISTENT_MOUNT, 0o755)

    enable = list(guest_files.UNITS) + features + own
    if spec.hardening.ssh:
        enable.append("ssh.service")
    if spec.hardening.firewall:
        enable.append("nftables.service")
    if spec.hardening.console_getty:
        enable.append("console-getty.service")
    enable += [u for u in spec.services.enable if u not in enable]
    order = guest_files.ready_order([u for u in enable if u not in own])
    if order:
        with Tree(tree) as t:
            _refuse_pre_ready_units(t, [u for u in enable if u not in own])
            t.write_bytes(guest_files.READY_ORDER_DROPIN, order, 0o644)
    mask = [u for u in spec.services.mask if u not in enable]
    if not spec.hardening.console_getty:
        mask += ["getty@tty1.service", "serial-getty@ttyS0.service", "console-getty.service", "getty.target"]
    # default.target: boot straight to multi-user (no graphical target pulls)
    in_tree(tree, "systemctl", "set-default", "multi-user.target", epoch=epoch)
    in_tree(tree, "systemctl", "enable", *enable, epoch=epoch, what="systemctl enable")
    if mask:
        in_tree(tree, "systemctl", "mask", *sorted(set(mask)), epoch=epoch, what="systemctl mask")
