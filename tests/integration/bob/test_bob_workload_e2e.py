"""The searcher's workload in a booted bob image (QEMU/TCG, --rootfs disk): after `initialize`, rootless podman runs
the spec's container, the data plane SSH enters it, UDP to the input-only port reaches it and nothing answers, its log
line reaches `logs N` only after log_delay_seconds, and `toggle` to production (bob-netguard verify) closes the data
plane. Slow (podman under TCG): marked slow; every wait is bounded.

The workload is a tiny OCI archive built here whose process logs each datagram it receives on 27017 (socat). The
builder endpoints are TEST-NET-1 stand-ins (192.0.2.0/24, never routed); all traffic stays in the test's own sandbox
namespace. Oracles: a real OpenSSH client, raw sockets, the guest's own `logs N`. What each step saw and how long it
took is written to bob-workload-e2e-facts.json under pytest's base temp directory.

Measured on 2026-12-01 (2 cores shared with other helpers' boots): image 334 MB (rootfs.ext4 265 MB), build 48-82 s
from a warm cache, ready 8-17 s; initialize 15 s on a quiet machine, 301 s under load (argon2id 117 MiB); the data
plane entered the container 2-14 s later; the datagram reached the container (silent) and its log line appeared in
`logs` ~23 s after the send, not at 1 s; with main's fix of the control plane's output after a flush, `toggle` into
production answered in 2 s and the data plane was then dropped (before it, the answer never came). Whole module:
~140 s on a quiet machine, ~11 min under load.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

from rt_integ import Sealbox, leftovers, scrub, wait_for  # noqa: E402

from imagecache import CACHE, spec_image  # noqa: E402
from sealbox.sandbox.host.netns import connect_in_netns, run_in_netns, socket_in_netns  # noqa: E402
from sealbox.sandbox.ssh import host_alias  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.boot, pytest.mark.slow]

WORK_SPEC = """\
name = "bobwire-work"
[packages]
include = ["passwd", "socat"]
[oci]
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo bobwire-workload-started; exec socat -u UDP-RECV:27017 STDOUT"]
compression_level = 1
[output]
formats = ["oci"]
"""
LOG_DELAY = 20
BOB_SPEC = f"""\
include = ["base", "bob"]
name = "bobwire-e2e"

[output]
formats = ["ext4"]
compression_level = 3

[bob]
builder_bundle = ["192.0.2.10:8645"]
builder_state_diff = ["192.0.2.10:8646"]
workload = "workload.oci.tar"
log_delay_seconds = {LOG_DELAY}

# diagnostics only (this test's image): what podman and bob-netguard say goes to the serial console too, which the
# facts keep (there is no root shell in a bob guest to read the journal)
[[files]]
source = "workload-console.conf"
dest = "/etc/systemd/system/sealbox-bob-workload.service.d/console.conf"
mode = 0o644
"""
CONSOLE_DROPIN = "[Service]\nStandardOutput=journal+console\nStandardError=journal+console\n"
TOOLS = ("qemu-system-x86_64", "bwrap", "setpriv", "nft", "ip", "ssh", "ssh-keygen")
PASSPHRASE = "correct horse battery staple, bobwire e2e\n"
CONTROL, DATA, UDP, REGISTER = 22, 10022, 27017, 8080
CONTAINER_WAIT = 900  # podman load + first start under TCG (measured, recorded as container_s)
FACTS: dict[str, Any] = {}


def _need() -> None:
    if os.geteuid() != 0:
        pytest.skip("the bob workload end-to-end test needs root")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"the bob workload end-to-end test needs {tool}")


def _image() -> Path:
    t = time.monotonic()
    work = spec_image("bobwire-e2e-work", WORK_SPEC)
    src = CACHE / "specs" / "bobwire-e2e"
    src.mkdir(parents=True, exist_ok=True)
    tar, dest = work / "bobwire-work.oci.tar", src / "workload.oci.tar"
    if not dest.is_file() or dest.read_bytes() != tar.read_bytes():
        shutil.copyfile(tar, dest)
    image = spec_image("bobwire-e2e", BOB_SPEC, files={"workload-console.conf": CONSOLE_DROPIN})
    FACTS["build_or_cache_s"] = round(time.monotonic() - t, 1)
    FACTS["image_bytes"] = sum(p.stat().st_size for p in image.iterdir() if p.is_file())
    return image


@dataclass
class Guest:
    sb: Sealbox
    name: str
    netns: str
    ip: str
    known_hosts: Path
    key: Path
    steps: dict[str, Any] = field(default_factory=dict)

    def ssh(self, *command: str, port: int = CONTROL, timeout: float = 60, stdin: str = "") -> dict[str, Any]:
        argv = ["ip", "netns", "exec", self.netns, "ssh", "-F", "/dev/null", "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"HostKeyAlias={host_alias(self.name)}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                "-p", str(port), "-l", "searcher", self.ip, *command]
        t = time.monotonic()
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=stdin)
        except subprocess.TimeoutExpired:
            return {"rc": None, "out": "", "err": f"timed out after {timeout} s", "s": round(time.monotonic() - t, 1)}
        return {"rc": p.returncode, "out": p.stdout.strip()[-2000:], "err": p.stderr.strip()[-2000:], "s": round(time.monotonic() - t, 1)}


def _register(netns: str, ip: str, pub: bytes) -> int:
    import http.client

    sock = connect_in_netns(netns, ip, REGISTER, 10)
    conn = http.client.HTTPConnection(ip, REGISTER, timeout=20)
    conn.sock = sock
    try:
        conn.request("POST", "/", body=pub, headers={"Content-Type": "text/plain"})
        return conn.getresponse().status
    finally:
        conn.close()


def _answers(netns: str, ip: str, port: int) -> bool:
    try:
        connect_in_netns(netns, ip, port, 3).close()
        return True
    except OSError:
        return False


def _udp_send(netns: str, ip: str, payload: bytes) -> str:
    """One datagram to the input-only port from the sandbox's namespace: "silent" unless something answers in 3 s."""
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(3.0)
        run_in_netns(netns, lambda: s.connect((ip, UDP)), timeout=10.0)
        s.send(payload)
        try:
            return f"answer {s.recv(512)!r}"
        except TimeoutError:
            return "silent"
        except ConnectionRefusedError:
            return "icmp-unreachable"
    finally:
        s.close()


def _until(g: Guest, what: str, pred: Any, timeout: float, every: float = 5.0) -> dict[str, Any]:
    """Poll `pred` (-> step dict or None) until it gives a step, at most `timeout` seconds: the last try is kept."""
    t0, last = time.monotonic(), None
    while time.monotonic() - t0 < timeout:
        last = pred()
        if last.get("ok"):
            break
        time.sleep(every)
    last = dict(last or {})
    last["waited_s"] = round(time.monotonic() - t0, 1)
    g.steps[what] = last
    return last


def _sequence(g: Guest) -> None:
    """initialize, the container, UDP in, the delayed log, production: recorded, never raising (tests assert)."""
    st = g.steps
    try:
        st["initialize"] = g.ssh("initialize", stdin=PASSPHRASE, timeout=900)
        st["status_maintenance"] = g.ssh("status")

        def entered() -> dict[str, Any]:
            r = g.ssh("cat", "/etc/os-release", port=DATA, timeout=120)
            return {**r, "ok": r["rc"] == 0 and "ID=debian" in r["out"]}

        t_init = time.monotonic()
        _until(g, "data_plane_enter", entered, CONTAINER_WAIT, every=10)
        FACTS["container_s"] = round(time.monotonic() - t_init, 1)
        marker = f"bobwire-udp-{os.urandom(4).hex()}"
        t_sent = time.monotonic()  # before the send: _udp_send then waits 3 s for an answer
        st["udp"] = _udp_send(g.netns, g.ip, (marker + "\n").encode())
        st["logs_early"] = g.ssh("logs", "50")
        st["logs_early"]["after_send_s"] = round(time.monotonic() - t_sent, 1)

        def logged() -> dict[str, Any]:
            r = g.ssh("logs", "50")
            return {**r, "ok": marker in r["out"], "after_send_s": round(time.monotonic() - t_sent, 1)}

        _until(g, "logs_delayed", logged, LOG_DELAY + 120, every=5)
        st["marker"] = marker
        st["logs_early"]["marker_seen"] = marker in st["logs_early"]["out"]
        st["data_open_maintenance"] = _answers(g.netns, g.ip, DATA)
        st["toggle_production"] = g.ssh("toggle", timeout=180)
        st["status_production"] = g.ssh("status")
        st["data_open_production"] = _answers(g.netns, g.ip, DATA)
        st["data_ssh_production"] = g.ssh("true", port=DATA, timeout=40)
        st["udp_production"] = _udp_send(g.netns, g.ip, (marker + "-production\n").encode())
    except Exception as e:  # noqa: BLE001 - recorded: the tests that need the missing steps fail with it
        st["error"] = f"{type(e).__name__}: {e}"
    FACTS["steps"] = st


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    _need()
    image = _image()
    state = tmp_path_factory.mktemp("bobwire-state")
    sb = Sealbox(state_dir=state, image=image, prefix="bw" + os.urandom(2).hex())
    name = f"{sb.prefix}-work"
    keys = tmp_path_factory.mktemp("bobwire-keys")
    disk = keys / "persistent.qcow2"
    assert sb("disk", "create", str(disk), "--size", "1G", timeout=60).returncode == 0
    t0 = time.monotonic()
    p = sb("run", str(image), "--name", name, "--rootfs", "disk", "--accel", "tcg", "--timeout", "420",
           "--disk", f"{disk}:rw,qcow2,serial=persistent", timeout=480)
    try:
        assert p.returncode == 0, p.stderr
        rec = sb.record(name)
        assert rec is not None
        FACTS.update(run_s=round(time.monotonic() - t0, 1), ready_s=rec["guest"]["ready_s"], memory_mib=rec["spec"]["memory_mib"])
        net = rec["network"]
        key = keys / "searcher"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bobwire", "-f", str(key)], check=True, timeout=30)
        g = Guest(sb, name, net["netns"], net["guest_ip"], Path(rec["guest"]["known_hosts"]), key)
        wait_for(lambda: _answers(g.netns, g.ip, REGISTER), 120, "the key registration port to answer")
        g.steps["register"] = _register(g.netns, g.ip, (keys / "searcher.pub").read_bytes())
        _sequence(g)
        yield g
    finally:
        console = state / "sandboxes" / name / "console" / "console.log"
        if console.is_file():
            FACTS["console_tail"] = console.read_text(errors="replace")[-6000:].splitlines()
        out = tmp_path_factory.getbasetemp() / "bob-workload-e2e-facts.json"
        out.write_text(json.dumps(FACTS, indent=2, sort_keys=True) + "\n")
        print(f"\nbob workload e2e facts ({out}): {json.dumps(FACTS, sort_keys=True)}")
        sb("rm", "--force", name, timeout=120)
        left = leftovers(state, name)
        scrub(state, sb.prefix)
        assert left == []


def test_initialize_then_the_container_runs_and_the_data_plane_enters_it(guest: Guest) -> None:
    st = guest.steps
    assert st.get("register") == 201, st
    assert st.get("initialize", {}).get("rc") == 0, (st.get("initialize"), st.get("error"))
    assert st["status_maintenance"]["out"].startswith("mode maintenance"), st["status_maintenance"]
    enter = st.get("data_plane_enter", {})
    assert enter.get("ok"), enter  # `cat /etc/os-release` ran inside the container (podman exec through ForceCommand)


def test_udp_reaches_the_container_nothing_answers_and_the_log_line_waits_the_delay(guest: Guest) -> None:
    st = guest.steps
    assert st.get("udp") == "silent", (st.get("udp"), st.get("error"))
    assert st["logs_early"]["marker_seen"] is False, st["logs_early"]
    delayed = st.get("logs_delayed", {})
    assert delayed.get("ok"), delayed  # the container logged the datagram, and it reached /persistent/delayed_logs
    assert delayed["after_send_s"] >= LOG_DELAY, delayed  # not before the delay


def test_production_is_entered_and_closes_the_data_plane(guest: Guest) -> None:
    st = guest.steps
    assert "error" not in st, st["error"]
    assert st["data_open_maintenance"] is True
    assert st["toggle_production"]["rc"] == 0 and st["toggle_production"]["out"].startswith("mode production"), st["toggle_production"]
    assert st["status_production"]["out"].startswith("mode production"), st["status_production"]
    assert st["data_open_production"] is False and st["data_ssh_production"]["rc"] != 0, st
    assert st["udp_production"] == "silent", st["udp_production"]
