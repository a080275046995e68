"""One booted pair of sandboxes shared by the lifecycle and isolation tests (boots cost 15-40 s each
under TCG here): A (isolated, the subject) and B (nat, the neighbour A must not reach).
The tests do not depend on their order; the fixture's teardown stops and removes both and proves nothing of
either remains on the host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rt_integ import Sealbox, cgroup_dirs, end_process, leftovers, manifest

from sealbox.sandbox.host import cgroups
from sealbox.sandbox.model import SandboxSpec
from sealbox.sandbox.ssh import probe_ssh
from sealbox.sandbox.vmm.qemu import memory_limit_bytes

pytestmark = [pytest.mark.integration, pytest.mark.boot]
MEM_A, MEM_B = 448, 320


class Pair:
    def __init__(self, sb: Sealbox) -> None:
        self.sb, self.a, self.b = sb, f"{sb.prefix}-a", f"{sb.prefix}-b"
        self.info: dict[str, dict[str, Any]] = {}

    def net(self, name: str) -> dict[str, Any]:
        rec = self.sb.record(name)
        assert rec is not None, f"{name} has no record"
        return rec["network"]


@pytest.fixture(scope="module")
def pair(sealbox: Sealbox) -> Iterator[Pair]:
    p = Pair(sealbox)
    procs = {
        p.a: sealbox.spawn(*sealbox.run_args(p.a, "--memory", str(MEM_A), "--json")),
        p.b: sealbox.spawn(*sealbox.run_args(p.b, "--memory", str(MEM_B), "--net", "nat", "--console-max", "1", "--json")),
    }
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=420)
            if proc.returncode != 0:
                pytest.fail(f"sealbox run {name} failed: {err.strip()[-1500:]}")
            p.info[name] = json.loads(out)
            p.info[name]["stderr"] = err
        yield p
        # the module's last check, whatever order its tests ran in (a failure here is an error of the last test)
        stop_then_rm_leaves_nothing(p)
    finally:
        for name in procs:
            sealbox("rm", "--force", name, timeout=120)


def test_run_reports_ready_and_warns_about_tcg(pair: Pair) -> None:
    info = pair.info[pair.a]
    assert info["status"] == "running" and info["vmm"] == "qemu" and info["accel"] == "tcg"
    assert info["address"] == pair.net(pair.a)["guest_ip"]
    rec = pair.sb.record(pair.a)
    assert rec and rec["status"] == "running" and rec["guest"]["boot_id"] and rec["guest"]["hostkeys"]
    known = Path(rec["guest"]["known_hosts"]).read_text().splitlines()
    assert known == [f"sealbox-{pair.a} {k}" for k in rec["guest"]["hostkeys"]]


def test_exec_uname_matches_the_image_kernel(pair: Pair) -> None:
    p = pair.sb.exec(pair.a, "uname", "-r")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == manifest(pair.sb.image)["kernel"]["version"]


def test_exec_propagates_exit_code_and_streams(pair: Pair) -> None:
    p = pair.sb.exec(pair.a, "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (p.returncode, p.stdout, p.stderr) == (7, "out\n", "err\n")


def test_exec_passes_stdin_and_keeps_arguments_intact(pair: Pair) -> None:
    data = "line one\nsecond 'quoted' line $HOME\n"
    p = pair.sb.exec(pair.a, "cat", input=data)
    assert p.returncode == 0 and p.stdout == data
    p = pair.sb.exec(pair.a, "printf", "%s|", "a b", "$(id)", "*")
    assert p.stdout == "a b|$(id)|*|"  # no remote word splitting, expansion or globbing


def test_hostname_and_guest_memory(pair: Pair) -> None:
    assert pair.sb.exec(pair.a, "hostname").stdout.strip() == pair.a
    kib = int(next(ln.split()[1] for ln in pair.sb.exec(pair.a, "cat", "/proc/meminfo").stdout.splitlines() if ln.startswith("MemTotal:")))
    assert 0.85 * MEM_A * 1024 <= kib <= MEM_A * 1024, kib


def test_logs_and_ps_and_inspect(pair: Pair) -> None:
    logs = pair.sb("logs", pair.a, check=True).stdout
    assert "SEALBOX-READY" in logs and "SEALBOX-HOSTKEY" in logs
    rows = {r["name"]: r for r in json.loads(pair.sb("ps", "--json", check=True).stdout)}
    assert rows[pair.a]["status"] == "running" and rows[pair.a]["memory_mib"] == MEM_A
    assert rows[pair.b]["status"] == "running"
    text = pair.sb("ps", check=True).stdout
    assert pair.a in text and "running" in text
    ins = json.loads(pair.sb("inspect", pair.a, check=True).stdout)
    assert ins["derived_status"] == "running"
    assert ins["vmm_view"]["status"]["status"] == "running"
    assert [e["state"] for e in ins["steps"]["entries"]] == ["done"] * len(ins["steps"]["entries"])
    assert ins["steps"]["entries"][-1]["kind"] == "qemu-start"


def test_ssh_config_scp_and_port_forward(pair: Pair, tmp_path: Path) -> None:
    cfg = tmp_path / "ssh_config"
    cfg.write_text(pair.sb("ssh-config", pair.a, check=True).stdout)
    alias = f"sealbox-{pair.a}"
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(200_000))
    p = subprocess.run(["scp", "-F", str(cfg), str(src), f"{alias}:/var/tmp/payload.bin"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    back = tmp_path / "back.bin"
    p = subprocess.run(["scp", "-F", str(cfg), f"{alias}:/var/tmp/payload.bin", str(back)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and back.read_bytes() == src.read_bytes()
    # -L: a local port forwarded to the guest's sshd (the image has no /etc/hosts, so 127.0.0.1, not localhost)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = subprocess.Popen(["ssh", "-F", str(cfg), "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{port}:127.0.0.1:22", alias],
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline, got = time.monotonic() + 60, b""
        while time.monotonic() < deadline and not got.startswith(b"SSH-2.0"):
            assert fwd.poll() is None, fwd.stderr.read() if fwd.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.settimeout(10)
                    got = c.recv(64)
            except OSError:
                time.sleep(0.5)
        assert got.startswith(b"SSH-2.0"), got
    finally:
        end_process(fwd)


# ---- isolation ------------------------------------------------------------------------------------

def connect(pair: Pair, ip: str, port: int, secs: int = 4) -> bool:
    """From inside guest A: can it open a TCP connection? (bash /dev/tcp; exit 0 only if connected)"""
    p = pair.sb.exec(pair.a, "timeout", str(secs), "bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}", timeout=60)
    return p.returncode == 0


def test_root_filesystem_is_read_only(pair: Pair) -> None:
    for path in ("/probe", "/usr/probe", "/etc/probe"):
        p = pair.sb.exec(pair.a, "touch", path)
        assert p.returncode != 0 and "Read-only file system" in p.stderr, (path, p.stderr)
    assert pair.sb.exec(pair.a, "touch", "/var/tmp/ok").returncode == 0  # tmpfs /var is the writable place


class Listener:
    """A TCP service in the root namespace that records every connection it accepts."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[Any] = []
        self.stop = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop:
            try:
                conn, addr = self.sock.accept()
                self.accepted.append(addr)
                conn.close()
            except OSError:
                continue

    def close(self) -> None:
        self.stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, timeout=10).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines() if " lo " not in line]


def test_guest_cannot_reach_host_services(pair: Pair) -> None:
    assert connect(pair, "127.0.0.1", 22)  # control: the probe works (the guest's own sshd)
    lo, anyaddr = Listener("127.0.0.1"), Listener("0.0.0.0")
    try:
        net = pair.net(pair.a)
        targets = [(net["host_ip"], lo.port), (net["host_ip"], anyaddr.port), ("127.0.0.1", lo.port)]
        targets += [(ip, anyaddr.port) for ip in host_addresses()]
        reached = [t for t in targets if connect(pair, *t, secs=3)]
        assert reached == [] and lo.accepted == [] and anyaddr.accepted == [], (reached, lo.accepted, anyaddr.accepted)
    finally:
        lo.close()
        anyaddr.close()


def test_guest_cannot_reach_another_sandbox(pair: Pair) -> None:
    b = pair.net(pair.b)
    assert probe_ssh(b["netns"], b["guest_ip"], 22, timeout=5), "control: B's sshd answers from B's own netns"
    for ip in (b["guest_ip"], b["host_ip"]):
        assert not connect(pair, ip, 22, secs=3), f"A reached B at {ip}"


def test_metadata_address_is_unreachable(pair: Pair) -> None:
    for port in (80, 443):
        assert not connect(pair, "169.254.169.254", port, secs=3)


def test_vmm_runs_unprivileged(pair: Pair) -> None:
    ins = json.loads(pair.sb("inspect", pair.a, check=True).stdout)
    qpid = ins["vmm_view"]["qemu_pid"]
    status = dict(ln.split(":", 1) for ln in Path(f"/proc/{qpid}/status").read_text().splitlines())
    uids, gids = status["Uid"].split(), status["Gid"].split()
    assert "0" not in uids and "0" not in gids, (uids, gids)
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"


def test_each_vmm_has_its_own_uid_and_cannot_reach_the_other(pair: Pair) -> None:
    """Issue 11: one unprivileged identity per sandbox. b's QEMU uid is refused a's TAP (EPERM, while a's
    own uid only finds it busy: its QEMU holds it) and cannot open a's disk, console or QMP socket."""
    from standins import as_uid, attach_tap_as, proc_uids

    pids = {n: json.loads(pair.sb("inspect", n, check=True).stdout)["vmm_view"]["qemu_pid"] for n in (pair.a, pair.b)}
    uid_a, uid_b = proc_uids(pids[pair.a])[0], proc_uids(pids[pair.b])[0]
    assert uid_a != uid_b and 0 not in (uid_a, uid_b)
    netns = pair.net(pair.a)["netns"]
    assert attach_tap_as(netns, "tap0", uid_b) == "EPERM"
    assert attach_tap_as(netns, "tap0", uid_a) == "EBUSY"
    box = pair.sb.state_dir / "sandboxes" / pair.a
    for path in (box / "instance.img", box / "console" / "console.log"):
        assert as_uid(uid_b, "read", path) == "EACCES", path
    assert as_uid(uid_b, "connect", box / "vmm" / "qmp.sock") == "EACCES"


def test_vmm_runs_in_its_cgroup_with_the_planned_limit(pair: Pair) -> None:
    """The limit written is the planned one, in the host's cgroup version (the limit's effect: test_rt_faults'
    OOM test)."""
    spec = SandboxSpec(name=pair.a, image_dir=pair.sb.image, memory_mib=MEM_A)
    v2 = cgroups.detect().version == 2
    mem_dir = next(d for d in cgroup_dirs(pair.a, pair.sb.state_dir) if (d / ("memory.max" if v2 else "memory.limit_in_bytes")).exists())
    assert int((mem_dir / ("memory.max" if v2 else "memory.limit_in_bytes")).read_text()) == memory_limit_bytes(spec, "tcg")
    ins = json.loads(pair.sb("inspect", pair.a, check=True).stdout)
    assert str(ins["vmm_view"]["qemu_pid"]) in (mem_dir / "cgroup.procs").read_text().split()


# ---- stop / rm: nothing remains -------------------------------------------------------------------

def test_console_log_is_capped_and_the_guest_carries_on(pair: Pair) -> None:
    # b runs with --console-max 1: a guest flooding its serial console cannot fill the host's disk
    r = pair.sb.exec(pair.b, "sh", "-c", "head -c 1300000 /dev/zero | tr '\\0' x > /dev/ttyS0 && echo flooded", timeout=180)
    assert r.returncode == 0 and "flooded" in r.stdout, r.stderr
    logs = pair.sb("logs", pair.b, check=True).stdout
    assert (pair.sb.state_dir / "sandboxes" / pair.b / "console" / "console.log").stat().st_size == 1 << 20
    assert logs.endswith("x" * 1000)  # the first MiB is kept, the rest dropped
    assert "SEALBOX-READY" in logs
    assert pair.sb.exec(pair.b, "uname", "-r").stdout.strip() == manifest(pair.sb.image)["kernel"]["version"]


def stop_then_rm_leaves_nothing(pair: Pair) -> None:
    """Run at the pair's teardown, after every test of the module: stop, then rm, and nothing remains."""
    sb = pair.sb
    assert sb("rm", pair.a).returncode != 0  # refused while running
    p = sb("stop", pair.a, "--timeout", "30", timeout=90)
    assert p.returncode == 0 and p.stdout.strip() == f"{pair.a} stopped (poweroff)", (p.stdout, p.stderr)  # first in the chain
    assert sb.status(pair.a) == "stopped"
    assert "SEALBOX-READY" in sb("logs", pair.a, check=True).stdout  # logs survive a stop
    assert sb.exec(pair.a, "true").returncode != 0
    t0 = time.monotonic()
    sb("rm", pair.a, check=True)
    rm_s = time.monotonic() - t0
    p = sb("rm", "--force", pair.b, timeout=60)  # nat sandbox, still running: --force
    assert p.returncode == 0, p.stderr
    assert leftovers(sb.state_dir, pair.a) == []
    assert leftovers(sb.state_dir, pair.b) == []
    assert sb.status(pair.a) is None and sb.status(pair.b) is None
    print(f"rm of a stopped sandbox: {rm_s:.2f}s wall (CLI start included)")
