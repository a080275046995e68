"""Turn the bootstrapped tree into a sealbox guest: users, files, services, hardening, guest protocol units.

Everything here writes into the tree only; commands that must run "inside" (systemctl, useradd) run
with chroot and a scrubbed environment so the host cannot leak into the image.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sealbox.errors import BuildError
from sealbox.guest import files as guest_files
from sealbox.spec.load import LoadedSpec
from sealbox.spec.model import ImageSpec
from sealbox.util.run import run


def chroot_env(epoch: int) -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "TZ": "UTC", "HOME": "/root",
            "SOURCE_DATE_EPOCH": str(epoch), "SYSTEMD_OFFLINE": "1"}


def in_tree(tree: Path, *argv: str, epoch: int, what: str | None = None) -> None:
    run(["chroot", str(tree), *argv], env=chroot_env(epoch), what=what or f"{argv[0]} in the image")


def _write(tree: Path, dest: str, data: bytes, mode: int) -> None:
    path = tree / dest.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_bytes(data)
    os.chmod(path, mode)


def install_guest_protocol(tree: Path) -> None:
    for src, dest in guest_files.SCRIPTS.items():
        _write(tree, f"/usr/lib/sealbox/{dest}", guest_files.read(src), 0o755)
    for unit in guest_files.UNITS:
        _write(tree, f"/usr/lib/systemd/system/{unit}", guest_files.read(unit), 0o644)
    for link, target in guest_files.SYMLINKS.items():  # replaces whatever the bootstrap left (e.g. the host's resolv.conf)
        path = tree / link.lstrip("/")
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
    init = tree / "init"  # the kernel runs /init from an initramfs
    if init.is_symlink() or init.exists():
        init.unlink()
    init.symlink_to("/sbin/init")


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
    for line in (tree / "etc" / file).read_text().splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def create_users(tree: Path, spec: ImageSpec, epoch: int) -> None:
    for name in sorted(spec.users):  # sorted: uids are assigned in a stable order
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
            ids, gids = _passwd_ids(tree, "passwd"), _passwd_ids(tree, "group")
            ssh_dir = tree / "home" / name / ".ssh"
            ssh_dir.mkdir(mode=0o700, exist_ok=True)
            (ssh_dir / "authorized_keys").write_text("".join(k + "\n" for k in user.authorized_keys))
            os.chmod(ssh_dir / "authorized_keys", 0o600)
            for p in (ssh_dir, ssh_dir / "authorized_keys"):
                os.chown(p, ids[name], gids[name])


def lock_accounts(tree: Path, spec: ImageSpec, epoch: int) -> None:
    """Root locked (if asked), every password field unusable, last-change dates fixed to the epoch."""
    days = str(epoch // 86400)
    shadow = tree / "etc/shadow"
    lines = []
    for line in shadow.read_text().splitlines():
        f = line.split(":")
        if len(f) >= 3:
            if f[0] == "root" and spec.hardening.lock_root:
                f[1] = "!*"
            elif not f[1].startswith(("!", "*")):
                f[1] = "!" + f[1]  # no password logins, ever
            if f[2]:
                f[2] = days
        lines.append(":".join(f))
    shadow.write_text("\n".join(lines) + "\n")


def copy_files(tree: Path, loaded: LoadedSpec) -> None:
    users, groups = _passwd_ids(tree, "passwd"), _passwd_ids(tree, "group")
    for i, entry in enumerate(loaded.spec.files):
        if entry.owner not in users or entry.group not in groups:
            raise BuildError(f"files[{i}]: owner {entry.owner}:{entry.group} does not exist in the image")
        src, dest = loaded.resolve_source(entry.source), tree / entry.dest.lstrip("/")
        uid, gid = users[entry.owner], groups[entry.group]
        items = [(src, dest)]
        if src.is_dir():
            items = [(p, dest / p.relative_to(src)) for p in sorted(src.rglob("*"))]
            dest.mkdir(parents=True, exist_ok=True)
            os.chown(dest, uid, gid)
        for s, d in items:
            d.parent.mkdir(parents=True, exist_ok=True)
            if d.is_symlink() or (d.exists() and not d.is_dir()):
                d.unlink()
            if s.is_symlink():
                d.symlink_to(os.readlink(s))
            elif s.is_dir():
                d.mkdir(exist_ok=True)
                os.chmod(d, 0o755)
            else:
                shutil.copyfile(s, d)
                os.chmod(d, entry.mode if entry.mode is not None else (0o755 if os.access(s, os.X_OK) else 0o644))
            os.chown(d, uid, gid, follow_symlinks=False)


def configure(tree: Path, loaded: LoadedSpec, kernel_load: list[str], epoch: int) -> None:
    spec = loaded.spec
    install_guest_protocol(tree)
    (tree / "etc/fstab").write_text("# sealbox: / is the read-only image; see /usr/lib/sealbox/early\n")
    (tree / "etc/machine-id").write_text("")  # empty: systemd makes a transient one at boot
    if kernel_load:
        _write(tree, "/etc/modules-load.d/sealbox.conf", "".join(m + "\n" for m in kernel_load).encode(), 0o644)
    _write(tree, "/etc/hostname", b"localhost\n", 0o644)
    # no netbase in the image: without this, "localhost" does not resolve (ssh -L 3389:localhost:3389)
    _write(tree, "/etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644)
    if spec.hardening.ssh:
        _write(tree, "/etc/ssh/sshd_config.d/00-sealbox.conf", guest_files.read("sshd-sealbox.conf"), 0o644)
        _write(tree, "/etc/systemd/system/ssh.service.d/sealbox.conf", guest_files.read("ssh-service-sealbox.conf"), 0o644)
    if spec.hardening.firewall:
        _write(tree, "/etc/nftables.conf", firewall_conf(spec).encode(), 0o755)
    create_users(tree, spec, epoch)
    lock_accounts(tree, spec, epoch)
    copy_files(tree, loaded)
    features, feature_files = guest_files.feature_files(spec.persistent.disk if spec.persistent.enable else [], spec.cloud.providers)
    for dest, (data, mode) in feature_files.items():
        _write(tree, dest, data, mode)
    if spec.persistent.enable:  # the mount point: / is read-only at run time
        (tree / guest_files.PERSISTENT_MOUNT.lstrip("/")).mkdir(mode=0o755, exist_ok=True)

    enable = list(guest_files.UNITS) + features
    if spec.hardening.ssh:
        enable.append("ssh.service")
    if spec.hardening.firewall:
        enable.append("nftables.service")
    if spec.hardening.console_getty:
        enable.append("console-getty.service")
    enable += [u for u in spec.services.enable if u not in enable]
    order = guest_files.ready_order(enable)
    if order:
        _write(tree, guest_files.READY_ORDER_DROPIN, order, 0o644)
    mask = [u for u in spec.services.mask if u not in enable]
    if not spec.hardening.console_getty:
        mask += ["getty@tty1.service", "serial-getty@ttyS0.service", "console-getty.service", "getty.target"]
    # default.target: boot straight to multi-user (no graphical target pulls)
    in_tree(tree, "systemctl", "set-default", "multi-user.target", epoch=epoch)
    in_tree(tree, "systemctl", "enable", *enable, epoch=epoch, what="systemctl enable")
    if mask:
        in_tree(tree, "systemctl", "mask", *sorted(set(mask)), epoch=epoch, what="systemctl mask")
