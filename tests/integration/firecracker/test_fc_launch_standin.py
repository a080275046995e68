"""Real staging + jailer start/stop/undo on this machine, with a STAND-IN jailer/firecracker
(standin_jailer.py) because the real binaries are absent. Real: files, ownership, modes, the API
socket, processes, v1/v2 cgroup dirs, signals and cleanup."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fc_testlib import make_plan

from sealbox.errors import SandboxError
from sealbox.sandbox.state import pid_alive
from sealbox.sandbox.steps import StepLog, apply_steps, undo_steps
from sealbox.sandbox.vmm.firecracker import jailer as J
from sealbox.sandbox.vmm.firecracker.api import FirecrackerClient
from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
from sealbox.sandbox.vmm.firecracker.launch import stop_vm
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings

pytestmark = pytest.mark.integration
STANDIN = Path(__file__).with_name("standin_jailer.py")
UID = GID = 64123


@pytest.fixture
def env(tmp_path: Path):
    name = f"sbt-{secrets.token_hex(4)}"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    jailer = bindir / "jailer"
    jailer.write_text(f"#!{sys.executable}\n" + STANDIN.read_text())
    jailer.chmod(0o755)
    fc = bindir / "firecracker"
    fc.write_bytes(b"\x7fELF stand-in firecracker (never executed)")
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / f"sealbox-{name}").write_text("")  # the stand-in only opens the handle
    image = tmp_path / "image"
    image.mkdir()
    (image / "vmlinux").write_bytes(b"\x7fELF" + b"k" * 4096)
    (image / "initrd.cpio.zst").write_bytes(b"initrd" * 1000)
    (tmp_path / "sandbox").mkdir()
    (tmp_path / "sandbox" / "instance.img").write_bytes(b"SEALBOX-INSTANCE-V1\n".ljust(4096, b"\0"))
    os.chmod(tmp_path / "sandbox" / "instance.img", 0o600)
    settings = FirecrackerSettings(firecracker=fc, jailer=jailer, chroot_base=tmp_path / "jails", start_timeout=5)
    backend = FirecrackerBackend(settings)
    plan = make_plan(tmp_path, name=name, uid=UID, gid=GID)
    steps = backend.steps(plan)
    steps[1] = steps[1].model_copy(update={"netns": netns_dir / f"sealbox-{name}",
                                           "argv": tuple(a.replace("/var/run/netns", str(netns_dir)) for a in steps[1].argv)})
    yield backend, plan, steps, tmp_path
    for version, ctrls in ((1, ["cpu", "memory", "pids"]), (2, [])):
        for d in J.jailer_cgroup_dirs(version, ctrls, "firecracker", name, parent="sealbox"):
            if d.is_dir():
                subprocess.run(["rmdir", str(d)], check=False)


def _processes_mentioning(word: str) -> list[int]:
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if word.encode() in (p / "cmdline").read_bytes() and (p / "stat").read_text().split(")")[1].split()[0] != "Z":
                    found.append(int(p.name))
            except OSError:
                pass
    return found


def behaviour(tmp_path: Path, **kw) -> None:
    (tmp_path / "bin" / "behaviour.json").write_text(json.dumps(kw))


def test_start_lockdown_stop_and_cleanup(env) -> None:
    backend, plan, steps, tmp = env
    lay = backend.layout(plan)
    # leftovers of a crashed run: a stale socket and a stale pid file inside a fresh jail are removed before start
    log, saved = StepLog(), []
    apply_steps(steps[:1], log, lambda: saved.append(1))
    import socket as pysocket

    from sealbox.sandbox.vmm.firecracker.api import uds_path

    stale = pysocket.socket(pysocket.AF_UNIX)
    lay.api_sock.parent.mkdir(mode=0o700, exist_ok=True)
    assert len(str(lay.api_sock)) > 108  # longer than sun_path: the client must cope
    with uds_path(lay.api_sock) as short:
        stale.bind(short)
    stale.close()
    lay.pid_file.write_text("999999")
    apply_steps(steps[1:], log, lambda: saved.append(1))
    out = log.entries[1].outputs
    assert pid_alive(out["pid"], out["start_time"])
    st = os.stat(lay.api_sock)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o200 and st.st_uid == UID
    assert FirecrackerClient(lay.api_sock).describe_instance()["id"] == plan.spec.name
    console = plan.console_log.read_text()
    assert "stand-in console: firecracker" in console and "--config-file /config.json" in console
    # staged files: ownership rule
    root = lay.root
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o700 and os.stat(root).st_uid == UID
    k = os.stat(root / "vmlinux")
    assert k.st_ino == os.stat(plan.kernel).st_ino and k.st_uid == 0  # hard link, owner untouched
    inst = os.stat(root / "instance.img")
    assert inst.st_ino != os.stat(plan.instance_disk).st_ino and inst.st_uid == UID and stat.S_IMODE(inst.st_mode) == 0o400
    cfg = json.loads((root / "config.json").read_text())
    assert cfg == backend.config(plan) and os.stat(root / "config.json").st_uid == UID
    assert os.stat(root / "firecracker.log").st_uid == UID
    cgroups = J.jailer_cgroup_dirs(1, ["cpu", "memory", "pids"], "firecracker", plan.spec.name, parent="sealbox")
    assert cgroups and all(d.is_dir() for d in cgroups)
    mem = next(d for d in cgroups if "memory" in str(d))
    assert int((mem / "memory.limit_in_bytes").read_text()) == plan.cgroup.memory_bytes
    # stop: SendCtrlAltDel -> the stand-in exits
    assert stop_vm(lay.api_sock, out["pid"], out["start_time"], timeout=5) == "shut down"
    assert "Restarting system" in plan.console_log.read_text()
    assert undo_steps(log, lambda: None) == []
    assert not lay.jail_dir.exists()
    assert not any(d.exists() for d in cgroups)
    assert undo_steps(StepLog(entries=[e.model_copy(update={"state": "done"}) for e in log.entries]), lambda: None) == []


def test_a_guest_that_ignores_ctrl_alt_del_is_killed(env) -> None:
    backend, plan, steps, tmp = env
    behaviour(tmp, ignore_ctrl_alt_del=True)
    log = StepLog()
    apply_steps(steps, log, lambda: None)
    out = log.entries[1].outputs
    assert stop_vm(backend.layout(plan).api_sock, out["pid"], out["start_time"], timeout=0.5) == "killed"
    assert not pid_alive(out["pid"], out["start_time"])
    assert undo_steps(log, lambda: None) == []


def test_jailer_failure_is_one_line_and_leaves_nothing(env) -> None:
    backend, plan, steps, tmp = env
    behaviour(tmp, fail="Failed to join network namespace: netns: Invalid argument (os error 22)")
    log = StepLog()
    with pytest.raises(SandboxError, match=r"the jailer failed \(exit 1\): Failed to join network namespace") as e:
        apply_steps(steps, log, lambda: None)
    assert "\n" not in str(e.value)
    assert not backend.layout(plan).jail_dir.exists()
    assert [x.state for x in log.entries] == ["undone", "undone"]


def test_api_that_never_comes_up_times_out_and_is_killed(env) -> None:
    backend, plan, steps, tmp = env
    behaviour(tmp, no_socket=True)
    steps[1] = steps[1].model_copy(update={"start_timeout": 1.0})
    log = StepLog()
    with pytest.raises(SandboxError, match="did not come up within 1s"):
        apply_steps(steps, log, lambda: None)
    assert "stand-in console" in plan.console_log.read_text()  # the child did start
    assert _processes_mentioning(plan.spec.name) == []  # and was killed by the undo (via its cgroup)
    assert not any(d.exists() for d in J.jailer_cgroup_dirs(1, ["cpu", "memory", "pids"], "firecracker", plan.spec.name, parent="sealbox"))
    assert not backend.layout(plan).jail_dir.exists()


def test_missing_netns_handle_is_a_clear_error(env) -> None:
    backend, plan, steps, tmp = env
    steps[1] = steps[1].model_copy(update={"netns": tmp / "netns" / "absent"})
    with pytest.raises(SandboxError, match="network namespace handle .* does not exist"):
        apply_steps(steps, StepLog(), lambda: None)


def test_restore_from_snapshot_stages_files_and_loads_it(env) -> None:
    import hashlib

    from sealbox.sandbox.vmm.firecracker.snapshot import SnapshotDrive, SnapshotFile, SnapshotManifest

    backend, plan, _, tmp = env
    snap = tmp / "snap"
    (snap / "disks").mkdir(parents=True)
    contents = {"vmstate": b"state", "memory": b"\0" * 4096, "disks/instance.img": b"i" * 4096, "disks/disk0.img": b"d" * 4096}
    for rel, data in contents.items():
        (snap / rel).write_bytes(data)
        os.chmod(snap / rel, 0o644)

    def f(rel: str) -> dict:
        return {"file": rel, "sha256": hashlib.sha256(contents[rel]).hexdigest(), "size": len(contents[rel])}

    m = SnapshotManifest(source="orig", created_at=0, firecracker_version="1.16.1", source_resumed=False,
                         vmstate=SnapshotFile(**f("vmstate")), memory=SnapshotFile(**f("memory")), vm_config={},
                         drives=[SnapshotDrive(drive_id="instance", in_jail="/instance.img", read_only=True, is_root_device=False,
                                               **f("disks/instance.img")),
                                 SnapshotDrive(drive_id="disk0", in_jail="/disk0.img", read_only=False, is_root_device=False,
                                               **f("disks/disk0.img"))])
    (snap / "manifest.json").write_text(m.model_dump_json())
    rplan = plan.model_copy(update={"spec": plan.spec.model_copy(update={"from_snapshot": snap})})
    steps = backend.steps(rplan)
    netns = tmp / "netns" / f"sealbox-{plan.spec.name}"
    steps[1] = steps[1].model_copy(update={"netns": netns, "argv": tuple(a.replace("/var/run/netns", str(tmp / "netns")) for a in steps[1].argv)})
    assert steps[0].config is None and "--config-file" not in steps[1].argv and "--log-path" in steps[1].argv
    log = StepLog()
    apply_steps(steps, log, lambda: None)
    root = backend.layout(plan).root
    try:
        assert os.stat(root / "snapshot" / "memory").st_ino == os.stat(snap / "memory").st_ino
        assert os.stat(root / "instance.img").st_ino == os.stat(snap / "disks" / "instance.img").st_ino
        d0 = os.stat(root / "disk0.img")  # a private writable copy: the snapshot stays restorable
        assert d0.st_ino != os.stat(snap / "disks" / "disk0.img").st_ino and d0.st_uid == UID and stat.S_IMODE(d0.st_mode) == 0o600
        assert not (root / "config.json").exists()
        console = plan.console_log.read_text()
        assert ('PUT /snapshot/load {"mem_backend": {"backend_path": "/snapshot/memory", "backend_type": "File"}, '
                '"network_overrides": [{"host_dev_name": "tap0", "iface_id": "eth0"}], "resume_vm": true, '
                '"snapshot_path": "/snapshot/vmstate"}') in console
    finally:
        assert undo_steps(log, lambda: None) == []
    assert not root.exists() and (snap / "memory").read_bytes() == contents["memory"]
