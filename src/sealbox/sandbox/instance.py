"""The sandbox's per-instance files: its client SSH key pair and its instance disk (guest.instance).

Everything lives in the sandbox's state directory, never in the image directory. The files are
written by InstanceFilesStep so that a crash between writing and recording leaves nothing `gc`
cannot find (the sandbox dir itself is removed with the record anyway).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

from sealbox.errors import SandboxError
from sealbox.guest.instance import CRYPT_RE, InstanceData, mrconfigid, render
from sealbox.sandbox.steps import Step
from sealbox.util import atomic
from sealbox.util.run import run, which

KEY_NAME = "id_ed25519"
DISK_NAME = "instance.img"
PASSWORDS_NAME = "passwords.json"  # {user: password} of the users the image gives a password per sandbox (root-only)


def new_password() -> str:
    """24 characters of the URL-safe alphabet (144 random bits): typed at a login box, never guessed."""
    return secrets.token_urlsafe(18)


def crypt_sha512(password: str) -> str:
    """The SHA-512 crypt(3) hash ($6$, random salt) that /etc/shadow takes, by `openssl passwd` (password on stdin)."""
    out = run(["openssl", "passwd", "-6", "-stdin"], input=password.encode() + b"\n", what="openssl passwd", timeout=30)
    value = out.stdout.decode("ascii", "replace").strip()
    if not value.startswith("$6$") or not CRYPT_RE.fullmatch(value):
        raise SandboxError("openssl passwd -6 did not print a SHA-512 crypt hash", hint="check the host's openssl")
    return value


def read_passwords(sandbox_dir: Path) -> dict[str, str]:
    """The passwords `run` made for this sandbox's users ({} if its image gives none)."""
    path = Path(sandbox_dir) / PASSWORDS_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise SandboxError(f"{path} is unreadable: {e}", hint="the sandbox's state is damaged; recreate it") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SandboxError(f"{path} is not a table of user -> password", hint="the sandbox's state is damaged; recreate it")
    return data


def _keygen_argv(path: Path, comment: str) -> list[str]:
    return ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]


# Key generation started ahead of its step (see prestart_client_key), by key path.
_PENDING: dict[str, subprocess.Popen[bytes]] = {}


def prestart_client_key(path: Path, comment: str) -> None:
    """Start ssh-keygen now so it runs while the network is set up; InstanceFilesStep collects it.

    The files land in the sandbox's own state dir, which `rm`/`gc` delete with the record, and the
    step's undo removes them too, so starting before the step is recorded leaves nothing behind."""
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)  # ssh-keygen would prompt before overwriting
    argv = _keygen_argv(path, comment)
    with contextlib.suppress(OSError):  # the step runs ssh-keygen itself and reports the problem
        _PENDING[str(path)] = subprocess.Popen([which(argv[0]), *argv[1:]], stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def discard_prestarted(sandbox_dir: Path) -> None:
    """Stop and reap a prestarted ssh-keygen of a failed run before its directory is deleted."""
    for key in [k for k in _PENDING if Path(k).parent == Path(sandbox_dir)]:
        proc = _PENDING.pop(key)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def generate_client_key(path: Path, comment: str) -> str:
    """A fresh ed25519 key pair at `path` (+ .pub) made by ssh-keygen; returns the public key line."""
    pending = _PENDING.pop(str(path), None)
    ok = False
    if pending is not None:
        try:
            _out, err = pending.communicate(timeout=30)
            ok = pending.returncode == 0
        except subprocess.TimeoutExpired:
            pending.kill()
            pending.wait(timeout=5)
    if not ok:
        for p in (path, path.with_name(path.name + ".pub")):
            p.unlink(missing_ok=True)
        run(_keygen_argv(path, comment), what="ssh-keygen", timeout=30)
    os.chmod(path, 0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


class InstanceFilesStep(Step):
    """Writes the sandbox's client key pair and instance disk into its state dir; undo deletes them."""

    kind = "instance-files"
    sandbox_dir: str
    hostname: str
    address: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address
    ssh_user: str = "root"
    users: tuple[str, ...] = ()  # more users who get the sandbox's key (the image's declared users)
    dns: tuple[ipaddress.IPv4Address, ...] = ()  # resolvers the guest writes to its resolv.conf
    disk_size: int | None = None  # a restore: the size of the snapshot's instance disk (its guest knows no other)
    password_users: tuple[str, ...] = ()  # users who get a fresh password (users.<name>.instance_password)

    @property
    def key_path(self) -> Path:
        return Path(self.sandbox_dir) / KEY_NAME

    @property
    def disk_path(self) -> Path:
        return Path(self.sandbox_dir) / DISK_NAME

    @property
    def passwords_path(self) -> Path:
        return Path(self.sandbox_dir) / PASSWORDS_NAME

    def describe(self) -> str:
        dns = f", dns {', '.join(map(str, self.dns))}" if self.dns else ", no resolver"
        users = ", ".join(dict.fromkeys((self.ssh_user, *self.users)))
        pw = f"; a fresh password for {', '.join(self.password_users)} in {self.passwords_path}" if self.password_users else ""
        return (f"write client key {self.key_path} (ed25519, for {users}) and instance disk {self.disk_path} "
                f"(hostname {self.hostname}, {self.address}{dns}){pw}")

    def do(self) -> dict[str, Any]:
        pub = generate_client_key(self.key_path, f"sealbox-{self.hostname}")
        hashes = {}
        if self.password_users:  # kept for `sealbox rdp`; the guest gets only the hash, as a secret field
            passwords = {u: new_password() for u in self.password_users}
            atomic.write_json(self.passwords_path, passwords, mode=0o600)
            hashes = {u: crypt_sha512(p) for u, p in passwords.items()}
        data = self.data(pub, hashes)
        # root-only: QEMU receives it as an fd; Firecracker's staging gives the jail its own copy/link
        atomic.write_bytes(self.disk_path, render(data, size=self.disk_size), mode=0o600)
        # the TDX launch binds the TD to this instance data (MRCONFIGID); `attest quote --instance` checks it
        return {"public_key": pub, "mrconfigid": mrconfigid(data).hex()}

    def data(self, public_key: str, password_hashes: dict[str, str] | None = None) -> InstanceData:
        users = dict.fromkeys((self.ssh_user, *self.users))
        return InstanceData(hostname=self.hostname, address=self.address, gateway=self.gateway, dns=self.dns,
                            authorized_keys={u: (public_key,) for u in users}, password_hashes=password_hashes or {})

    def undo(self, outputs: dict[str, Any]) -> None:
        for p in (self.key_path, self.key_path.with_name(KEY_NAME + ".pub"), self.disk_path, self.passwords_path):
            p.unlink(missing_ok=True)
