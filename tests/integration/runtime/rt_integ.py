"""Helpers for the runtime integration tests: the sealbox CLI as a subprocess, the test image, and a
complete list of what a sandbox may leave on the host (used to prove that nothing remains)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sealbox.sandbox.host import cgroups, netnames, owner
from sealbox.sandbox.host.registry import Registry

CLI = [sys.executable, "-m", "sealbox.cli.main"]


@dataclass
class Sealbox:
    """Runs `sealbox ...` with a private state dir (SEALBOX_STATE_DIR), always bounded in time."""

    state_dir: Path
    image: Path
    prefix: str
    spawned: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SEALBOX_STATE_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1"}

    def __call__(self, *args: str, timeout: float = 120, input: str | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*CLI, *args], capture_output=True, text=True, env=self.env, timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"sealbox {' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env)
        self.spawned.append(p)
        return p

    def run_args(self, name: str, *extra: str, timeout: float = 300) -> list[str]:
        return ["run", str(self.image), "--name", name, "--accel", "tcg", "--timeout", str(timeout), *extra]

    def record(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.state_dir / "sandboxes" / name / "record.json").read_text())
        except (OSError, ValueError):
            return None

    def status(self, name: str) -> str | None:
        rows = json.loads(self("ps", "--all", "--json", check=True).stdout)
        return next((r["status"] for r in rows if r["name"] == name), None)

    def exec(self, name: str, *cmd: str, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self("exec", name, "--", *cmd, timeout=timeout, input=input)

    def kill_spawned(self) -> None:
        for p in self.spawned:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(timeout=10)


def image_dir(cache: Path) -> Path:
    """SEALBOX_TEST_IMAGE, else the default image shared by all integration tests (tests/imagecache.py)."""
    from imagecache import default_image

    return default_image()


def manifest(image: Path) -> dict[str, Any]:
    return json.loads((image / "manifest.json").read_text())


def _cmdline_pids(needle: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if needle.encode() in (d / "cmdline").read_bytes():
                    found.append(int(d.name))
            except OSError:
                continue
    return found


def cgroup_dirs(name: str, state_dir: Path) -> list[Path]:
    path = cgroups.path_for(owner.state_id(state_dir), name)
    return [Path(m) / path for m in sorted(set(cgroups.detect().mounts().values()))]


def leftovers(state_dir: Path, name: str) -> list[str]:
    """Everything of sandbox `name` still on the host: netns (and its tap), veth, nft table, cgroups,
    state/run dir (console, QMP socket, keys), host registry lease and uid, and processes (QEMU runs
    as -name sealbox-NAME)."""
    left = []
    if Path(f"/var/run/netns/{netnames.netns_name(name)}").exists():
        left.append(f"netns {netnames.netns_name(name)} (with its tap0)")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=20).stdout
    if f" {netnames.veth_name(name)}@" in links or f" {netnames.veth_name(name)}:" in links:
        left.append(f"veth {netnames.veth_name(name)}")
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=20).stdout.split()
    if netnames.root_table_name(name) in tables:
        left.append(f"nft table inet {netnames.root_table_name(name)}")
    left += [f"cgroup {d}" for d in cgroup_dirs(name, state_dir) if d.exists()]
    mounts = Path("/proc/self/mountinfo").read_text().split("\n")
    left += [f"mount {line.split()[4]}" for line in mounts if line and f"/sandboxes/{name}/" in line.split()[4] + "/"]
    if (state_dir / "sandboxes" / name).exists():
        left.append(f"state dir {state_dir / 'sandboxes' / name}")
    reg, mark = Registry(), owner.mark(state_dir, name)
    if name in reg.leases():
        left.append(f"host registry lease {reg.lease_path(name)}")
    left += [f"uid {uid} leased" for uid, hold in reg.uid_holds().items() if hold.owner == mark]
    left += [f"process {pid}" for pid in _cmdline_pids(f"sealbox-{name}\0")]
    return left


def wait_for(pred, timeout: float, what: str, interval: float = 0.1):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def end_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """A test's helper client (ssh -L, xfreerdp, Xvfb) ends with SIGTERM, then SIGKILL after `grace`.

    A client that outlives SIGTERM is the client's business, not what the test asserts: CI saw an ssh -N -L take
    more than 20 s to exit after the test's assertions had passed, and the teardown's TimeoutExpired failed the test.
    """
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"pid {proc.pid} ({proc.args!r:.80}) outlived SIGTERM by {grace:g}s: killed", file=sys.stderr)
        proc.kill()
        proc.wait(grace)


def scrub(state_dir: Path, prefix: str) -> list[str]:
    """Last line of defence after the tests: remove anything with the run's name prefix, report it."""
    found = []
    for pid in _cmdline_pids(f"sealbox-{prefix}"):
        found.append(f"process {pid}")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ns in Path("/var/run/netns").glob(f"sealbox-{prefix}*") if Path("/var/run/netns").is_dir() else []:
        found.append(f"netns {ns.name}")
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True, timeout=20)
    for mount in sorted(set(cgroups.detect().mounts().values())):
        for d in (Path(mount) / cgroups.path_for(owner.state_id(state_dir), "x")).parent.glob(f"{prefix}*"):
            found.append(f"cgroup {d}")
            cgroups.kill_all([d])
            with contextlib.suppress(OSError):
                d.rmdir()
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=20).stdout.split()
    for t in tables:
        if t.startswith(f"sealbox-{prefix}"):
            found.append(f"nft table {t}")
            subprocess.run(["nft", "delete", "table", "inet", t], capture_output=True, timeout=20)
    return found
