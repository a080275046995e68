"""Jail argv, TDX refusal, describe(), and `sealbox doctor` output shape."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
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
    # every file QEMU gets is an inherited fd (named here from the plan's inputs, not from build_command)...
    got = [(f["kind"], f["path"], f["ifname"], f["access"]) for f in d["fds"]]
    assert got == [
        ("qmp", str(plan.sandbox_dir / "vmm" / "qmp.sock"), "", "r"),
        ("tap", plan.net.netns, plan.net.tap, "r"),
        ("console", str(plan.console_log), "", "w"),
        ("file", str(host.tdvf), "", "r"),  # TDX boots TDVF...
        ("file", str(plan.spec.image_dir / "demo.efi"), "", "r"),  # ...with the image's UKI, not its vmlinuz
        ("file", str(plan.instance_disk), "", "r"),
    ]
    # ...with its own number, above stdio, and QEMU's argv refers to each one by that number
    numbers = [f["fd"] for f in d["fds"]]
    assert len(set(numbers)) == len(numbers) and min(numbers) > 2
    argv = " ".join(d["qemu_argv"])
    for n in numbers:
        assert re.search(rf"(fd={n}\b|/proc/self/fd/{n}\b)", argv), (n, argv)
    assert str(host.tdvf) not in argv and str(plan.instance_disk) not in argv  # no path is reopened by QEMU


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
    failed = Check(name="tool:nft", status="fail", detail="nft not found", fix="apt-get install nftables")
    monkeypatch.setattr("sealbox.cli.doctor.run_checks", lambda *a, **k: [failed])
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


def test_doctor_exit_code_is_one_only_for_a_failed_check() -> None:
    ok, warn, skip, fail = (Check(name=s, status=s, detail=s) for s in ("ok", "warn", "skip", "fail"))
    assert host_doctor.exit_code([]) == 0
    assert host_doctor.exit_code([ok, warn, skip]) == 0
    assert host_doctor.exit_code([ok, fail, warn]) == 1 and host_doctor.exit_code([fail]) == 1


def test_doctor_crash_isolation() -> None:
    def boom() -> Check:
        raise RuntimeError("probe exploded")

    (c,) = host_doctor._safe("tun", boom)
    assert c.status == "fail" and "probe exploded" in c.detail


STATE_DIR_PROBE = """
import sys
from pathlib import Path
from sealbox.doctor import check_state_dir
c = check_state_dir(Path(sys.argv[1]) / "state" / "not-yet")
print(c.status, c.detail)
"""


@pytest.mark.parametrize("options,status", [("rw,dev,exec", "ok"), ("rw,nodev", "fail"), ("rw,noexec", "fail"), ("ro", "fail")])
def test_state_dir_on_a_real_mount(tmp_path: Path, options: str, status: str) -> None:
    """A tmpfs mounted with the given options, in a private mount namespace (nothing leaks to the host): the
    doctor reads the real mount table, and `findmnt` (util-linux) is the oracle for what it should have found."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    unshare = ["unshare", "--mount", "--propagation", "private"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = 'mount -t tmpfs -o "$1,size=1m" sealbox-test "$2" && findmnt -n -o OPTIONS --target "$2" && exec "$3" -c "$4" "$2"'
    p = subprocess.run([*unshare, "sh", "-c", script, "sh", options, str(mnt), sys.executable, STATE_DIR_PROBE],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    found, verdict = p.stdout.splitlines()
    wanted = {o for o in options.split(",") if o in ("nodev", "noexec", "ro")}
    assert wanted <= set(found.split(",")), found  # the oracle agrees the mount has the options
    assert verdict.split()[0] == status, verdict
    assert f"is on {mnt} mounted" in verdict if status == "fail" else f"on {mnt} (created on first use)" in verdict


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


def test_doctor_names_the_command_a_missing_optional_tool_would_break(monkeypatch: pytest.MonkeyPatch) -> None:
    """exec/ssh need OpenSSH's client, sign needs sbsign, disk formats need qemu-img and mtools...: not needed to run
    a sandbox, so a warning (not a failure) that says which command would fail and which package to install."""
    seen = {t for t, _ in host_doctor.COMMAND_TOOLS}
    assert {"ssh", "ssh-keygen", "sbsign", "qemu-img", "veritysetup", "mkfs.fat", "openssl"} <= seen
    monkeypatch.setattr(host_doctor.shutil, "which", lambda tool, path=None: None if tool == "sbsign" else f"/usr/bin/{tool}")
    (c,) = [c for c in host_doctor.command_tool_checks() if c.name == "tool:sbsign"]
    assert c.status == "warn" and "sealbox sign" in c.detail and c.fix == "apt-get install sbsigntool"
    assert all(c.status == "ok" for c in host_doctor.command_tool_checks() if c.name != "tool:sbsign")
