"""The fleet's front ends against a real Ray fleet (the head and the simulated hosts of conftest.py's fleet, plus a
third host joined by `sealbox fleet join` itself): the real `sealbox --fleet ADDRESS run|ps|exec|logs|inspect|stop|rm`;
a host that joins with the real doctor declares the kvm and tdx labels doctor found; Ray's sandbox backend interface
(BaseSandboxBackend, Ray 2.60) called directly on sealbox's adapter. One module: they share one fleet.

The sandboxes here are the STAND-IN host runtime's (fleet_standin.py: processes, no guests), placed on host0/host1
with --host-label; host2 runs this machine's real runtime (its agent runs doctor and gc) and gets no sandbox. Each
CLI call runs in the head's network namespace: a Ray driver must share a node with a raylet."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import fleet_integ
import pytest
from fleet_integ import HERE, Fleet, in_ns

pytestmark = pytest.mark.integration
IMAGE = "/nonexistent/standin-image"  # the stand-in host boots nothing


@pytest.fixture(scope="module")
def fleet3(ray_fleet: Fleet) -> Iterator[Fleet]:
    """The module's fleet with host2 joined through the CLI (doctor probed: its labels are facts). Taken down
    with the rest by the ray_fleet fixture (its membership process is in f.joins, its namespace in f.hosts)."""
    f = ray_fleet
    pool = ipaddress.ip_network(os.environ.get("SEALBOX_SUBNET_POOL", "10.200.0.0/16"))
    i = len(f.hosts)
    fleet_integ._link(f, "host2", i, list(pool.subnets(new_prefix=24))[-1], "c")
    h = f.hosts["host2"]
    h["pool"] = str(list(pool.subnets(new_prefix=20))[i])
    log = f.tmp / "join-host2.log"
    argv = [*in_ns(h["ns"]), sys.executable, "-m", "sealbox", "fleet", "join", f.address, "--node-ip", h["ip"], "--cpus", "1",
            "--memory", "512", "--label", "zone=c", "--name", "host2", "--temp-dir", str(f.tmp / "ray-host2")]
    with open(log, "wb") as err:
        f.joins["host2"] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                            env=f.env(SEALBOX_STATE_DIR=h["state"], SEALBOX_RUN_DIR=h["state"] + "-run",
                                                      SEALBOX_SUBNET_POOL=h["pool"]))
    deadline = time.monotonic() + 180
    while b"joined the fleet" not in log.read_bytes():
        assert f.joins["host2"].poll() is None and time.monotonic() < deadline, f"host2 did not join: {log.read_text()[-2000:]}"
        time.sleep(0.3)
    yield f


def cli(f: Fleet, *args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`sealbox ARGS` in the head's namespace, the fleet given as --fleet (or by `env`)."""
    fleet = [] if env else ["--fleet", f.address]
    return subprocess.run([*in_ns(f.head_ns), sys.executable, "-m", "sealbox", *fleet, *args], input=stdin, capture_output=True,
                          text=True, timeout=180, env=f.env(SEALBOX_STATE_DIR=str(f.tmp / "caller"), **(env or {})))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.args, proc.stderr[-3000:])
    return proc.stdout


def test_run_ps_exec_rm(fleet3: Fleet) -> None:
    f = fleet3
    a, b = f"{f.tag}-cli-a", f"{f.tag}-cli-b"
    try:
        out = ok(cli(f, "run", IMAGE, "--name", a, "--cpus", "1", "--memory", "256", "--host-label", "zone=b", "--label", "via=cli"))
        assert out.startswith(f"{a} is running on host1 "), out
        ok(cli(f, "run", IMAGE, "--name", b, "--cpus", "1", "--memory", "256", "--host-label", "zone=a", "--label", "via=cli"))

        # ps: the fleet's sandboxes with their host
        lines = ok(cli(f, "ps", "--label", "via=cli")).splitlines()
        assert lines[0].split()[:3] == ["NAME", "HOST", "STATUS"], lines
        assert sorted(ln.split()[:3] for ln in lines[1:]) == [[a, "host1", "running"], [b, "host0", "running"]]
        rows = json.loads(ok(cli(f, "ps", "--json", "--label", "via=cli")))
        assert sorted((r["name"], r["host"], r["cpus"], r["memory_mib"]) for r in rows) == [(a, "host1", 1, 256), (b, "host0", 1, 256)]

        # exec: stdin in, stdout and stderr out, the exit code ours; run on the sandbox's own host (its namespace's address)
        res = cli(f, "exec", a, "--", "sh", "-c", "cat; echo err >&2; ip -o -4 addr show scope global | awk '{print $4}'; exit 7",
                  stdin="through the fleet\n")
        assert (res.returncode, res.stdout, res.stderr) == (7, f"through the fleet\n{f.hosts['host1']['ip']}/24\n", "err\n")
        # the fleet from $SEALBOX_FLEET; argv words kept as they are
        res = cli(f, "exec", b, "--", "printf", "%s|", "two words", "$HOME", env={"SEALBOX_FLEET": f.address})
        assert (res.returncode, res.stdout, res.stderr) == (0, "two words|$HOME|", "")
        res = cli(f, "exec", b, "--", "sh", "-c", "kill -TERM $$")  # a command killed by a signal: 128+N, as a shell says it
        assert (res.returncode, res.stderr) == (143, "")
        assert ok(cli(f, "logs", b)) == "stand-in console\n"
        insp = json.loads(ok(cli(f, "inspect", b)))
        assert (insp["fleet"]["host"], insp["fleet"]["state"], insp["name"]) == ("host0", "running", b)
        assert ok(cli(f, "stop", b)) == f"{b} stopped (killed)\n"

        # a sandbox that does not exist: one line, non-zero
        res = cli(f, "exec", f"{f.tag}-nope", "--", "true")
        assert res.returncode != 0 and res.stderr.strip().splitlines() == [f"sealbox: error: no sandbox named '{f.tag}-nope' in the fleet"]

        # rm: removed through the owning hosts; ps no longer shows them, nothing left on the hosts
        assert ok(cli(f, "rm", a, b)).splitlines() == [f"removed {a}", f"removed {b}"]
        assert ok(cli(f, "ps", "--all", "--label", "via=cli")).splitlines()[1:] == []
        assert json.loads(ok(cli(f, "ps", "--all", "--json"))) == []
        for h in ("host0", "host1"):
            assert list((Path(f.hosts[h]["state"]) / "standin").glob("*.json")) == []
    finally:
        with contextlib.suppress(Exception):
            cli(f, "rm", "-f", a, b)


def test_doctor_labels_of_a_joining_host(fleet3: Fleet) -> None:
    """host2 joined with the real doctor: kvm is false here although /dev/kvm opens (no vCPU ever runs on this
    kind of machine, docs/fleet.md), tdx false; its own label kept. The stand-in hosts joined without the probe."""
    f = fleet3
    st = json.loads(ok(cli(f, "fleet", "status", "--json")))
    labels = {h["host"]: h["labels"] for h in st["hosts"]}
    assert labels["host2"] == {"sealbox.host": "host2", "sealbox.kvm": "false", "sealbox.tdx": "false", "sealbox.zone": "c"}
    assert "sealbox.kvm" not in labels["host0"] and "sealbox.tdx" not in labels["host0"]
    agent = next(h["agent"] for h in st["hosts"] if h["host"] == "host2")
    assert agent["state"] == "up", agent
    line = [ln for ln in ok(cli(f, "fleet", "status")).splitlines() if ln.startswith("host2 ")]
    assert len(line) == 1 and "kvm=false,tdx=false,zone=c" in line[0].split(), line
    # a sandbox that needs KVM has no host in this fleet: said at once
    res = cli(f, "run", IMAGE, "--name", f"{f.tag}-kvm", "--cpus", "1", "--memory", "256", "--accel", "kvm")
    assert res.returncode != 0 and "no host in the fleet with sealbox.kvm=true" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_ray_sandbox_backend_adapter(fleet3: Fleet) -> None:
    """Ray's BaseSandboxBackend calls, as Ray's SandboxRuntime makes them, on FleetSandboxBackend."""
    f = fleet3
    work = f.tmp / "backend-work"  # the STAND-IN runs commands on this machine: its "guest" paths are the test's
    work.mkdir(exist_ok=True)
    proc = f.in_head([sys.executable, str(HERE / "fleet_backend_driver.py"), f.address, str(work)], timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["is_backend"]
    assert out["host"] == "host0"  # placed by the fleet on a host with zone=a
    assert (out["info"]["cpus"], out["info"]["memory_mib"], out["info"]["labels"]) == (1, 200, {"ray-sandbox-backend": "1"})
    assert out["status"] == "RUNNING"
    # the config's env, workdir and shell apply to every command; the call's env adds to them
    assert out["exec_str"] == [4, f"hello x from {work}\n", "oops\n", True]
    assert out["exec_argv"] == [0, "a b|$GREETING|"]
    assert out["timeout"] == "command timed out after 1 seconds"
    assert out["read"] == "one\ntwo\n" and (work / "f.txt").read_text() == "one\ntwo\n"
    assert "no such file" in out["read_missing"]
    assert "network='public'" in out["public"]
    assert "no host in the fleet with" in out["nohost"] and "sealbox.zone=nowhere" in out["nohost"]
    assert out["status_after"] == "TERMINATED" and "not found" in out["delete_again"] and out["unknown"]
    assert out["left"] == []
