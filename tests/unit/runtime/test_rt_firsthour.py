"""What a new user stumbled on with `run`, `ssh` and the sandbox verbs (issue 12), without root or boots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sealbox.cli.main import main
from sealbox.errors import UsageError
from sealbox.sandbox import planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.ssh import SshTarget, shell_argv
from sealbox.util.names import check_sandbox_name


def sealbox(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every KVM probe; the probe reports KVM broken (so a real one would warn)."""
    calls: list[Path] = []

    def fake(state_root: Path, dry_run: bool) -> KvmStatus:
        calls.append(state_root)
        return KvmStatus(present=True, functional=False, detail="vCPUs never run")

    monkeypatch.setattr(planning, "_kvm", fake)
    return calls


# ---- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["-x", "-", "--", "-rf", "-1"])
def test_names_must_start_with_a_letter_or_digit(name: str) -> None:
    with pytest.raises(UsageError) as e:
        check_sandbox_name(name)
    assert "start with a letter or digit" in str(e.value)


@pytest.mark.parametrize("name", ["a", "1", "web-1", "A-b-", "x" * 64])
def test_good_names_still_pass(name: str) -> None:
    assert check_sandbox_name(name) == name


def test_run_refuses_a_name_that_later_verbs_would_take_for_an_option(capsys, image_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      probes: list[Path]) -> None:
    sd = tmp_path / "state"
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "-x", "--dry-run", "--state-dir", str(sd))
    assert rc == 2 and err.strip().startswith("sealbox: error: invalid sandbox name '-x'"), err
    assert len(err.strip().splitlines()) == 1 and not sd.exists() and probes == []


# ---- flags that need no host work are checked before the KVM probe ---------------------------------

def test_allow_egress_without_nat_fails_before_the_kvm_probe_and_its_warning(capsys, image_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           probes: list[Path]) -> None:
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "e1", "--allow-egress", "10.0.0.0/8",
                         "--state-dir", str(tmp_path / "s"))
    assert rc == 2 and probes == [], err
    assert err.strip().splitlines() == ["sealbox: error: --allow-egress only applies to --net nat (add --net nat or drop --allow-egress)"]


def test_allow_egress_with_nat_is_accepted(image_dir: Path) -> None:
    planning.make_spec(name="ok", image_dir=image_dir, net="nat", allow_egress=["10.0.0.0/8"])


# ---- ssh NAME CMD... : the command goes after the host, as with ssh ----------------------------------

def _target() -> SshTarget:
    return SshTarget(name="box", netns="sealbox-box", guest_ip="10.37.0.2", key=Path("/k"), known_hosts=Path("/kh"),
                     state_root=Path("/s"))


def test_ssh_extra_arguments_follow_the_host() -> None:
    argv = shell_argv(_target(), extra=["uname", "-a"])
    assert argv[-3:] == ["10.37.0.2", "uname", "-a"]
    fwd = shell_argv(_target(), extra=["-L", "8080:localhost:80"])  # ssh takes options after the host too
    assert fwd[-3:] == ["10.37.0.2", "-L", "8080:localhost:80"]


def test_openssh_reads_options_that_follow_the_host() -> None:
    """The oracle: OpenSSH's own option parser (`ssh -G` prints the configuration it would use)."""
    import shutil
    import subprocess

    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client not installed")
    argv = shell_argv(_target(), extra=["-L", "8080:localhost:80", "uname", "-a"])
    out = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=10, check=True).stdout
    assert "hostname 10.37.0.2" in out.splitlines() and "localforward 8080 [localhost]:80" in out.splitlines()


def test_ssh_cli_passes_the_command_and_keeps_its_own_options(capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    def fake(state: Any, name: str, *, user: str | None, extra: list[str]) -> None:
        seen.update(name=name, user=user, extra=extra)

    monkeypatch.setattr("sealbox.sandbox.control.interactive", fake)
    assert sealbox(capsys, "ssh", "box", "ps", "-u", "root")[0] == 0
    assert seen == {"name": "box", "user": None, "extra": ["ps", "-u", "root"]}  # -u belongs to the command
    assert sealbox(capsys, "ssh", "-u", "dev", "box", "uname", "-a")[0] == 0
    assert seen == {"name": "box", "user": "dev", "extra": ["uname", "-a"]}
    assert sealbox(capsys, "ssh", "box", "--user", "dev", "-L", "8080:localhost:80", "id")[0] == 0
    assert seen == {"name": "box", "user": "dev", "extra": ["-L", "8080:localhost:80", "id"]}


# ---- a guest that cannot boot fails the run at once, with the cause --------------------------------

INITRAMFS_FAIL = b"[    0.996588] Initramfs unpacking failed: write error\r\n"
PANIC = b"[    1.769230] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000007\r\n"


def test_console_parser_records_fatal_boot_lines_before_ready() -> None:
    from sealbox.guest.console import ConsoleParser

    p = ConsoleParser()
    p.feed(b"[    0.1] Run /init\r\n" + INITRAMFS_FAIL + b"[    1.7] Kernel pan")
    assert p.scan.fatal == ["Initramfs unpacking failed: write error"]
    p.feed(b"ic - not syncing: VFS: Unable to mount root fs\n")  # the rest of a line split across reads
    assert p.scan.fatal[-1] == "Kernel panic - not syncing: VFS: Unable to mount root fs"


def test_fatal_looking_lines_after_ready_are_user_output() -> None:
    from rt_testlib import BOOT_ID, ED

    from sealbox.guest.console import ConsoleParser

    p = ConsoleParser()
    p.feed(f"SEALBOX-HOSTKEY ssh-ed25519 {ED}\nSEALBOX-READY {BOOT_ID}\n".encode() + PANIC)
    assert p.scan.ready and p.scan.fatal == []


@pytest.mark.parametrize("console", [INITRAMFS_FAIL, PANIC, INITRAMFS_FAIL + b"[    1.5] systemd[1]: Failed to write /etc/machine-id\n"])
def test_wait_ready_fails_at_once_on_a_panic_or_a_broken_initramfs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  console: bytes) -> None:
    import os
    import time

    from sealbox.errors import SandboxError
    from sealbox.sandbox import lifecycle, ssh
    from sealbox.sandbox.state import process_start_time

    monkeypatch.setattr(ssh, "probe_ssh", lambda *a, **k: None)
    (tmp_path / "console.log").write_bytes(console)
    from test_rt_lifecycle import NET

    t0 = time.monotonic()
    with pytest.raises(SandboxError) as e:  # the VMM is alive (this process stands in for it): a reboot loop
        lifecycle.wait_ready(NET, tmp_path / "console.log", os.getpid(), process_start_time(os.getpid()),
                             known_hosts=tmp_path / "kh", alias="sealbox-t", deadline=time.monotonic() + 60, timeout=60)
    assert time.monotonic() - t0 < 3
    msg = str(e.value)
    assert "\n" not in msg and "did not boot" in msg
    first = console.split(b"\n")[0].decode().split("] ", 1)[1].strip()
    assert first in msg
    if b"Initramfs" in console:
        assert "--memory" in msg


def test_a_vmm_that_exits_right_after_its_fatal_line_still_gets_the_fatal_line_s_hint(tmp_path: Path,
                                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The line can land between the console poll and the liveness check (a guest that reboots by triple fault
    makes QEMU exit at once): the exit is then read as a boot failure with its hint, not a bare 'VMM exited'."""
    import time

    from test_rt_lifecycle import NET

    from sealbox.errors import SandboxError
    from sealbox.guest import console as con
    from sealbox.sandbox import lifecycle, ssh

    monkeypatch.setattr(ssh, "probe_ssh", lambda *a, **k: None)
    log = tmp_path / "console.log"
    log.write_bytes(b"[    0.5] Run /init as init process\n")
    real_poll = con.ConsoleFollower.poll

    def poll_then_the_vmm_writes(self):  # type: ignore[no-untyped-def]
        scan = real_poll(self)
        if b"Initramfs" not in log.read_bytes():
            with open(log, "ab") as f:
                f.write(INITRAMFS_FAIL)
        return scan

    monkeypatch.setattr(con.ConsoleFollower, "poll", poll_then_the_vmm_writes)
    with pytest.raises(SandboxError) as e:  # pid 99999999: the VMM is gone
        lifecycle.wait_ready(NET, log, 99999999, 1, known_hosts=tmp_path / "kh", alias="sealbox-t",
                             deadline=time.monotonic() + 10, timeout=10)
    assert "did not boot" in str(e.value) and "--memory" in str(e.value), str(e.value)


# ---- memory: the image's recorded minimum ------------------------------------------------------------

def test_default_memory_is_the_larger_of_512_and_the_image_minimum(make_image) -> None:  # type: ignore[no-untyped-def]
    big = make_image("big", min_memory_mib={"initrd": 655, "disk": 71})
    assert planning.make_spec(name="m1", image_dir=big).memory_mib == 655
    assert planning.make_spec(name="m1", image_dir=big, rootfs="disk").memory_mib == 512
    small = make_image("small", min_memory_mib={"initrd": 227})
    assert planning.make_spec(name="m2", image_dir=small).memory_mib == 512
    old = make_image("old")  # a manifest from before the field: as before
    assert planning.make_spec(name="m3", image_dir=old).memory_mib == 512
    assert planning.make_spec(name="m3", image_dir=big, memory_mib=700).memory_mib == 700


def test_explicit_memory_below_the_minimum_is_refused_in_one_line(capsys, make_image, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                 probes: list[Path]) -> None:
    big = make_image("big", min_memory_mib={"initrd": 655})
    sd = tmp_path / "state"
    rc, _, err = sealbox(capsys, "run", str(big), "--name", "m4", "--memory", "512", "--state-dir", str(sd))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and probes == [], err
    assert "--memory 512" in lines[0] and "655" in lines[0] and str(big) in lines[0]
    assert not sd.exists()
    rc, out, err = sealbox(capsys, "run", str(big), "--name", "m4", "--dry-run", "--json", "--state-dir", str(sd))
    assert rc == 0, err
    import json

    q = json.loads(out)["qemu_argv"]
    assert q[q.index("-m") + 1] == "655M"


@pytest.mark.parametrize("bad", [{"initrd": "lots"}, {"initrd": -1}, {"initrd": 10**9}, ["initrd"]])
def test_a_bad_recorded_minimum_is_a_one_line_image_error(make_image, bad: Any) -> None:  # type: ignore[no-untyped-def]
    img = make_image("bad", min_memory_mib=bad)
    with pytest.raises(UsageError) as e:
        planning.make_spec(name="m5", image_dir=img)
    assert "min_memory_mib" in str(e.value) and "\n" not in str(e.value)


def test_taken_name_and_missing_boot_files_fail_before_the_kvm_probe(capsys, make_image, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                    probes: list[Path]) -> None:
    import time

    from sealbox.sandbox.state import SandboxRecord, StateDir

    img = make_image("img")
    state = StateDir(tmp_path / "state")
    state.reserve(SandboxRecord(name="taken", status="stopped", created_at=time.time()))
    rc, _, err = sealbox(capsys, "run", str(img), "--name", "taken", "--state-dir", str(state.root))
    assert rc != 0 and "already exists" in err and len(err.strip().splitlines()) == 1 and probes == [], err
    noroot = make_image("noroot", boot={"vmlinuz": "vmlinuz", "initrd": "initrd.cpio.zst"})
    rc, _, err = sealbox(capsys, "run", str(noroot), "--name", "d1", "--rootfs", "disk", "--vmm", "qemu",
                         "--state-dir", str(state.root))
    assert rc != 0 and "no 'rootfs' boot file" in err and len(err.strip().splitlines()) == 1 and probes == [], err


def test_a_vmm_that_dies_before_ready_has_its_own_log_quoted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from test_rt_lifecycle import NET

    from sealbox.errors import SandboxError
    from sealbox.sandbox import lifecycle, ssh

    monkeypatch.setattr(ssh, "probe_ssh", lambda *a, **k: None)
    (tmp_path / "console.log").write_bytes(b"[    0.5] Run /init as init process\n")
    (tmp_path / "qemu.log").write_bytes(b"qemu-system-x86_64: terminating on signal 9 from pid 1\n")
    with pytest.raises(SandboxError) as e:
        lifecycle.wait_ready(NET, tmp_path / "console.log", 99999999, 1, known_hosts=tmp_path / "kh", alias="sealbox-t",
                             deadline=time.monotonic() + 10, timeout=10, vmm_log=tmp_path / "qemu.log")
    assert "terminating on signal 9" in str(e.value) and "Run /init" in str(e.value)


# ---- exec -u USER: the per-sandbox key for the image's declared users too ------------------------------

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom sealbox-demo"


def test_image_declared_users_come_from_its_manifest(make_image) -> None:  # type: ignore[no-untyped-def]
    from sealbox.sandbox import image

    img = image.load(make_image("u", spec={"users": {"dev": {"shell": "/bin/bash"}, "ops": {}}}))
    assert img.declared_users() == ["dev", "ops"]
    assert image.load(make_image("none")).declared_users() == []
    with pytest.raises(UsageError, match="spec.users"):
        image.load(make_image("bad", spec={"users": {"-o ProxyCommand=x": {}}})).declared_users()


def test_instance_data_gives_every_declared_user_the_key_root_first(tmp_path: Path) -> None:
    from sealbox.guest.instance import parse, render
    from sealbox.sandbox.instance import InstanceFilesStep

    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.2/30", gateway="10.213.0.1",
                             users=("ops", "dev"))
    got = parse(render(step.data(KEY)))
    assert got["authorized_key"] == [f"root {KEY}", f"dev {KEY}", f"ops {KEY}"]


def test_dry_run_plans_keys_for_the_declared_users(capsys, make_image, tmp_path: Path, probes: list[Path]) -> None:  # type: ignore[no-untyped-def]
    import json

    img = make_image("u", spec={"users": {"dev": {}}})
    rc, out, err = sealbox(capsys, "run", str(img), "--name", "u1", "--dry-run", "--json", "--state-dir", str(tmp_path / "s"))
    assert rc == 0, err
    inst = next(s for s in json.loads(out)["steps"] if s["kind"] == "instance-files")
    assert inst["params"]["users"] == ["dev"] and "dev" in inst["describe"]


def test_guest_instance_script_installs_the_key_for_every_user(tmp_path: Path) -> None:
    """The real guest script (guest/files/instance.sh) in a bubblewrap box standing in for the guest: the
    instance disk at /dev/vda, its own /run, UTS and network namespaces."""
    import ipaddress
    import shutil
    import subprocess

    from sealbox.guest import files
    from sealbox.guest.instance import InstanceData, render

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    disk = tmp_path / "disk.img"
    disk.write_bytes(render(InstanceData(hostname="demo", address=ipaddress.IPv4Interface("10.213.0.2/30"),
                                         gateway=ipaddress.IPv4Address("10.213.0.1"),
                                         authorized_keys={"root": (KEY,), "dev": (KEY,)})))
    script = tmp_path / "instance.sh"
    script.write_bytes(files.read("instance.sh"))
    show = 'sh /run/instance.sh; for f in /run/sealbox/authorized_keys/*; do echo "${f##*/}: $(cat "$f")"; done'
    argv = ["bwrap", "--unshare-net", "--unshare-uts", "--unshare-ipc", "--unshare-pid", "--die-with-parent",
            "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev", "--ro-bind", str(disk), "/dev/vda", "--tmpfs", "/run",
            "--tmpfs", "/sys/block", "--dir", "/sys/block/vda", "--tmpfs", "/sys/class/net", "--dir", "/sys/class/net/eth0",
            "--ro-bind", str(script), "/run/instance.sh", "sh", "-c", show]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0 and "Operation not permitted" in p.stderr:
        pytest.skip(f"bubblewrap cannot make namespaces here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == [f"dev: {KEY}", f"root: {KEY}"]
