"""The bob image booted for real (QEMU/TCG, --rootfs disk): one boot shared by the module, driven only through the
network and the searcher's commands, as a searcher would (sealbox's root management path is off in bob images).

The workload is a tiny OCI archive sealbox builds from a second spec here. The builder endpoints in the spec are
TEST-NET-1 addresses (192.0.2.0/24, never routed): nothing in maintenance mode connects to them, and the guest's
sandbox network is the test's own namespace. Oracles: a real OpenSSH client (authentication, the pinned host key,
refused forwards), a raw HTTP client for the key registration, raw sockets for the port table, which is asserted
against builder/bob_firewall.py's openings (the same table docs/modules.md shows).

Not driven here (not on this branch): `initialize` (the encrypted /persistent, helper bobdisk), so `toggle` and the
production/stopped rule sets on a booted guest (those are tested on the host in test_bob_netns_probe.py), the
searcher's container, UDP 27017 into it and the data plane SSH (helper bobwork).
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

from rt_integ import Sealbox, leftovers, scrub, wait_for  # noqa: E402

from imagecache import CACHE, spec_image  # noqa: E402
from sealbox.builder.bob_firewall import openings  # noqa: E402
from sealbox.sandbox.host.netns import connect_in_netns, socket_in_netns  # noqa: E402
from sealbox.sandbox.ssh import host_alias  # noqa: E402
from sealbox.spec.load import load_spec  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.boot]

WORK_SPEC = """\
name = "bobwork"
[packages]
include = ["passwd"]
[oci]
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo the searcher's workload"]
compression_level = 1
[output]
formats = ["oci"]
"""
BOB_SPEC = """\
include = ["base", "bob"]
name = "bob-e2e"

[output]
formats = ["ext4"]
compression_level = 3

[bob]
builder_bundle = ["192.0.2.10:8645"]
builder_state_diff = ["192.0.2.10:8646"]
workload = "workload.oci.tar"
dwell_seconds = 20
"""
TOOLS = ("qemu-system-x86_64", "bwrap", "setpriv", "nft", "ip", "ssh", "ssh-keygen")
FACTS: dict[str, Any] = {}
DWELL = 20
PASSPHRASE = "correct horse battery staple, bob e2e\n"
# ports probed beyond the ones any mode opens: ones a Debian image might listen on, and the builder's
EXTRA_TCP = (21, 23, 25, 53, 80, 111, 123, 443, 2222, 3389, 5900, 8000, 8443, 8645, 8646, 27017)
EXTRA_UDP = (53, 67, 68, 69, 123, 161, 500, 514, 5353, 8080, 10022)
PROBE_TIMEOUT = 2.0


def _need() -> None:
    if os.geteuid() != 0:
        pytest.skip("the bob end-to-end test needs root")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"the bob end-to-end test needs {tool}")


def bob_image() -> Path:
    """The workload archive (built from WORK_SPEC), then the bob image naming it: both cached like other test images."""
    work = spec_image("bob-e2e-work", WORK_SPEC)
    src = CACHE / "specs" / "bob-e2e"
    src.mkdir(parents=True, exist_ok=True)
    tar = work / "bobwork.oci.tar"
    dest = src / "workload.oci.tar"
    if not dest.is_file() or dest.read_bytes() != tar.read_bytes():
        shutil.copyfile(tar, dest)
    return spec_image("bob-e2e", BOB_SPEC)


@dataclass
class Guest:
    sealbox: Sealbox
    name: str
    netns: str
    ip: str
    known_hosts: Path
    sandbox_key: Path  # the client key `sealbox run` made (and delivered for root and searcher in the instance data)
    key: Path  # the key the test registers for searcher
    other_key: Path
    registered: tuple[int, str]  # the first registration's answer
    port: int
    steps: dict[str, Any]  # what the fixture's sequence saw, in order (tests run shuffled, the modes change once)

    def ssh_argv(self, *opts: str, key: Path | None = None, user: str = "searcher") -> list[str]:
        """A real OpenSSH client in the sandbox's namespace, trusting only the host key sealbox pinned."""
        return ["ip", "netns", "exec", self.netns, "ssh", "-F", "/dev/null", "-i", str(key or self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", f"HostKeyAlias={host_alias(self.name)}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
                "-p", str(self.port), "-l", user, *opts, self.ip]

    def ssh(self, *command: str, opts: tuple[str, ...] = (), key: Path | None = None, user: str = "searcher",
            timeout: float = 60, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.ssh_argv(*opts, key=key, user=user), *command], capture_output=True, text=True,
                              timeout=timeout, input=stdin if stdin is not None else "")


def http_post(netns: str, ip: str, port: int, body: bytes, method: str = "POST") -> tuple[int, str]:
    sock = connect_in_netns(netns, ip, port, 10)
    conn = http.client.HTTPConnection(ip, port, timeout=20)
    conn.sock = sock
    try:
        conn.request(method, "/", body=body if method == "POST" else None, headers={"Content-Type": "text/plain"})
        resp = conn.getresponse()
        return resp.status, resp.read(4096).decode(errors="replace").strip()
    finally:
        conn.close()


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob-e2e", "-f", str(path)], check=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    _need()
    image = bob_image()
    FACTS["image_bytes"] = sum(p.stat().st_size for p in image.iterdir() if p.is_file())
    FACTS["rootfs_bytes"] = (image / "rootfs.ext4").stat().st_size
    state = tmp_path_factory.mktemp("bob-state")
    sb = Sealbox(state_dir=state, image=image, prefix="bob" + os.urandom(2).hex())
    name = f"{sb.prefix}-e2e"
    keys = tmp_path_factory.mktemp("bob-keys")
    disk = keys / "persistent.qcow2"
    assert sb("disk", "create", str(disk), "--size", "256M", timeout=60).returncode == 0
    t0 = time.monotonic()
    p = sb("run", str(image), "--name", name, "--rootfs", "disk", "--accel", "tcg", "--timeout", "420",
           "--disk", f"{disk}:rw,serial=persistent", timeout=480)
    try:
        assert p.returncode == 0, p.stderr
        rec = sb.record(name)
        assert rec is not None
        FACTS.update(run_s=round(time.monotonic() - t0, 1), ready_s=rec["guest"]["ready_s"], memory_mib=rec["spec"]["memory_mib"])
        net = rec["network"]
        g = Guest(sb, name, net["netns"], net["guest_ip"], Path(rec["guest"]["known_hosts"]), Path(rec["guest"]["client_key"]),
                  keygen(keys / "searcher"), keygen(keys / "other"), (0, ""), 22, {})
        # the registration service starts with the guest's other services; bounded wait for it to answer
        wait_for(lambda: _answers(g.netns, g.ip, 8080), 120, "the key registration port to answer")
        g.registered = http_post(g.netns, g.ip, 8080, (keys / "searcher.pub").read_bytes())
        _sequence(g)
        yield g
        stop = sb("stop", name, timeout=120)  # the power button: `stop` needs no root SSH
        FACTS["stop"] = [stop.returncode, stop.stdout.strip(), stop.stderr.strip()]
        assert stop.returncode == 0, stop.stderr
        assert sb.status(name) == "stopped"
    finally:
        out = tmp_path_factory.getbasetemp() / "bob-e2e-facts.json"
        out.write_text(json.dumps(FACTS, indent=2, sort_keys=True) + "\n")
        print(f"\nbob e2e facts ({out}): {json.dumps(FACTS, sort_keys=True)}")
        sb("rm", "--force", name, timeout=120)
        left = leftovers(state, name)
        scrub(state, sb.prefix)
        assert left == []


def _cmd(g: Guest, *command: str, stdin: str | None = None, timeout: float = 120) -> dict[str, Any]:
    t = time.monotonic()
    p = g.ssh(*command, stdin=stdin, timeout=timeout)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip(), "s": round(time.monotonic() - t, 1)}


def _sequence(g: Guest) -> None:
    """The one pass through the modes: recorded step by step, never raising (each test asserts its own steps)."""
    st = g.steps
    try:
        st["status_before"] = _cmd(g, "status")
        st["logs_before"] = _cmd(g, "logs", "5")
        st["table_maintenance_locked"] = port_table(g)
        st["initialize_empty"] = _cmd(g, "initialize", stdin="\n")
        st["initialize"] = _cmd(g, "initialize", stdin=PASSPHRASE, timeout=900)
        st["initialize_again"] = _cmd(g, "initialize", stdin=PASSPHRASE, timeout=300)
        st["register_after_initialize"] = http_post(g.netns, g.ip, 8080, (g.other_key.parent / "other.pub").read_bytes())
        st["status_maintenance"] = _cmd(g, "status")
        st["logs_after"] = _cmd(g, "logs", "5")
        st["toggle_production"] = _cmd(g, "toggle")
        st["status_production"] = _cmd(g, "status")
        st["table_production"] = port_table(g)
        st["toggle_stopped"] = _cmd(g, "toggle")
        st["table_stopped"] = port_table(g)
        st["toggle_early"] = _cmd(g, "toggle")
        t_stopped = time.monotonic() - st["toggle_early"]["s"]
        time.sleep(max(0.0, DWELL + 2 - (time.monotonic() - t_stopped)))
        st["toggle_maintenance"] = _cmd(g, "toggle")
        st["status_end"] = _cmd(g, "status")
        st["table_maintenance"] = port_table(g)
    except Exception as e:  # noqa: BLE001 - recorded: the tests that need the missing steps fail with it
        st["error"] = f"{type(e).__name__}: {e}"
    FACTS["steps"] = st


def _answers(netns: str, ip: str, port: int) -> bool:
    try:
        connect_in_netns(netns, ip, port, 2).close()
        return True
    except OSError:
        return False


def test_the_first_key_registration_is_accepted_and_a_second_is_refused(guest: Guest) -> None:
    assert guest.registered[0] == 201, guest.registered
    again = http_post(guest.netns, guest.ip, 8080, (guest.other_key.parent / "other.pub").read_bytes())
    assert again[0] == 409, again
    same = http_post(guest.netns, guest.ip, 8080, (guest.key.parent / "searcher.pub").read_bytes())
    assert same[0] == 409, same  # even the same key: registration happens once
    assert http_post(guest.netns, guest.ip, 8080, b"", method="GET")[0] == 405


def test_searcher_logs_in_with_the_registered_key_and_gets_the_command_shell(guest: Guest) -> None:
    # before initialize, status is refused by the shell itself (so the login and the host key pinning worked)
    st = guest.steps
    assert st["status_before"]["rc"] == 1, st["status_before"]
    assert "status: refused until /persistent is mounted: run initialize first" in st["status_before"]["err"]
    assert st["logs_before"]["rc"] == 1 and "refused until /persistent is mounted" in st["logs_before"]["err"]
    p = guest.ssh("status")  # now (after the sequence) the mode service answers
    assert p.returncode == 0 and p.stdout.startswith("mode "), (p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("command", [["ls", "/"], ["sh", "-c", "id"], ["logs", "0"], ["toggle;", "id"], ["cat", "/etc/shadow"]])
def test_any_other_command_is_refused(guest: Guest, command: list[str]) -> None:
    p = guest.ssh(*command)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "refused" in p.stderr or "logs: N must be" in p.stderr
    assert p.stdout == ""


def test_no_interactive_shell_no_tty_no_subsystem(guest: Guest) -> None:
    p = guest.ssh(opts=("-tt",))  # insist on a terminal: sshd refuses it (PermitTTY no) and ssh gives up
    assert p.returncode == 255 and "PTY allocation request failed" in p.stderr, p.stderr
    p = guest.ssh(opts=("-T",))  # a login shell without a terminal: bob-shell without -c refuses
    assert p.returncode == 1 and "this account runs commands only" in p.stderr, p.stderr
    p = guest.ssh("sftp", opts=("-s",))
    assert p.returncode != 0 and "this account runs commands only" not in p.stdout


def test_only_the_registered_key_and_only_searcher_get_in(guest: Guest) -> None:
    for key, user in ((guest.other_key, "searcher"), (guest.sandbox_key, "searcher"), (guest.sandbox_key, "root"),
                      (guest.key, "root")):
        p = guest.ssh("status", key=key, user=user)
        assert p.returncode == 255 and "Permission denied" in p.stderr, (user, key.name, p.stderr)


def test_port_forwarding_is_refused(guest: Guest, tmp_path: Path) -> None:
    # remote forward: the server says no and ExitOnForwardFailure makes ssh fail
    p = guest.ssh(opts=("-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:4022:127.0.0.1:22", "-N"), timeout=60)
    assert p.returncode == 255 and "forwarding failed" in p.stderr, p.stderr
    # local forward to the guest's own key registration service: the channel is refused, no byte comes back
    lport = 40000 + os.getpid() % 10000
    log = tmp_path / "ssh-L.log"
    argv = guest.ssh_argv("-v", "-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:8080")
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: _answers(guest.netns, "127.0.0.1", lport), 60, "ssh -L to listen")
        s = connect_in_netns(guest.netns, "127.0.0.1", lport, 10)
        with s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(20)
            try:
                got = s.recv(100)
            except ConnectionResetError:
                got = b""
        assert got == b"", got  # the key registration service would have answered "HTTP/1.0 405"
        wait_for(lambda: b"administratively prohibited" in log.read_bytes(), 20, "ssh to report the refused channel")
    finally:
        proc.terminate()
        proc.wait(20)


def test_sealbox_exec_and_ssh_are_refused_up_front(guest: Guest) -> None:
    for verb in (["exec", guest.name, "--", "true"], ["ssh", guest.name]):
        p = guest.sealbox(*verb, timeout=60)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert lines and "no exec/ssh" in lines[0] and "root management path is off" in lines[0], p.stderr
        assert "Traceback" not in p.stderr


def _tcp(netns: str, ip: str, port: int) -> str:
    try:
        connect_in_netns(netns, ip, port, PROBE_TIMEOUT).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"  # a reset: the rule set let it in, nothing listens
    except OSError:
        return "silent"  # dropped


def _udp(netns: str, ip: str, port: int) -> str:
    s = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(PROBE_TIMEOUT)
        s.connect((ip, port))
        try:
            s.send(b"bob-e2e probe\n")
            s.recv(512)
            return "answer"
        except ConnectionRefusedError:
            return "icmp-unreachable"
        except OSError:
            return "silent"


def _spec_bob() -> Any:
    return load_spec(CACHE / "specs" / "bob-e2e" / "spec.toml").spec.bob


def port_table(g: Guest) -> dict[str, dict[int, str]]:
    """Which guest ports answer from the sandbox's namespace (the host side), TCP and UDP, probed at once."""
    inbound = [o for o in openings(_spec_bob()) if o.direction == "in"]
    all_tcp = sorted({o.port for o in inbound if "tcp" in o.protos} | set(EXTRA_TCP))
    all_udp = sorted({o.port for o in inbound if "udp" in o.protos} | set(EXTRA_UDP))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        tcp = dict(zip(all_tcp, pool.map(lambda p: _tcp(g.netns, g.ip, p), all_tcp), strict=True))
        udp = dict(zip(all_udp, pool.map(lambda p: _udp(g.netns, g.ip, p), all_udp), strict=True))
    return {"tcp": tcp, "udp": udp}


@pytest.mark.parametrize(("step", "mode"), [("table_maintenance_locked", "maintenance"), ("table_production", "production"),
                                            ("table_stopped", "stopped"), ("table_maintenance", "maintenance")])
def test_port_table_of_each_mode_as_seen_from_the_host(guest: Guest, step: str, mode: str) -> None:
    table = guest.steps.get(step)
    assert table is not None, guest.steps.get("error")
    bob = _spec_bob()
    inbound = [o for o in openings(bob) if o.direction == "in"]
    want_tcp = {o.port for o in inbound if "tcp" in o.protos and mode in o.modes}
    tcp, udp = table["tcp"], table["udp"]
    # TCP: every port the mode's rule set opens answers (a handshake where something listens, a reset where nothing
    # does yet); every other port is silent (dropped, not rejected)
    assert {p for p, r in tcp.items() if r != "silent"} == want_tcp, tcp
    # listening in every mode: the control plane and attested first contact
    assert tcp[bob.control_ssh_port] == "open" and tcp[bob.attestation_port] == "open", tcp
    if mode == "maintenance":
        assert tcp[bob.key_registration_port] == "open", tcp  # in production it still listens, unreachable
    # UDP: nothing listens before the container runs, and the guest sends no ICMP errors (the output chain drops
    # them, so a probe of the input-only port learns nothing): every port is silent in every mode
    assert set(udp.values()) == {"silent"}, udp


def test_initialize_makes_the_encrypted_disk_once(guest: Guest) -> None:
    st = guest.steps
    assert st.get("initialize_empty", {}).get("rc") == 1, st
    assert st.get("initialize", {}).get("rc") == 0, (st.get("initialize"), st.get("error"))
    again = st["initialize_again"]
    assert again["rc"] == 1 and "initialize" in again["err"], again
    assert st["register_after_initialize"][0] in (403, 409), st["register_after_initialize"]
    logs = st["logs_after"]  # no refusal now: /persistent is mounted (and no log line yet)
    assert logs["rc"] == 0, logs


def test_toggle_walks_the_modes_and_the_dwell_time_holds(guest: Guest) -> None:
    st = guest.steps
    assert "error" not in st, st["error"]
    assert st["status_maintenance"]["rc"] == 0 and st["status_maintenance"]["out"].startswith("mode maintenance"), st
    assert st["toggle_production"]["rc"] == 0 and st["toggle_production"]["out"].startswith("mode production"), st
    assert st["status_production"]["out"].startswith("mode production"), st
    assert st["toggle_stopped"]["rc"] == 0 and st["toggle_stopped"]["out"].startswith("mode stopped"), st
    early = st["toggle_early"]
    assert early["rc"] == 1 and "maintenance is refused for" in early["err"], early
    assert st["toggle_maintenance"]["rc"] == 0 and st["toggle_maintenance"]["out"].startswith("mode maintenance"), st
    assert st["status_end"]["out"].startswith("mode maintenance"), st
