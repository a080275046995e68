"""Jail argv, TDX refusal, describe(), and `sealbox doctor` output shape."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest
from click.testing import CliRunner

from sealbox import doctor as host_doctor
from sealbox.cli.doctor import doctor
from sealbox.errors import SandboxError
from sealbox.sandbox.host import cgroups, jail
from sealbox.sandbox.host.checks import Check
from sealbox.sandbox.model import CgroupPlan, Limits
from sealbox.sandbox.vmm import qemu, qemu_launch
from sealbox.sandbox.vmm.qemu import QemuBackend


def test_jail_chain_order_and_flags() -> None:
    spec = jail.JailSpec(uid=995, gid=994, kvm_gid=108, devices=("/dev/kvm",), root_links={"/lib64": "usr/lib64", "/bin": "usr/bin"})
    argv = jail.jail_argv(spec, ["/usr/bin/qemu-system-x86_64", "-version"])
    sp, bw = argv.index(jail.SETPRIV), argv.index(jail.BWRAP)
    assert sp == 0 < bw  # drop privileges first: bwrap itself runs unprivileged
    head = argv[:bw]
    assert head[head.index("--reuid") + 1] == "995" and head[head.index("--regid") + 1] == "994"
    assert head[head.index("--groups") + 1] == "108"
    assert {"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"} <= set(head)
    body = argv[bw:]
    assert {"--unshare-all", "--unshare-user", "--disable-userns", "--new-session"} <= set(body)
    assert "--die-with-parent" not in body and "--share-net" not in body  # outlives `run`; no network
    i = body.index("--ro-bind")
    assert body[i : i + 3] == ["--ro-bind", "/usr", "/usr"]
    assert ["--symlink", "usr/bin", "/bin"] == body[body.index("/bin") - 2 : body.index("/bin") + 1]
    assert ["--dev-bind", "/dev/kvm", "/dev/kvm"] == body[body.index("--dev-bind") : body.index("--dev-bind") + 3]
    for flag, dest in (("--dev", "/dev"), ("--proc", "/proc"), ("--tmpfs", "/tmp")):
        assert body[body.index(flag) + 1] == dest
    assert argv[-2:] == ["/usr/bin/qemu-system-x86_64", "-version"] and argv[-3] == "--"


def test_rlimits_from_limits() -> None:
    lim = jail.rlimits(Limits(nofile=2048))
    assert lim[resource.RLIMIT_NOFILE] == (2048, 2048)
    assert lim[resource.RLIMIT_CORE] == (0, 0)


def test_tdx_support_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    param = tmp_path / "tdx"
    ok, why = qemu.tdx_support(param=param)
    assert not ok and str(param) in why
    param.write_text("N\n")
    assert qemu.tdx_support(param=param) == (False, f"{param} is not Y (TDX is not enabled in kvm_intel / BIOS)")
    param.write_text("Y\n")
    stand_in = tmp_path / "qemu-stand-in"  # prints what `qemu -object help` prints
    stand_in.write_text("#!/bin/sh\necho 'List of user creatable objects:'\necho '  sev-guest'\n")
    stand_in.chmod(0o755)
    ok, why = qemu.tdx_support(param=param, qemu=str(stand_in))
    assert not ok and "no tdx-guest object" in why
    stand_in.write_text("#!/bin/sh\necho 'List of user creatable objects:'\necho '  tdx-guest'\n")
    assert qemu.tdx_support(param=param, qemu=str(stand_in))[0]


def _host_cgroup(plan_cg: CgroupPlan) -> CgroupPlan:
    return plan_cg.model_copy(update={"version": cgroups.detect().version})


def test_run_tdx_refused_but_dry_run_describes(make_plan, host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(qemu, "TDX_PARAM", tmp_path / "absent-tdx-param")
    plan = make_plan(tdx=True)
    plan = plan.model_copy(update={"cgroup": _host_cgroup(plan.cgroup), "mrconfigid": "ab" * 48})
    backend = QemuBackend(host)
    with pytest.raises(SandboxError, match="--tdx cannot run on this host: .*absent-tdx-param"):
        backend.check_host(plan)
    d = backend.describe(plan)
    assert d["mode"] == "tdx" and d["accel"] == "kvm"
    assert d["argv"][-len(d["qemu_argv"]):] == d["qemu_argv"]
    assert [s.split()[0] for s in d["steps"]] == ["cgroup", "run", "start"]
    assert len(d["fds"]) == len(qemu.build_command(plan, host).fds)


def test_check_host_wants_world_readable_kernel(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan()
    plan.instance_disk.parent.mkdir(parents=True)
    plan.instance_disk.write_bytes(b"\0" * 4096)
    plan.instance_disk.chmod(0o600)  # fine: drives go through fdsets, not reopened by path
    plan.kernel.chmod(0o600)
    with pytest.raises(SandboxError, match="not world-readable"):
        qemu_launch.check_host(plan, qemu.build_command(plan, host))
    plan.kernel.chmod(0o644)
    plan.initrd.chmod(0o644)
    qemu_launch.check_host(plan, qemu.build_command(plan, host))


def test_doctor_json_shape_and_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_checks(state_dir: Path, *, refresh_kvm: bool = False) -> list[Check]:
        calls.append((state_dir, refresh_kvm))
        return [Check(name="kvm", status="warn", detail="KVM not functional, TCG will be used", fix="x"), Check(name="tun", status="ok", detail="y")]

    monkeypatch.setattr("sealbox.cli.doctor.run_checks", fake_checks)
    res = CliRunner().invoke(doctor, ["--json", "--state-dir", str(tmp_path), "--refresh"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["ok"] is True and [c["name"] for c in out["checks"]] == ["kvm", "tun"]
    assert set(out["checks"][0]) == {"name", "status", "detail", "fix"}
    assert calls == [(tmp_path, True)]
    monkeypatch.setattr("sealbox.cli.doctor.run_checks", lambda *a, **k: [Check(name="tool:nft", status="fail", detail="nft not found", fix="apt-get install nftables")])
    res = CliRunner().invoke(doctor, [])
    assert res.exit_code == 1
    assert "FAIL  tool:nft  nft not found" in res.output and "fix: apt-get install nftables" in res.output


def test_doctor_real_checks_are_well_formed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_doctor, "check_jail", lambda: Check(name="jail", status="skip", detail="not in unit tests"))
    checks = host_doctor.run_checks(tmp_path / "state")
    names = [c.name for c in checks]
    for required in ("kvm", "cgroups", "tun", "userns", "vmm-user", "state-dir", "ovmf", "tdx", *(f"tool:{t}" for t in host_doctor.TOOLS)):
        assert required in names
    for c in checks:
        assert c.status in ("ok", "warn", "fail", "skip") and c.detail and "\n" not in c.detail
        if c.status in ("warn", "fail"):
            assert c.fix
    assert host_doctor.exit_code(checks) == (1 if any(c.status == "fail" for c in checks) else 0)


def test_doctor_crash_isolation() -> None:
    def boom() -> Check:
        raise RuntimeError("probe exploded")

    (c,) = host_doctor._safe("tun", boom)
    assert c.status == "fail" and "probe exploded" in c.detail


def test_state_dir_mount_options(tmp_path: Path) -> None:
    mnt, opts = host_doctor._mount_options(tmp_path / "not" / "yet")
    assert str(tmp_path).startswith(mnt)
    c = host_doctor.check_state_dir(tmp_path)
    assert c.status == ("fail" if opts & {"nodev", "noexec", "ro"} else "ok")


def test_kvm_device_must_be_usable_by_the_vmm_user(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dev = tmp_path / "kvm"  # a regular file stands in for /dev/kvm: only owner/mode matter here
    dev.write_bytes(b"")
    gid = dev.stat().st_gid
    cmd = qemu.build_command(make_plan(accel="kvm"), qemu.HostFacts(**{**host.__dict__, "kvm_gid": gid}))
    dev.chmod(0o660)
    qemu_launch._check_kvm_access(cmd, dev)
    dev.chmod(0o600)
    with pytest.raises(SandboxError, match="not usable by the unprivileged VMM user"):
        qemu_launch._check_kvm_access(cmd, dev)
    dev.chmod(0o666)
    qemu_launch._check_kvm_access(qemu.build_command(make_plan(accel="kvm"), qemu.HostFacts(**{**host.__dict__, "kvm_gid": None})), dev)
    with pytest.raises(SandboxError, match="does not exist"):
        qemu_launch._check_kvm_access(cmd, tmp_path / "absent")
