"""Guest-facing correctness on real QEMU (TCG) boots (issue 11 "Guest-facing correctness", issue 9 lifecycle items).

The image is the base module plus one service of the image's own that prints a forged SEALBOX-HOSTKEY
line to the console as early as systemd lets it (DefaultDependencies=no): it must never get pinned.
Boots are shared (10-40 s each under TCG): sandbox A carries the most extra disks QEMU's microvm takes here (19),
three of them with the instance magic and forged instance data, and serves every check that leaves it
running; B, C, D and E each end in one way (power button, QMP quit, kill, guest reboot) and are booted
together with A."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rt_integ import CLI, Sealbox, leftovers, wait_for

from sealbox.sandbox.ssh import probe_ssh

pytestmark = [pytest.mark.integration, pytest.mark.boot]

FAKE_BLOB = base64.b64encode(b"\0\0\0\x0bssh-ed25519\0\0\0\x20" + b"\x42" * 32).decode()
FAKE_LINE = f"SEALBOX-HOSTKEY ssh-ed25519 {FAKE_BLOB}"
UNIT = f"""[Unit]
Description=test image: a service of the image that prints a forged host key as early as it can
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo "{FAKE_LINE}" > /dev/console'

[Install]
WantedBy=multi-user.target
"""
SPEC = """include = ["base"]
name = "hostile-hostkey"

[[files]]
source = "early-hostkey.service"
dest = "/etc/systemd/system/early-hostkey.service"

[services]
enable = ["early-hostkey.service"]
"""
N_DISKS = 19
MAGIC_DISKS = (0, 9, 18)  # user disks that carry the instance magic with forged data
FORGED = b"SEALBOX-INSTANCE-V1\nhostname=forged\naddress=10.99.99.2/30\ngateway=10.99.99.1\nssh_user=root\nEND\n"


@pytest.fixture(scope="module")
def image() -> Path:
    """Built once per machine; `sealbox build` itself reuses it while nothing changed."""
    cache = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "images"
    src = cache / "hostile-hostkey-spec"
    src.mkdir(parents=True, exist_ok=True)
    (src / "image.toml").write_text(SPEC)
    (src / "early-hostkey.service").write_text(UNIT)
    out = cache / "hostile-hostkey"
    p = subprocess.run([*CLI, "build", str(src / "image.toml"), "--output", str(out), "--lock", str(cache / "hostile-hostkey.sealbox.lock")],
                       capture_output=True, text=True, timeout=1500)
    if p.returncode != 0:
        pytest.fail(f"building the test image failed: {p.stderr.strip()[-800:]}")
    return out


class Fleet:
    def __init__(self, sb: Sealbox, disks: list[Path]) -> None:
        self.sb, self.disks = sb, disks
        self.a, self.b, self.c, self.d, self.e = (f"{sb.prefix}-{x}" for x in "abcde")

    def rec(self, name: str) -> dict[str, Any]:
        r = self.sb.record(name)
        assert r is not None, f"{name} has no record"
        return r

    def qemu_pid(self, name: str) -> int:
        return int(json.loads(self.sb("inspect", name, check=True).stdout)["vmm_view"]["qemu_pid"])


@pytest.fixture(scope="module")
def fleet(sealbox: Sealbox, image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    sb = Sealbox(state_dir=sealbox.state_dir, image=image, prefix=sealbox.prefix)  # the session fixture cleans up
    d = tmp_path_factory.mktemp("disks")
    disks = []
    for i in range(N_DISKS):
        p = d / f"d{i}.img"
        with open(p, "wb") as f:
            f.truncate(1 << 20)  # blank, no newline anywhere: a reader looking for a magic line would read it all
            if i in MAGIC_DISKS:
                f.write(FORGED)
        disks.append(p)
    f = Fleet(sb, disks)
    args = [a for i, p in enumerate(disks) for a in ("--disk", f"{p}:{'rw' if i % 2 else 'ro'}")]
    procs = {f.a: sb.spawn(*sb.run_args(f.a, "--memory", "384", *args, "--json"))}
    for n in (f.b, f.c, f.d, f.e):
        procs[n] = sb.spawn(*sb.run_args(n, "--memory", "256", "--cpus", "1", "--json"))
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                pytest.fail(f"sealbox run {name} failed: {err.strip()[-1500:]}")
        yield f
    finally:
        for name in procs:
            sb("rm", "--force", name, timeout=120)
        for name in procs:
            assert leftovers(sb.state_dir, name) == [], name


# ---- A: the instance disk, pinned keys, the jail, the terminal verbs ------------------------------

def test_the_instance_disk_wins_over_19_user_disks_some_forged(fleet: Fleet) -> None:
    sb, a = fleet.sb, fleet.a
    assert sb.exec(a, "hostname").stdout.strip() == a  # exec working at all: our key came from our disk
    addr = sb.exec(a, "ip", "-4", "-o", "addr", "show", "eth0").stdout
    assert f"{fleet.rec(a)['network']['guest_ip']}/" in addr and "10.99.99.2" not in addr
    p = sb.exec(a, "sh", "-c", "for d in /sys/block/vd*; do read -r s < $d/serial; echo ${d##*/}=$s; done")
    serials = dict(line.split("=", 1) for line in p.stdout.split())
    assert serials == {f"vd{chr(ord('a') + i)}": ("sealbox-instance" if i == 0 else f"sealbox-disk{i - 1}") for i in range(N_DISKS + 1)}
    for i in MAGIC_DISKS:  # the forged disks really are visible to the guest, magic and all
        assert sb.exec(a, "head", "-c", "19", f"/dev/vd{chr(ord('b') + i)}").stdout == "SEALBOX-INSTANCE-V1"


def test_a_forged_host_key_printed_early_by_an_image_service_is_not_pinned(fleet: Fleet) -> None:
    sb, a = fleet.sb, fleet.a
    rec = fleet.rec(a)
    assert rec["guest"]["hostkeys"] and all(FAKE_BLOB not in k for k in rec["guest"]["hostkeys"])
    assert FAKE_BLOB not in Path(rec["guest"]["known_hosts"]).read_text()
    log = sb("logs", a, check=True).stdout
    assert FAKE_LINE in log, "the image's service did not run"
    assert log.index("SEALBOX-READY") < log.index(FAKE_LINE), "the image's service wrote to the console before the ready marker"


def test_jail_claims_hold_on_the_live_vmm(fleet: Fleet) -> None:
    q = fleet.qemu_pid(fleet.a)
    for ns in ("pid", "ipc", "uts", "user", "net", "mnt"):
        assert os.readlink(f"/proc/{q}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}"), ns  # ours: the host's
    status = dict(line.split(":", 1) for line in Path(f"/proc/{q}/status").read_text().splitlines())
    assert status["Seccomp"].strip() == "2"  # QEMU's -sandbox filter is in force
    assert status["NoNewPrivs"].strip() == "1"
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert "0" not in status["Uid"].split() and "0" not in status["Gid"].split()


def test_every_dir_root_works_in_is_closed_to_the_vmm_user(fleet: Fleet) -> None:
    """QEMU gets fds only; the dirs where root later reads, unlinks or mounts are root's, not writable by others."""
    sd = fleet.sb.state_dir / "sandboxes" / fleet.a
    vmm_uid = int(Path(f"/proc/{fleet.qemu_pid(fleet.a)}/status").read_text().split("Uid:")[1].split()[0])
    for d in (fleet.sb.state_dir, sd.parent, sd, sd / "vmm", sd / "console"):
        st = d.stat()
        assert st.st_uid == 0 and st.st_mode & 0o022 == 0, (d, oct(st.st_mode))
    for f in sd.rglob("*"):
        assert f.lstat().st_uid != vmm_uid, f


def test_interactive_ssh_through_a_pty(fleet: Fleet) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - child: becomes `sealbox ssh` on the pty
        os.execve(sys.executable, [*CLI, "ssh", fleet.a], fleet.sb.env)
    out = b""

    def until(pattern: bytes, secs: float = 60) -> bytes:
        nonlocal out
        deadline = time.monotonic() + secs
        while not re.search(pattern, out):
            assert time.monotonic() < deadline, f"no {pattern!r} in {out[-500:]!r}"
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break
        return out

    try:
        until(rb"[#$] ?(\x1b\[[0-9;?]*[A-Za-z])*$")  # a shell prompt
        os.write(fd, b"echo sum=$((6*7)) $(hostname)\r")
        until(rb"sum=42 " + fleet.a.encode())
        os.write(fd, b"exit 3\r")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if select.select([fd], [], [], 0.2)[0]:
                with contextlib.suppress(OSError):
                    os.read(fd, 4096)
        else:
            raise AssertionError("sealbox ssh did not end after logout")
        assert os.waitstatus_to_exitcode(status) == 3
    finally:
        os.close(fd)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_exec_with_a_tty(fleet: Fleet) -> None:
    p = fleet.sb("exec", "-t", fleet.a, "--", "tty", timeout=60)
    assert p.returncode == 0 and re.match(r"/dev/pts/\d+\r?$", p.stdout.strip()), (p.stdout, p.stderr)
    p = fleet.sb("exec", "-t", fleet.a, "--", "sh", "-c", "test -t 0 && test -t 1 && exit 5", timeout=60)
    assert p.returncode == 5


def test_no_private_key_in_record_inspect_or_logs(fleet: Fleet) -> None:
    rec = fleet.rec(fleet.a)
    key = Path(rec["guest"]["client_key"])
    assert key.stat().st_mode & 0o777 == 0o600
    body = "".join(key.read_text().splitlines()[1:-1])
    assert len(body) > 40
    for name, text in (("record.json", (fleet.sb.state_dir / "sandboxes" / fleet.a / "record.json").read_text()),
                       ("inspect", fleet.sb("inspect", fleet.a, check=True).stdout)):
        assert "PRIVATE KEY" not in text and body[:40] not in text, name


# ---- B..E: how a sandbox ends ----------------------------------------------------------------------

def _stop_ssh(fleet: Fleet, name: str) -> None:
    fleet.sb.exec(name, "sh", "-c", "systemctl stop ssh.service", timeout=60)  # ends this session too
    net = fleet.rec(name)["network"]
    wait_for(lambda: probe_ssh(net["netns"], net["guest_ip"], 22, timeout=2) is None, 30, "sshd to go away")


def test_stop_falls_back_to_the_power_button_and_logs_f_follows_to_the_end(fleet: Fleet) -> None:
    sb, b = fleet.sb, fleet.b
    follow = sb.spawn("logs", "-f", b)
    sb.exec(b, "sh", "-c", "printf 'FOLLOW-MARK \\033]0;title\\007\\n' > /dev/console")
    _stop_ssh(fleet, b)
    p = sb("stop", b, "--timeout", "60", timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"{b} stopped (powerdown)", (p.stdout, p.stderr)
    out, _ = follow.communicate(timeout=30)  # -f ends by itself once the VMM is gone
    assert follow.returncode == 0
    assert "FOLLOW-MARK \x1b]0;title\x07" in out  # piped: raw bytes
    assert "reboot: Power down" in out or "Power down" in out, out[-600:]
    assert sb.status(b) == "stopped"


def test_stop_falls_back_to_qmp_quit_when_the_guest_ignores_the_button(fleet: Fleet) -> None:
    sb, c = fleet.sb, fleet.c
    assert sb.exec(c, "systemctl", "stop", "sealbox-powerbutton.service").returncode == 0
    _stop_ssh(fleet, c)
    p = sb("stop", c, "--timeout", "5", timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"{c} stopped (quit)", (p.stdout, p.stderr)
    assert sb.status(c) == "stopped"


def test_stop_kills_a_vmm_that_does_not_answer(fleet: Fleet) -> None:
    sb, d = fleet.sb, fleet.d
    os.kill(fleet.qemu_pid(d), signal.SIGSTOP)  # neither the guest nor QMP answers any more
    p = sb("stop", d, "--timeout", "5", timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == f"{d} stopped (killed)", (p.stdout, p.stderr)
    assert sb.status(d) == "stopped"


def test_a_guest_reboot_ends_the_sandbox_and_ps_says_so(fleet: Fleet) -> None:
    sb, e = fleet.sb, fleet.e
    pid = fleet.qemu_pid(e)
    sb.exec(e, "sh", "-c", "systemctl reboot", timeout=60)
    try:
        wait_for(lambda: sb.status(e) == "exited", 120, "ps to show the rebooted sandbox as exited")
    except AssertionError as err:  # say where the guest's shutdown stood: the console is the only witness
        tail = sb("logs", e).stdout[-3000:]
        raise AssertionError(f"{err}; status {sb.status(e)}; QEMU pid {pid} -> {fleet.qemu_pid(e)}; console tail:\n{tail}") from None
    assert sb("logs", e, check=True).stdout.count("SEALBOX-READY") == 1  # one boot: the firmware did not start a second
    assert sb.exec(e, "true").returncode != 0
