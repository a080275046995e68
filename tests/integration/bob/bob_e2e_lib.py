"""Shared by the bob end-to-end tests (test_bob_e2e.py, test_bob_e2e_modes.py): the two images (the workload archive
built from a second spec, then the bob image naming it), one booted guest per test module, a real OpenSSH client
in the sandbox's namespace that trusts only the host key sealbox pinned, and the port probes."""

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
from collections.abc import Callable, Iterator
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
DWELL = 20
PASSPHRASE = "correct horse battery staple, bob e2e\n"
# ports probed beyond the ones any mode opens: ones a Debian image might listen on, and the builder's
EXTRA_TCP = (21, 23, 25, 53, 80, 111, 123, 443, 2222, 3389, 5900, 8000, 8443, 8645, 8646, 27017)
EXTRA_UDP = (53, 67, 68, 69, 123, 161, 500, 514, 5353, 8080, 10022)
PROBE_TIMEOUT = 2.0


def need() -> None:
    """Skip (allow-listed reasons only in CI: tests/strict.py) unless root and the tools a booted bob test uses."""
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


def booted(tmp_path_factory: pytest.TempPathFactory, key: str, with_disk: bool, sequence: Callable[[Guest], None]) -> Iterator[Guest]:
    """Boot the bob image (with a blank raw data disk labelled persistent, or none), register the key, run `sequence`."""
    need()
    facts: dict[str, Any] = {}
    image = bob_image()
    facts["image_bytes"] = sum(p.stat().st_size for p in image.iterdir() if p.is_file())
    facts["rootfs_bytes"] = (image / "rootfs.ext4").stat().st_size
    state = tmp_path_factory.mktemp("bob-state")
    sb = Sealbox(state_dir=state, image=image, prefix="bob" + os.urandom(2).hex())
    name = f"{sb.prefix}-{key}"
    keys = tmp_path_factory.mktemp("bob-keys")
    disk_args: list[str] = []
    if with_disk:  # raw: a --disk file's format is declared, never sniffed (FILE:qcow2 for qcow2)
        disk = keys / "persistent.raw"
        assert sb("disk", "create", str(disk), "--size", "256M", "--format", "raw", timeout=60).returncode == 0
        disk_args = ["--disk", f"{disk}:rw,serial=persistent"]
    t0 = time.monotonic()
    p = sb("run", str(image), "--name", name, "--rootfs", "disk", "--accel", "tcg", "--timeout", "420", *disk_args, timeout=480)
    try:
        assert p.returncode == 0, p.stderr
        rec = sb.record(name)
        assert rec is not None
        facts.update(run_s=round(time.monotonic() - t0, 1), ready_s=rec["guest"]["ready_s"], memory_mib=rec["spec"]["memory_mib"])
        net = rec["network"]
        g = Guest(sb, name, net["netns"], net["guest_ip"], Path(rec["guest"]["known_hosts"]), Path(rec["guest"]["client_key"]),
                  keygen(keys / "searcher"), keygen(keys / "other"), (0, ""), 22, {})
        facts["steps"] = g.steps  # filled by `sequence`: written out with the facts even if a step fails
        # the registration service starts with the guest's other services; bounded wait for it to answer
        wait_for(lambda: answers(g.netns, g.ip, 8080), 120, "the key registration port to answer")
        g.registered = http_post(g.netns, g.ip, 8080, (keys / "searcher.pub").read_bytes())
        sequence(g)
        yield g
        stop = sb("stop", name, timeout=120)  # the power button: `stop` needs no root SSH
        facts["stop"] = [stop.returncode, stop.stdout.strip(), stop.stderr.strip()]
        assert stop.returncode == 0, stop.stderr
        assert sb.status(name) == "stopped"
    finally:
        out = tmp_path_factory.getbasetemp() / f"bob-{key}-facts.json"
        out.write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
        print(f"\nbob {key} facts ({out}): {json.dumps(facts, sort_keys=True)}")
        sb("rm", "--force", name, timeout=120)
        left = leftovers(state, name)
        scrub(state, sb.prefix)
        assert left == []


def cmd(g: Guest, *command: str, stdin: str | None = None, timeout: float = 120) -> dict[str, Any]:
    t = time.monotonic()
    p = g.ssh(*command, stdin=stdin, timeout=timeout)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip(), "s": round(time.monotonic() - t, 1)}


def answers(netns: str, ip: str, port: int) -> bool:
    try:
        connect_in_netns(netns, ip, port, 2).close()
        return True
    except OSError:
        return False

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


def spec_bob(key: str = "bob-e2e") -> Any:
    """The [bob] section of a cached test image's spec (tests/imagecache.py keeps it under specs/KEY)."""
    return load_spec(CACHE / "specs" / key / "spec.toml").spec.bob


def port_table(g: Guest, bob: Any = None) -> dict[str, dict[int, str]]:
    """Which guest ports answer from the sandbox's namespace (the host side), TCP and UDP, probed at once."""
    inbound = [o for o in openings(bob or spec_bob()) if o.direction == "in"]
    all_tcp = sorted({o.port for o in inbound if "tcp" in o.protos} | set(EXTRA_TCP))
    all_udp = sorted({o.port for o in inbound if "udp" in o.protos} | set(EXTRA_UDP))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        tcp = dict(zip(all_tcp, pool.map(lambda p: _tcp(g.netns, g.ip, p), all_tcp), strict=True))
        udp = dict(zip(all_udp, pool.map(lambda p: _udp(g.netns, g.ip, p), all_udp), strict=True))
    return {"tcp": tcp, "udp": udp}



def check_table(table: dict[str, dict[int, str]] | None, mode: str, bob: Any = None) -> None:
    """A probed table against builder/bob_firewall.py's openings for `mode` (what docs/modules.md shows)."""
    assert table is not None
    bob = bob or spec_bob()
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

