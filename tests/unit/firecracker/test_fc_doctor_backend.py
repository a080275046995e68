"""doctor.checks / auto_select_ok with stand-in binaries, settings from env, and the backend's
describe/check_host/steps on a machine without the real binaries."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from fc_testlib import make_plan

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.steps import step_from_record
from sealbox.sandbox.vmm.firecracker import doctor
from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings
from strict import skip_allowed


def stand_in_binary(path: Path, output: str, rc: int = 0) -> Path:
    """A stand-in (NOT Firecracker): a script answering --version like the real binary."""
    path.write_text(f"#!/bin/sh\nprintf '%s\\n\\n' '{output}'\nexit {rc}\n")
    path.chmod(0o755)
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def bins(tmp_path: Path) -> tuple[Path, Path]:
    return (stand_in_binary(tmp_path / "firecracker", "Firecracker v1.16.1"),
            stand_in_binary(tmp_path / "jailer", "Jailer v1.16.1"))


def test_checks_report_presence_version_and_digest(tmp_path: Path, bins) -> None:
    fc, jl = bins
    s = FirecrackerSettings(firecracker=fc, jailer=jl, firecracker_sha256=sha(fc), jailer_sha256="0" * 64, chroot_base=tmp_path / "jails")
    by = {c.name: c for c in doctor.checks(s)}
    assert by["firecracker"].status == "ok"
    assert "Firecracker v1.16.1" in by["firecracker"].detail and "matches SEALBOX_FIRECRACKER_SHA256" in by["firecracker"].detail
    assert by["jailer"].status == "fail" and "does NOT match SEALBOX_JAILER_SHA256" in by["jailer"].detail
    assert by["jailer-chroot-base"].status == "ok"


def test_checks_missing_unpinned_wrong_version_and_broken(tmp_path: Path) -> None:
    fc = stand_in_binary(tmp_path / "firecracker", "Firecracker v1.15.0")
    s = FirecrackerSettings(firecracker=fc, jailer=tmp_path / "nojailer", chroot_base=tmp_path)
    by = {c.name: c for c in doctor.checks(s)}
    assert by["firecracker"].status == "warn" and "v1.16" in by["firecracker"].fix
    assert by["jailer"].status == "warn" and "does not exist" in by["jailer"].detail
    stand_in_binary(fc, "Firecracker v1.16.1")
    c = doctor.checks(s)[0]
    assert c.status == "warn" and f"SEALBOX_FIRECRACKER_SHA256={sha(fc)}" in c.fix
    stand_in_binary(fc, "boom", rc=3)
    c = doctor.checks(s)[0]
    assert c.status == "fail" and "--version exited 3" in c.detail


def test_checks_flag_a_tmpfs_chroot_base(tmp_path: Path) -> None:
    s = FirecrackerSettings(chroot_base=Path("/dev/shm/sealbox-jails"))
    by = {c.name: c for c in doctor.checks(s)}
    assert by["jailer-chroot-base"].status == "fail" and "tmpfs" in by["jailer-chroot-base"].detail


def test_auto_select(tmp_path: Path, bins) -> None:
    fc, jl = bins
    good = FirecrackerSettings(firecracker=fc, jailer=jl, chroot_base=tmp_path)
    assert doctor.auto_select_ok(True, good)[0] is True
    ok, why = doctor.auto_select_ok(False, good)
    assert not ok and "KVM is not functional" in why
    ok, why = doctor.auto_select_ok(True, good.model_copy(update={"jailer": tmp_path / "nope"}))
    assert not ok and "jailer not found" in why
    ok, why = doctor.auto_select_ok(True, good.model_copy(update={"firecracker_sha256": "1" * 64}))
    assert not ok and "does not match SEALBOX_FIRECRACKER_SHA256" in why
    ok, why = doctor.auto_select_ok(True, good.model_copy(update={"chroot_base": Path("/dev/shm/j")}))
    assert not ok and "tmpfs" in why


def test_settings_from_env() -> None:
    s = FirecrackerSettings.from_env({"SEALBOX_FIRECRACKER": "/opt/fc", "SEALBOX_FIRECRACKER_SHA256": "AB" * 32,
                                      "SEALBOX_JAILER_CHROOT_BASE": "/var/jail", "SEALBOX_FIRECRACKER_LOG_LEVEL": "Debug"})
    assert s.firecracker == Path("/opt/fc") and s.firecracker_sha256 == "ab" * 32 and s.chroot_base == Path("/var/jail")
    with pytest.raises(UsageError, match="SEALBOX_JAILER_SHA256"):
        FirecrackerSettings.from_env({"SEALBOX_JAILER_SHA256": "xyz"})
    with pytest.raises(UsageError, match="SEALBOX_JAILER_CHROOT_BASE"):
        FirecrackerSettings.from_env({"SEALBOX_JAILER_CHROOT_BASE": "relative/dir"})
    with pytest.raises(UsageError, match="SEALBOX_FIRECRACKER_LOG_LEVEL"):
        FirecrackerSettings.from_env({"SEALBOX_FIRECRACKER_LOG_LEVEL": "loud"})


def test_describe_works_without_binaries_or_files(tmp_path: Path) -> None:
    b = FirecrackerBackend(FirecrackerSettings(firecracker=tmp_path / "no-fc", jailer=tmp_path / "no-jailer"))
    d = b.describe(make_plan(tmp_path / "nothing-here", name="dry"))
    assert set(d) == {"jailer_argv", "config", "steps", "jail", "api_sock"}
    assert d["jailer_argv"][:3] == [str(tmp_path / "no-jailer"), "--id", "dry"]
    assert [s["kind"] for s in d["steps"]] == ["firecracker-stage", "firecracker-jailer"]
    assert d["config"]["network-interfaces"][0]["host_dev_name"] == "tap0"
    import json

    json.dumps(d)  # what `--dry-run --json` prints


def test_steps_round_trip_through_the_record(tmp_path: Path) -> None:
    b = FirecrackerBackend(FirecrackerSettings(firecracker=tmp_path / "fc", jailer=tmp_path / "jl", chroot_base=tmp_path / "j"))
    for step in b._steps(make_plan(tmp_path), probe=False):
        again = step_from_record(step.kind, step.model_dump(mode="json"))
        assert again == step


def test_check_host_errors_name_the_fix(tmp_path: Path, bins) -> None:
    fc, jl = bins
    plan = make_plan(tmp_path)
    with pytest.raises(SandboxError, match="needs the firecracker binary") as e:
        FirecrackerBackend(FirecrackerSettings(firecracker=tmp_path / "x", jailer=jl)).check_host(plan)
    assert "--vmm qemu" in e.value.hint
    b = FirecrackerBackend(FirecrackerSettings(firecracker=fc, jailer=jl, chroot_base=tmp_path / "jails"))
    with pytest.raises(SandboxError, match="planned for TCG"):
        b.check_host(plan.model_copy(update={"accel": "tcg"}))
    if not Path("/dev/kvm").exists():
        skip_allowed("kvm", "no /dev/kvm on this machine: the kernel checks come after it")
    plan.kernel.parent.mkdir(parents=True)
    with pytest.raises(SandboxError, match="kernel .*vmlinux"):
        b.check_host(plan)
    plan.kernel.write_bytes(b"MZ\x90\x00")
    with pytest.raises(SandboxError, match="not an ELF vmlinux"):
        b.check_host(plan)
    plan.kernel.write_bytes(b"\x7fELF\x02\x01")
    b.check_host(plan)
    with pytest.raises(SandboxError, match="does not match SEALBOX_JAILER_SHA256"):
        FirecrackerBackend(b.settings.model_copy(update={"jailer_sha256": "2" * 64})).check_host(plan)


def test_cli_commands_are_registered_and_reject_non_firecracker_sandboxes(tmp_path: Path) -> None:
    import time

    from sealbox.cli.main import COMMANDS, main
    from sealbox.sandbox.state import SandboxRecord, StateDir

    assert {k: COMMANDS[k] for k in ("pause", "resume", "snapshot")} == {
        "pause": "sealbox.cli.firecracker:pause", "resume": "sealbox.cli.firecracker:resume",
        "snapshot": "sealbox.cli.snapshot:snapshot"}  # QEMU sandboxes too (sandbox/snapshot.py)
    sd = StateDir(tmp_path / "state")
    sd.reserve(SandboxRecord(name="q1", created_at=time.time(), status="running"))
    assert main(["pause", "q1", "--state-dir", str(sd.root)]) == 2
    assert main(["resume", "missing", "--state-dir", str(sd.root)]) == 1
    assert os.environ.get("SEALBOX_DEBUG") != "1"
