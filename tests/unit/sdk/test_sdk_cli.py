"""The CLI's sandbox verbs are the SDK's calls (one code path): what `sealbox run/ps/exec` hand to the SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sealbox.cli.main import main
from sealbox.sdk import LocalHost, Sandbox


def test_run_is_sandbox_create(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def create(cls: type[Sandbox], image: Path, **kw: Any) -> Sandbox:
        seen.update(kw, image=image)
        return Sandbox(kw["name"], kw["host"], created={"name": kw["name"], "vmm": "qemu", "accel": "tcg", "address": "10.0.0.2",
                                                        "ready_s": 1.0, "run_s": 2.0})

    monkeypatch.setattr(Sandbox, "create", classmethod(create))
    rc = main(["run", str(tmp_path / "img"), "--name", "x", "--label", "team=rl", "--net", "nat", "--timeout", "30",
               "--state-dir", str(tmp_path / "state")])
    assert rc == 0 and "x is running (qemu/tcg, 10.0.0.2)" in capsys.readouterr().out
    assert (seen["labels"], seen["network"], seen["timeout_s"], seen["cpus"]) == ({"team": "rl"}, "nat", 30.0, 2)
    assert isinstance(seen["host"], LocalHost) and seen["host"].root == tmp_path / "state"
    assert main(["run", str(tmp_path / "img"), "--name", "x", "--label", "novalue", "--state-dir", str(tmp_path / "state")]) == 2
    assert "label 'novalue' is not KEY=VALUE" in capsys.readouterr().err


def test_exec_builds_its_line_with_the_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(LocalHost, "exec_replace", lambda self, name, remote, user, tty: seen.update(name=name, remote=remote, user=user))
    rc = main(["exec", "-e", "GREETING=it's $(x)", "-w", "/tmp/d", "box", "--state-dir", str(tmp_path), "--", "printf", "%s", "a b"])
    assert rc == 0
    assert seen == {"name": "box", "remote": "cd -- /tmp/d || exit 1; export GREETING='it'\"'\"'s $(x)'; printf %s 'a b'", "user": None}
    assert main(["exec", "-e", "BAD-NAME=1", "box", "--state-dir", str(tmp_path), "--", "true"]) == 2
    assert "environment variable name 'BAD-NAME' is invalid" in capsys.readouterr().err
    assert main(["exec", "box", "--state-dir", str(tmp_path), "--", "type", "cd"]) == 0
    assert seen["remote"] == "type cd"  # as before: a builtin works, nothing is prepended


def _qemu_snapshot(d: Path, image: Path, **machine: Any) -> Path:
    """A QEMU snapshot directory as `sealbox snapshot` leaves it (a manifest and a stand-in state file)."""
    import os
    import time

    from sealbox.sandbox import snapshot as snap

    d.mkdir(mode=0o700)
    (d / snap.STATE_FILE).write_bytes(b"QEVM" + bytes(1020))
    shape = {"accel": "tcg", "cpus": 1, "memory_mib": 384, "rootfs": "initrd", "guest_mac": "02:01:02:03:04:05",
             "instance_disk_size": 4096, **machine}
    m = snap.SnapshotManifest(source="src", owner="sealbox/0/src", created_at=time.time(),
                              image=snap.ImageRef(name="demo", dir=str(image), digest=snap.image_digest(image)),
                              vmm={"backend": "qemu", "version": "7.2"}, machine=snap.Machine.model_validate(shape),
                              state=snap.StateFile(size=1024, sha256="0" * 64), source_hostkeys=[], save_s=0.3)
    (d / snap.MANIFEST).write_text(m.model_dump_json())
    for f in (snap.STATE_FILE, snap.MANIFEST):
        os.chmod(d / f, 0o600)
    return d


def test_run_from_a_snapshot_and_sandbox_restore_take_its_shape_unless_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, image_dir: Path) -> None:
    """vCPUs and root not given are the snapshot's (create()'s own defaults would be refused against a 1-vCPU snapshot);
    given ones are passed on for the runtime to check. The same for `sealbox run`, Sandbox.restore, AsyncSandbox.restore."""
    import asyncio

    from sealbox.sdk import AsyncSandbox

    s = _qemu_snapshot(tmp_path / "snap", image_dir, rootfs="disk")
    seen: list[dict[str, Any]] = []

    def create(cls: type[Sandbox], image: Path, **kw: Any) -> Sandbox:
        seen.append(kw)
        return Sandbox(kw.get("name") or "r", LocalHost(tmp_path / "state"),
                       created={"name": "r", "vmm": "qemu", "accel": "tcg", "address": "10.0.0.2", "ready_s": 1.0, "run_s": 2.0})

    monkeypatch.setattr(Sandbox, "create", classmethod(create))
    assert main(["run", str(image_dir), "--name", "r", "--from-snapshot", str(s), "--state-dir", str(tmp_path / "state")]) == 0
    assert main(["run", str(image_dir), "--name", "r", "--from-snapshot", str(s), "--cpus", "2", "--state-dir", str(tmp_path / "state")]) == 0
    Sandbox.restore(s, image_dir, name="r", host=LocalHost(tmp_path / "state"))
    asyncio.run(AsyncSandbox.restore(s, image_dir, name="r", host=LocalHost(tmp_path / "state")))
    assert [(kw["cpus"], kw["rootfs"], kw["from_snapshot"]) for kw in seen] == [(1, "disk", str(s)), (2, "disk", str(s)),
                                                                              (1, "disk", str(s)), (1, "disk", str(s))]
    assert main(["run", str(image_dir), "--name", "r", "--from-snapshot", str(tmp_path), "--state-dir", str(tmp_path / "state")]) == 2
