"""The searcher's workload for real: a small sealbox-built OCI archive run by Debian's podman ROOTLESS, as an
unprivileged uid, the way bob-workload runs it, then bob-netguard's rules put into that container's own network
namespace, UDP sent to the published input-only port (each wall alone stops the answer: the container's rules, and
the guest's production rule set), and bob-logs reading conmon's log.

Nothing on the host changes: the test's uid ("searcher", a free uid with a subordinate range of its own) exists only
in a mount namespace per podman command, where /etc/passwd, /etc/group, /etc/subuid and /etc/subgid are bind-mounted
copies with it added; podman runs in a network namespace "guest" the test made (slirp4netns and the published port
live there), joined by a veth to "outside", which sends the datagrams. Storage (vfs), run and home directories are
the test's; runc (crun refuses this host's hybrid cgroups), which needs podman's --cgroups=disabled dropped. At the end the container is
removed, every process of the test's uid is killed by pid, and the namespaces and directories go.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from bobguest import guest_root, load
from imagecache import spec_image
from sealbox.builder.bob_firewall import ruleset
from sealbox.spec.bob import Bob

bw, ng, bl = load("bob_workload"), load("bob_netguard"), load("bob_logs")
PROBE = str(Path(__file__).with_name("bobprobe.py"))
GUEST, OUTSIDE = "10.63.253.1", "10.63.253.2"
PORT = 27017
BOB = Bob(enable=True, builder_bundle=[f"{OUTSIDE}:8645"], builder_state_diff=[f"{OUTSIDE}:8646"], workload="w.tar")
SPEC = """\
name = "bobwork"
[packages]
include = ["socat", "passwd"]  # passwd: the build locks root in /etc/shadow
[oci]
entrypoint = ["/bin/sh", "-c"]
cmd = ['echo "workload started"; exec socat -v UDP4-RECVFROM:27017,fork EXEC:cat']
compression_level = 1
[output]
formats = ["oci"]
"""
# run as `sh -c SETUP sh PASSWD GROUP SUBUID SUBGID TUN UID GID CMD...` inside `unshare --mount`; TUN: a tun device
# node of the test's with mode 0666, as a Debian guest has it (udev, systemd's static nodes), where this host's is 0600
SETUP = """set -e
mount --bind "$1" /etc/passwd
mount --bind "$2" /etc/group
mount --bind "$3" /etc/subuid
mount --bind "$4" /etc/subgid
mount --bind "$5" /dev/net/tun
uid=$6 gid=$7
shift 7
exec setpriv --reuid "$uid" --regid "$gid" --clear-groups --inh-caps=-all "$@"  # newuidmap is setuid: keep the bounding set
"""

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, a uid of its own)")]


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=30)


@dataclass
class Searcher:
    uid: int
    base: Path
    guest_ns: str
    outside_ns: str
    files: list[str]
    sub: int  # the first of its 65536 subordinate ids (the container's processes run as these)

    @property
    def home(self) -> Path:
        return self.base / "home"

    @property
    def runtime(self) -> Path:
        return self.base / "run"

    def env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.runtime),
                "TMPDIR": str(self.base / "tmp"), "CONTAINERS_CONF": str(self.base / "containers.conf"),
                "CONTAINERS_REGISTRIES_CONF": str(self.base / "registries.conf"),
                "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf")}

    def argv(self, argv: list[str]) -> list[str]:
        if argv[0] == "podman":  # this host's needs (see the module docstring), before the program's own arguments
            # the one change to bob-workload's own argv: runc, which this host's hybrid cgroups need (crun refuses
            # them even with --cgroups=disabled), cannot run without cgroups; rootless on cgroup v1 it makes none
            argv = ["podman", "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
                    "--runtime", "runc", "--log-level", "error", *(a for a in argv[1:] if a != "--cgroups=disabled")]
        # nsenter, not `ip netns exec`, which mounts a fresh /sys without the cgroup mounts runc looks for
        return ["nsenter", f"--net=/run/netns/{self.guest_ns}", "--", "unshare", "--mount", "--propagation", "private", "--",
                "sh", "-c", SETUP, "sh", *self.files, str(self.uid), str(self.uid), *argv]

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(argv), stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self.env(),
                              cwd=self.home, timeout=300, check=False)

    def processes(self) -> list[int]:
        out = []
        for p in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                if p.name.isdigit() and (p.stat().st_uid == self.uid or self.sub <= p.stat().st_uid < self.sub + 65536):
                    out.append(int(p.name))
        return out


# The test's ids: a block of 2 x 65536 (its uid, then its subordinate range) from 0x78000000 on: above sealbox's
# sandbox uids (0x70000000 + 64Ki, sandbox/host/users.py), below systemd's foreign range and 2^31, clear of
# DynamicUser's 61184-65519 and of useradd's subordinate ids. A block is taken only if no process and no passwd or
# group entry uses any id in it, so the cleanup, which ends every process running as one of them, ends only ours.
BLOCK_BASE, BLOCK = 0x78000000, 0x20000


def _free_block() -> tuple[int, int]:
    """(uid, first subordinate id) of a block nothing uses."""
    used = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    used |= {_owner(p) for p in Path("/proc").iterdir() if p.name.isdigit()}
    for _ in range(100):
        uid = BLOCK_BASE + BLOCK * secrets.randbelow(256)
        if not any(uid <= u < uid + BLOCK for u in used):
            return uid, uid + 0x10000
    raise AssertionError("no free block of ids")


def _owner(p: Path) -> int:
    try:
        return p.stat().st_uid
    except OSError:
        return -1


@pytest.fixture(scope="module")
def searcher() -> Iterator[Searcher]:
    for tool in ("podman", "runc", "newuidmap", "slirp4netns", "setpriv", "nft", "nsenter"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (run scripts/setup.sh)")
    # not under pytest's 0700 temp root: the test's uid must reach it; short: conmon's socket paths are bounded
    base = Path(tempfile.mkdtemp(prefix="sbbw-", dir=os.environ.get("TMPDIR") or "/var/tmp"))  # noqa: S108
    base.chmod(0o755)
    (uid, sub), tag = _free_block(), secrets.token_hex(3)
    etc = base / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(Path("/etc/passwd").read_text() + f"searcher:x:{uid}:{uid}::{base / 'home'}:/bin/sh\n")
    (etc / "group").write_text(Path("/etc/group").read_text() + f"searcher:x:{uid}:\n")
    (etc / "subuid").write_text(f"searcher:{sub}:65536\n")
    (etc / "subgid").write_text(f"searcher:{sub}:65536\n")
    os.mknod(base / "tun", 0o666 | stat.S_IFCHR, os.makedev(10, 200))
    (base / "tun").chmod(0o666)
    s = Searcher(uid, base, f"sbtbobw{tag}g", f"sbtbobw{tag}o",
                 [*(str(etc / n) for n in ("passwd", "group", "subuid", "subgid")), str(base / "tun")], sub)
    for d in ("home", "run", "tmp", "persistent/.bob-work", "persistent/searcher/data"):
        (base / d).mkdir(parents=True)
        os.chown(base / d, uid, uid)
    (base / "run").chmod(0o700)
    (base / "storage.conf").write_text(f'[storage]\ndriver = "vfs"\nrunroot = "{base}/run/storage"\n'
                                       f'graphroot = "{base}/home/storage"\n')
    (base / "containers.conf").write_text("")
    (base / "registries.conf").write_text("")
    made: list[str] = []
    try:
        for ns in (s.guest_ns, s.outside_ns):
            _ip("netns", "add", ns)
            made.append(ns)
        _ip("-n", s.guest_ns, "link", "add", "vg", "type", "veth", "peer", "name", "vo", "netns", s.outside_ns)
        _ip("-n", s.guest_ns, "addr", "add", f"{GUEST}/24", "dev", "vg")
        _ip("-n", s.outside_ns, "addr", "add", f"{OUTSIDE}/24", "dev", "vo")
        for ns, dev in ((s.guest_ns, "vg"), (s.outside_ns, "vo")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        yield s
    finally:
        s(["podman", "rm", "--force", "--time", "0", "searcher"])
        for _ in range(50):  # conmon, slirp4netns, rootlessport, podman's pause process, the container: the test's ids
            if not s.processes():
                break
            for pid in s.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        left = s.processes()
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False, timeout=300)
        assert not left, f"processes of the test's uid left: {left}"


def _udp(s: Searcher, payload_count: int = 1) -> str:
    target = f"{GUEST}:udp:{PORT}"
    out = subprocess.run(["ip", "netns", "exec", s.outside_ns, sys.executable, "-I", PROBE, "probe", target],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return out.split()[-1]


def _wait(what: str, ok: object, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if ok():  # type: ignore[operator]
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def test_rootless_workload_channel_rules_and_logs(searcher: Searcher, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    s = searcher
    archive = s.base / "workload.tar"
    shutil.copyfile(Path(spec_image("bob-workload", SPEC)) / "bobwork.oci.tar", archive)
    root = guest_root(tmp_path / "root")  # bob-netguard's and bob-logs' view of the guest
    (root / "proc").rename(root / "proc.fake")
    (root / "proc").symlink_to("/proc")
    (root / "persistent").rmdir()
    (root / "persistent").symlink_to(s.base / "persistent")
    (root / "run").symlink_to(s.runtime.parent / "runlink")
    (s.runtime.parent / "runlink").mkdir()
    (s.runtime.parent / "runlink/sealbox-bob-work").symlink_to(s.runtime)
    node_ipc = s.base / "node-ipc"  # the node service's directory, as the workload unit makes it (0755, root's)
    node_ipc.mkdir(mode=0o755)
    for name, value in (("ARCHIVE", str(archive)), ("PIDFILE", str(s.runtime / "container.pid")),
                        ("RAW_LOG", str(s.base / "persistent/.bob-work/container.log")),
                        ("DATA", str(s.base / "persistent/searcher/data")), ("NODE_IPC", str(node_ipc))):
        monkeypatch.setattr(bw, name, value)

    start = bw.Workload(s, port=PORT).prepare()
    assert start == ["podman", "--cgroup-manager", "cgroupfs", "start", "--attach", "searcher"]
    calls: list[list[str]] = []

    def recording(argv: list[str]) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        return s(argv)

    assert bw.Workload(recording, port=PORT).prepare() == start  # a later start: podman holds the archive's image id
    assert [c[3:5] for c in calls] == [["image", "inspect"], ["container", "inspect"]]  # nothing loaded or made again
    run = subprocess.Popen(s.argv(start), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env=s.env(), cwd=s.home)
    try:
        def started() -> bool:
            if run.poll() is not None:
                raise AssertionError(f"podman start ended ({run.returncode}): {run.stderr.read()[-600:]!r}")  # type: ignore[union-attr]
            pidfile = s.runtime / "container.pid"
            return pidfile.is_file() and pidfile.read_text().strip().isdigit()

        _wait("the container's pidfile", started, 60)
        raw = s.base / "persistent/.bob-work/container.log"
        _wait("the workload's first log line", lambda: raw.is_file() and b"workload started" in raw.read_bytes())
        # the capabilities the container's shell gets (the kernel's word): none to change rules or send raw packets
        status = s(["podman", "exec", "searcher", "cat", "/proc/self/status"])
        assert status.returncode == 0, status.stderr
        bounding = int(next(ln.split()[1] for ln in status.stdout.splitlines() if ln.startswith("CapBnd:")), 16)
        for name, bit in (("NET_ADMIN", 12), ("NET_RAW", 13), ("SYS_ADMIN", 21)):
            assert not bounding & (1 << bit), f"the container holds CAP_{name}"
        assert bounding & (1 << 0)  # CAP_CHOWN: podman's defaults are there, the mask is read right
        monkeypatch.setattr(ng, "pwd", SimpleNamespace(getpwnam=lambda name: SimpleNamespace(pw_uid=s.uid)))
        guard = ng.Guard(root)
        with pytest.raises(ng.Failed, match="lacks"):
            guard.verify()
        # the control case: without the container's rules (and no guest rules here) the echo comes back
        assert _udp(s) == "open"
        assert "loaded and verified" in guard.apply()
        assert "present" in guard.verify()
        before = raw.read_bytes().count(b"length=5")
        assert _udp(s) == "closed"  # the echo is dropped inside the container's own namespace...
        _wait("the datagram in the log", lambda: raw.read_bytes().count(b"length=5") > before, 30)  # ...yet it arrived
        # the other wall alone: the guest's production rule set in "guest", the container's rules taken out again
        subprocess.run(["nsenter", f"--net=/run/netns/{s.guest_ns}", "--", "nft", "-j", "-f", "-"], check=True, timeout=30,
                       input=json.dumps(ruleset("production", BOB)).encode(), capture_output=True)
        fd = guard.open_netns()
        try:
            subprocess.run(["nsenter", f"--net=/proc/self/fd/{fd}", "--", "nft", "delete", "table", "inet", ng.TABLE],
                           check=True, timeout=30, pass_fds=(fd,), capture_output=True)
        finally:
            os.close(fd)
        with pytest.raises(ng.Failed, match="lacks"):
            guard.verify()
        before = raw.read_bytes().count(b"length=5")
        assert _udp(s) == "closed"  # podman's forwarder sends the echo on from the guest's port 27017: dropped there
        _wait("the datagram in the log", lambda: raw.read_bytes().count(b"length=5") > before, 30)
        # bob-logs turns conmon's records into delayed lines
        writer = bl.Writer(root, delay=0)
        writer.start()
        writer.step()
        assert (root / "persistent/delayed_logs").read_bytes().startswith(b"workload started\n")
    finally:
        s(["podman", "stop", "--time", "0", "searcher"])
        with contextlib.suppress(subprocess.TimeoutExpired):
            run.wait(timeout=60)
        if run.poll() is None:
            run.kill()
            run.wait(timeout=30)
