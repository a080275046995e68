"""STAND-INs for runtime tests that need sandboxes set up on the host but no guest (none of this is product code).

- Firecracker: the firecracker helper's stand-in jailer (tests/integration/firecracker/standin_jailer.py;
  the real binaries and working KVM are absent here). It builds the jail, fills the jailer cgroups and
  runs a "firecracker" process as the sandbox's uid, chrooted in the jail, serving a minimal API.
- Guest readiness: `lifecycle.wait_ready` answered at once, so `run` returns with every host step done
  while no guest ever boots (the stand-in firecracker boots nothing; a QEMU keeps booting in the
  background until it is removed). Host objects, processes and uids are all real.
- uid probes: open/connect as another uid through setpriv, attach to a TAP as another uid.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sealbox.sandbox import lifecycle, planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.host.netns import netns_path
from sealbox.sandbox.host.nsenter import enter_net

STANDIN_JAILER = Path(__file__).resolve().parents[1] / "firecracker" / "standin_jailer.py"
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def standin_image(d: Path) -> Path:
    """A Firecracker-shaped image dir: an ELF-magic vmlinux and a real zstd initrd (nothing boots)."""
    import zstandard

    d.mkdir()
    files = {"vmlinux": b"\x7fELF" + b"k" * 4092, "initrd.cpio.zst": zstandard.ZstdCompressor().compress(b"i" * 8192)}
    for n, b in files.items():
        (d / n).write_bytes(b)
        (d / n).chmod(0o644)
    (d / "manifest.json").write_text(json.dumps({
        "schema": "sealbox.manifest/v1", "name": "standin", "kernel": {"version": "0-standin", "cmdline": ["console=ttyS0"]},
        "boot": {"vmlinux": "vmlinux", "initrd": "initrd.cpio.zst"},
        "artifacts": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in files.items()}}))
    return d


def firecracker_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chroot_base: Path | None = None) -> Path:
    """Point the Firecracker backend at the stand-in jailer; returns the chroot base (default: in tmp_path)."""
    if not STANDIN_JAILER.is_file():
        pytest.skip("the firecracker stand-in jailer is not in this tree")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    jailer = bindir / "jailer"
    jailer.write_text(f"#!{sys.executable}\n" + STANDIN_JAILER.read_text())
    jailer.chmod(0o755)
    fc = bindir / "firecracker"
    fc.write_bytes(b"\x7fELF stand-in firecracker (never executed)")
    monkeypatch.setenv("SEALBOX_FIRECRACKER", str(fc))
    monkeypatch.setenv("SEALBOX_JAILER", str(jailer))
    base = chroot_base or tmp_path / "jails"
    monkeypatch.setenv("SEALBOX_JAILER_CHROOT_BASE", str(base))
    monkeypatch.setenv("SEALBOX_CACHE_DIR", str(tmp_path / "cache"))  # the decompressed-initrd copy goes here
    # the manager only lets Firecracker run with functional KVM: pretend (the stand-in needs none)
    monkeypatch.setattr(planning, "_kvm", lambda root, dry_run: KvmStatus(present=True, functional=True, detail="stand-in"))
    real_exists = Path.exists

    def exists(self: Path, *a: Any, **kw: Any) -> bool:
        return True if str(self) == "/dev/kvm" else real_exists(self, *a, **kw)

    monkeypatch.setattr("pathlib.Path.exists", exists)
    return base


@contextlib.contextmanager
def open_dir() -> Iterator[Path]:
    """A world-traversable temp dir (like /srv/jailer) on the temp dir's filesystem: a jail base where only
    the modes of the jail itself decide who gets in (pytest's own temp dirs are root-only)."""
    d = Path(tempfile.mkdtemp(prefix="sealbox-open-"))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def guest_ready_standin(monkeypatch: pytest.MonkeyPatch) -> None:
    def ready(*_a: Any, **_kw: Any) -> dict[str, Any]:
        return {"boot_id": "stand-in", "hostkeys": [], "banner": "SSH-2.0-stand-in"}

    monkeypatch.setattr(lifecycle, "wait_ready", ready)


# --- acting as another uid ---------------------------------------------------------------------------
_PROBE = r"""
import errno, os, socket, sys
kind, path = sys.argv[1], sys.argv[2]
try:
    if kind == "connect":  # from its directory: socket paths are limited to 108 bytes
        os.chdir(os.path.dirname(path)); s = socket.socket(socket.AF_UNIX); s.connect(os.path.basename(path))
    elif kind == "write":
        os.close(os.open(path, os.O_WRONLY))
    else:
        os.close(os.open(path, os.O_RDONLY))
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno)); sys.exit(0)
print("ok")
"""


def as_uid(uid: int, kind: str, path: Path | str) -> str:
    """'ok' or the errno name of an open (read/write) or connect, done by a process of `uid`/`uid` (setpriv)."""
    argv = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", "--inh-caps=-all", "--",
            sys.executable, "-I", "-c", _PROBE, kind, str(path)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def attach_tap_as(netns: str, tap: str, uid: int) -> str:
    """'ok' or the errno name of TUNSETIFF on `tap` in `netns` by a process of `uid`: /dev/net/tun is
    opened as root first (0600 here; a jailed Firecracker has its own node), as a VMM would hold it."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            enter_net(os.open(netns_path(netns), os.O_RDONLY))
            tun = os.open("/dev/net/tun", os.O_RDWR)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", tap.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        except OSError as e:
            code = e.errno or 254
        except BaseException:  # noqa: BLE001
            code = 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return "ok" if code == 0 else errno.errorcode.get(code, str(code))


def proc_uids(pid: int) -> tuple[int, int]:
    """(real uid, real gid) of a process."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["Uid"].split()[0]), int(status["Gid"].split()[0])
