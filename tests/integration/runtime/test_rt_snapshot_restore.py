"""Sandboxes from a QEMU snapshot on real TCG boots (issue 16): one source boot and one snapshot serve every test.

The source runs a session (`sleep`) while it is snapshotted; two restores start at once. Each restored guest must have
renewed what it shared with its siblings before it is handed out: host key, client key, random state, hostname and
addresses — and the snapshot's SSH session must be gone."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from rt_integ import Sealbox, leftovers, wait_for

from sealbox.sandbox import ssh

pytestmark = [pytest.mark.integration, pytest.mark.boot]
MEMORY = "384"
MARK = "sealbox-snapshot-test-session"


@dataclass
class Snap:
    sb: Sealbox
    source: str
    path: Path
    r1: str
    r2: str

    def rec(self, name: str) -> dict[str, Any]:
        r = self.sb.record(name)
        assert r is not None, f"{name} has no record"
        return r

    def sh(self, name: str, script: str) -> str:
        p = self.sb.exec(name, "sh", "-c", script)
        assert p.returncode == 0, f"exec in {name} failed: {p.stderr}"
        return p.stdout


@pytest.fixture(scope="module")
def snap(sealbox: Sealbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snap]:
    sb = sealbox
    src, r1, r2 = (f"{sb.prefix}-{x}" for x in ("snapsrc", "snapr1", "snapr2"))
    dest = sb.state_dir / "snapshots" / "under-test"
    names = [src]
    try:
        sb(*sb.run_args(src, "--memory", MEMORY), timeout=400, check=True)
        session = sb.spawn("exec", src, "--", "sh", "-c", f"sleep 600; : {MARK}")  # a session the snapshot catches
        wait_for(lambda: MARK in sb.exec(src, "ps", "-eo", "args").stdout, 60, "the session in the source")
        out = sb("snapshot", src, "--dest", str(dest), timeout=120, check=True).stdout
        assert f"snapshot of {src} written to {dest}" in out
        session.kill()
        procs = {n: sb.spawn(*sb.run_args(n, "--from-snapshot", str(dest), "--json", timeout=180)) for n in (r1, r2)}
        names += [r1, r2]
        for name, proc in procs.items():
            _out, err = proc.communicate(timeout=300)
            if proc.returncode != 0:
                pytest.fail(f"restoring {name} failed: {err.strip()[-1500:]}")
        yield Snap(sb, src, dest, r1, r2)
    finally:
        for name in names:
            sb("rm", "--force", name, timeout=120)
        for name in names:
            assert leftovers(sb.state_dir, name) == [], name


def test_the_snapshot_is_private_and_says_what_it_holds(snap: Snap) -> None:
    assert stat.S_IMODE(snap.path.stat().st_mode) == 0o700
    for f in ("manifest.json", "vmstate"):
        st = (snap.path / f).stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, f
    m = json.loads((snap.path / "manifest.json").read_text())
    assert m["format"] == "sealbox-qemu-snapshot/1" and m["source"] == snap.source
    assert m["machine"]["memory_mib"] == int(MEMORY) and m["machine"]["accel"] == "tcg"
    assert m["vmm"]["version"] in subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout
    assert "memory" in m["contains"] and m["state"]["size"] == (snap.path / "vmstate").stat().st_size
    assert not list(snap.path.parent.glob(".*staging*")), "the staging directory was left behind"


def test_restored_siblings_differ_in_keys_randomness_names_and_addresses(snap: Snap) -> None:
    seen: dict[str, list[str]] = {"hostkey": [], "random": [], "hostname": [], "address": []}
    for name in (snap.source, snap.r1, snap.r2):
        out = snap.sh(name, "cat /run/sealbox/ssh/ssh_host_ed25519_key.pub; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; "
                            "echo; hostname; ip -4 -o addr show dev eth0").splitlines()
        rec = snap.rec(name)
        hostkey = " ".join(out[0].split()[:2])
        assert rec["guest"]["hostkeys"] == [hostkey], f"{name}: the pinned key is not the guest's"
        assert out[2] == name
        addrs = [w for w in out[3].split() if "/" in w]
        assert addrs == [f"{rec['network']['guest_ip']}/30"], f"{name}: {out[3]}"
        for key, value in zip(seen, (hostkey, out[1], out[2], addrs[0]), strict=True):
            seen[key].append(value)
    for key, values in seen.items():
        assert len(set(values)) == 3, f"{key} shared between the source and its restores: {values}"
    assert snap.rec(snap.r1)["guest"]["restored_from"] == str(snap.path)


def test_the_first_restores_keys_are_not_accepted_for_the_second(snap: Snap, tmp_path: Path) -> None:
    t1, t2 = (ssh.SshTarget(name=n, netns=snap.rec(n)["network"]["netns"], guest_ip=snap.rec(n)["network"]["guest_ip"],
                            key=Path(snap.rec(n)["guest"]["client_key"]), known_hosts=Path(snap.rec(n)["guest"]["known_hosts"]),
                            state_root=snap.sb.state_dir) for n in (snap.r1, snap.r2))
    assert ssh.run_in_guest(t2, ["true"], timeout=60) == 0
    # r1's client key does not open r2 (nor does the source's: the snapshot's authorized key is gone)
    assert ssh.run_in_guest(_with(t2, key=t1.key), ["true"], timeout=60) == 255
    src_key = Path(snap.rec(snap.source)["guest"]["client_key"])
    assert ssh.run_in_guest(_with(t2, key=src_key), ["true"], timeout=60) == 255
    # r1's host key, pinned for r2, is refused by the ssh client: r2 serves only its own
    forged = tmp_path / "known_hosts"
    forged.write_text(f"{t2.alias} {snap.rec(snap.r1)['guest']['hostkeys'][0]}\n")
    assert ssh.run_in_guest(_with(t2, known_hosts=forged), ["true"], timeout=60) == 255
    assert snap.rec(snap.r1)["guest"]["hostkeys"][0] not in t2.known_hosts.read_text()


def _with(t: ssh.SshTarget, **kw: Any) -> ssh.SshTarget:
    from dataclasses import replace

    return replace(t, **kw)


def test_the_snapshots_session_is_gone_and_the_source_runs_on(snap: Snap) -> None:
    for name in (snap.r1, snap.r2):
        assert MARK not in snap.sh(name, "ps -eo args"), f"{name} still runs the snapshot's SSH session"
    assert snap.sh(snap.source, "hostname").strip() == snap.source


def test_a_restore_into_another_shape_or_image_is_refused_before_anything_is_created(snap: Snap, tmp_path: Path) -> None:
    sb, name = snap.sb, f"{snap.sb.prefix}-snapbad"
    other = tmp_path / "image"  # the same files, but a manifest with one more byte: another image digest
    other.mkdir()
    for f in sb.image.iterdir():
        os.link(f, other / f.name) if f.name != "manifest.json" else (other / f.name).write_text(f.read_text() + "\n")
    cases = [(sb.image, ["--memory", "512"], "is a microvm/tcg, 2 vCPUs, 384 MiB"), (sb.image, ["--cpus", "1"], "1 vCPUs"),
             (other, [], "was taken from image")]
    for image, extra, msg in cases:
        p = sb("run", str(image), "--name", name, "--from-snapshot", str(snap.path), *extra)
        assert p.returncode != 0 and msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert leftovers(sb.state_dir, name) == []


def test_a_restored_sandbox_snapshots_again_and_rm_keeps_its_snapshots_unless_asked(snap: Snap) -> None:
    sb, r3 = snap.sb, f"{snap.sb.prefix}-snapr3"
    try:
        sb(*sb.run_args(r3, "--from-snapshot", str(snap.path), timeout=180), timeout=300, check=True)
        out = sb("snapshot", r3, timeout=120, check=True).stdout  # into the state dir's snapshot directory
        path = Path(out.split(" written to ")[1].split(" (")[0])
        assert path.parent == sb.state_dir / "snapshots" and path.is_dir()
        assert snap.sh(r3, "hostname").strip() == r3  # it runs on after its snapshot
        sb("rm", "--force", r3, timeout=120, check=True)
        assert path.is_dir(), "rm removed a snapshot without being asked"
        p = sb("rm", "--snapshots", r3, timeout=60, check=True)
        assert f"removed snapshot {path}" in p.stdout and not path.exists() and snap.path.is_dir()
    finally:
        sb("rm", "--force", r3, timeout=120)
        assert leftovers(sb.state_dir, r3) == []


def test_the_sdk_restores_with_the_snapshots_shape(snap: Snap) -> None:
    """Sandbox.restore: the machine shape not given (vCPUs, memory, accelerator) is the snapshot's, not create()'s defaults."""
    from sealbox.sdk import Sandbox

    sb, name = snap.sb, f"{snap.sb.prefix}-snapsdk"
    try:
        with Sandbox.restore(snap.path, sb.image, name=name, state_dir=sb.state_dir, timeout_s=180) as r:
            assert r.commands.run(["hostname"], check=True).stdout.strip() == name
            rec = snap.rec(name)
            assert rec["guest"]["restored_from"] == str(snap.path)
            assert (rec["spec"]["memory_mib"], rec["spec"]["accel"]) == (int(MEMORY), "tcg")
            assert rec["guest"]["hostkeys"] != snap.rec(snap.source)["guest"]["hostkeys"]
    finally:
        sb("rm", "--force", name, timeout=120)
        assert leftovers(sb.state_dir, name) == []


@pytest.mark.slow
def test_a_snapshot_pool_fills_and_refills_by_restoring_its_template(sealbox: Sealbox) -> None:
    """Pool(snapshot=True): one cold boot (the template), members restored from its snapshot, refills too; close()
    deletes the snapshot and leaves nothing behind."""
    from sealbox.sdk import Pool, Sandbox

    sb, pool_name = sealbox, f"{sealbox.prefix}-snappool"
    seen: list[str] = []
    try:
        with Pool(sb.image, size=1, name=pool_name, snapshot=True, state_dir=sb.state_dir, accel="tcg",
                  memory_mib=int(MEMORY), timeout_s=300) as pool:
            first = pool.acquire(timeout=600)
            seen.append(first.name)
            snap_path = first.inspect()["guest"]["restored_from"]
            assert Path(snap_path).parent == sb.state_dir / "snapshots" and Path(snap_path).name.startswith(f"{pool_name}-template-")
            pool.release(first)
            wait_for(lambda: pool.ready == 1, 300, "the pool's refill")
            [member] = Sandbox.list(labels={"sealbox.pool": pool_name}, state_dir=sb.state_dir)
            seen.append(member.name)
            assert member.name != first.name
            assert Sandbox.connect(member.name, state_dir=sb.state_dir).inspect()["guest"]["restored_from"] == snap_path
        assert not Path(snap_path).exists(), "close() left the pool's snapshot"
    finally:
        for name in [*seen, f"{pool_name}-template"]:
            sb("rm", "--force", "--snapshots", name, timeout=120)
            assert leftovers(sb.state_dir, name) == []
