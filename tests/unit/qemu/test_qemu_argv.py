"""QEMU command lines for every mode and flag combination, checked against the plan they came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from qemu_unit_helpers import disks

from sealbox.errors import SandboxError
from sealbox.sandbox.host import jail
from sealbox.sandbox.model import Limits, RateLimit
from sealbox.sandbox.vmm.qemu import (
    FIRST_FD,
    QEMU,
    QemuCommand,
    build_command,
    memory_limit_bytes,
    run_dir_of,
    tb_size_mib,
)


def values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def one(argv: list[str], flag: str) -> str:
    v = values(argv, flag)
    assert len(v) == 1, f"{flag}: {v}"
    return v[0]


def fd_entry(cmd: QemuCommand, fd: int):  # type: ignore[no-untyped-def]
    (entry,) = [f for f in cmd.fds if f.fd == fd]
    return entry


def proc_fd_path(cmd: QemuCommand, arg: str) -> Path:
    m = re.fullmatch(r"/proc/self/fd/(\d+)", arg)
    assert m, arg
    return Path(fd_entry(cmd, int(m.group(1))).path)


def fdset_members(cmd: QemuCommand, fdset_path: str) -> list[tuple[str, str]]:
    """(host path, access) of every fd added to the fdset behind '/dev/fdset/N'."""
    sid = fdset_path.rsplit("/", 1)[1]
    out = []
    for add in values(cmd.qemu_argv, "-add-fd"):
        fd, s = re.fullmatch(r"fd=(\d+),set=(\d+)", add).groups()  # type: ignore[union-attr]
        if s == sid:
            e = fd_entry(cmd, int(fd))
            out.append((e.path, e.access))
    return out


def drives(argv: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for d in values(argv, "-drive"):
        opts = dict(kv.split("=", 1) for kv in d.split(","))
        out[opts.get("id") or f"pflash{opts['unit']}"] = opts
    return out


def check_fd_table(cmd: QemuCommand) -> None:
    """Every fd in the table is used exactly once in argv and numbers are contiguous from FIRST_FD."""
    nums = [f.fd for f in cmd.fds]
    assert nums == list(range(FIRST_FD, FIRST_FD + len(nums)))
    text = " ".join(cmd.qemu_argv)
    for f in cmd.fds:
        uses = len(re.findall(rf"(?:\bfd={f.fd}\b|/proc/self/fd/{f.fd}\b)", text))
        assert uses == 1, (f, uses)


def test_microvm_tcg_initrd(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(cpus=2, memory_mib=768)
    cmd = build_command(plan, host)
    a = cmd.qemu_argv
    assert a[0] == QEMU and cmd.mode == "microvm"
    assert {"-nodefaults", "-no-user-config", "-nographic"} <= set(a)
    sandbox = one(a, "-sandbox").split(",")
    assert sandbox[0] == "on" and {"obsolete=deny", "elevateprivileges=deny", "spawn=deny", "resourcecontrol=deny"} <= set(sandbox)
    assert one(a, "-M") == "microvm"
    assert one(a, "-accel") == f"tcg,tb-size={tb_size_mib(plan.spec.memory_mib)}"
    assert "-cpu" not in a
    assert one(a, "-smp") == str(plan.spec.cpus) and one(a, "-m") == f"{plan.spec.memory_mib}M"
    assert one(a, "-object") == "rng-random,id=rng0,filename=/dev/urandom"  # entropy for the guest at boot
    assert "virtio-rng-device,rng=rng0" in values(a, "-device")
    assert proc_fd_path(cmd, one(a, "-kernel")) == plan.kernel
    assert proc_fd_path(cmd, one(a, "-initrd")) == plan.initrd
    assert one(a, "-append") == f"{plan.cmdline} tsc_early_khz={host.tsc_khz} reboot=t"
    # QMP: a listening socket fd in the run dir
    qmp = re.fullmatch(r"socket,id=qmp,fd=(\d+),server=on,wait=off", values(a, "-chardev")[0])
    assert qmp and fd_entry(cmd, int(qmp.group(1))).path == str(run_dir_of(plan) / "qmp.sock") == cmd.qmp_socket
    assert one(a, "-mon") == "chardev=qmp,mode=control"
    con = re.fullmatch(r"file,id=console,path=(/dev/fdset/\d+)", values(a, "-chardev")[1])
    assert con and fdset_members(cmd, con.group(1)) == [(str(plan.console_log), "w")]
    assert one(a, "-serial") == "chardev:console"
    # network: the TAP of the plan's netns, with the plan's MAC
    tap = re.fullmatch(r"tap,id=net0,fd=(\d+),vhost=off", one(a, "-netdev"))
    assert tap
    t = fd_entry(cmd, int(tap.group(1)))
    assert (t.kind, t.path, t.ifname) == ("tap", plan.net.netns, plan.net.tap)
    assert f"virtio-net-device,netdev=net0,mac={plan.net.guest_mac}" in values(a, "-device")
    d = drives(a)
    assert list(d) == ["instance"] and d["instance"]["readonly"] == "on" and d["instance"]["format"] == "raw"
    assert fdset_members(cmd, d["instance"]["file"]) == [(str(plan.instance_disk), "r")]
    assert "virtio-blk-device,drive=instance,serial=sealbox-instance" in values(a, "-device")
    assert not any("pci" in v for v in values(a, "-device"))
    check_fd_table(cmd)


def test_microvm_guest_reboots_by_triple_fault_so_no_reboot_ends_the_vm(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    """Measured here: with the kernel's default order (ACPI, keyboard, ..., BIOS) 3 of 14 microvm guests rebooted
    through the firmware in software, so -no-reboot never saw a reset and the sandbox came back with new host keys.
    A triple fault is a reset QEMU always sees. An image that chose its own reboot= keeps it."""
    for accel in ("tcg", "kvm"):
        args = one(build_command(make_plan(accel=accel), host).qemu_argv, "-append").split()
        assert args[-1] == "reboot=t" and sum(a.startswith("reboot=") for a in args) == 1
    plan = make_plan()
    own = plan.model_copy(update={"cmdline": plan.cmdline + " reboot=a"})
    args = one(build_command(own, host).qemu_argv, "-append").split()
    assert [a for a in args if a.startswith("reboot=")] == ["reboot=a"]


def test_microvm_rootfs_disk_and_extra_disks(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(rootfs="disk", disks=disks(tmp_path, "raw.img:rw", "data.qcow2:ro:qcow2", "raw.img:ro"))
    cmd = build_command(plan, host)
    a = cmd.qemu_argv
    # the loader initramfs (plan.initrd in disk mode) loads virtio_blk and mounts /dev/vda
    loader = next(f for f in cmd.fds if f.path == str(plan.initrd))
    assert values(a, "-initrd") == [f"/proc/self/fd/{loader.fd}"]
    assert "-initrd" not in build_command(plan.model_copy(update={"initrd": None}), host).qemu_argv
    d = drives(a)
    assert list(d) == ["rootfs", "instance", "disk0", "disk1", "disk2"]  # root disk first: /dev/vda
    assert fdset_members(cmd, d["rootfs"]["file"]) == [(str(plan.rootfs), "r")] and d["rootfs"]["readonly"] == "on"
    for i, disk in enumerate(plan.spec.disks):
        opts = d[f"disk{i}"]
        assert opts["readonly"] == ("on" if disk.readonly else "off")
        assert opts["format"] == disk.format
        want = [(str(disk.path), "r")] if disk.readonly else [(str(disk.path), "rw"), (str(disk.path), "r")]
        assert fdset_members(cmd, opts["file"]) == want
        assert f"virtio-blk-device,drive=disk{i},serial=sealbox-disk{i}" in values(a, "-device")
    check_fd_table(cmd)


def test_kvm_vs_tcg_jail(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    kvm = build_command(make_plan(accel="kvm"), host)
    assert one(kvm.qemu_argv, "-accel") == "kvm" and one(kvm.qemu_argv, "-cpu") == "host"
    assert "tsc_early_khz" not in one(kvm.qemu_argv, "-append")
    j = kvm.argv[: len(kvm.argv) - len(kvm.qemu_argv)]
    assert kvm.argv[len(j):] == kvm.qemu_argv
    assert j[j.index("--groups") + 1] == str(host.kvm_gid) and "--clear-groups" not in j
    i = j.index("--dev-bind")
    assert j[i + 1 : i + 3] == ["/dev/kvm", "/dev/kvm"]
    tcg = build_command(make_plan(accel="tcg"), host)
    jt = tcg.argv[: len(tcg.argv) - len(tcg.qemu_argv)]
    assert "--clear-groups" in jt and "--groups" not in jt and "/dev/kvm" not in jt
    plan = make_plan()
    assert jt == jail.jail_argv(jail.JailSpec(uid=plan.uid, gid=plan.gid, root_links=host.root_links), [])


def test_ovmf_q35(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(firmware="ovmf", disks=disks(tmp_path, "data.qcow2:rw:qcow2", "raw.img:ro"))
    cmd = build_command(plan, host)
    a = cmd.qemu_argv
    assert cmd.mode == "ovmf" and one(a, "-M") == "q35"
    d = drives(a)
    code, vars_ = d["pflash0"], d["pflash1"]
    assert code["if"] == "pflash" and code["readonly"] == "on" and fdset_members(cmd, code["file"]) == [(str(host.ovmf_code), "r")]
    assert cmd.vars_copy == str(run_dir_of(plan) / "OVMF_VARS.fd")
    assert fdset_members(cmd, vars_["file"]) == [(cmd.vars_copy, "rw"), (cmd.vars_copy, "r")]
    assert proc_fd_path(cmd, one(a, "-kernel")) == plan.spec.image_dir / "demo.efi"
    assert "-append" not in a and "-initrd" not in a  # the UKI carries (and measures) both
    devs = values(a, "-device")
    assert f"virtio-net-pci,netdev=net0,mac={plan.net.guest_mac}" in devs
    assert "virtio-blk-pci,drive=instance,serial=sealbox-instance" in devs
    assert devs.count("virtio-scsi-pci,id=scsi0") == 1 and "scsi-hd,drive=disk0,bus=scsi0.0,serial=sealbox-disk0" in devs
    assert "virtio-blk-pci,drive=disk1,serial=sealbox-disk1" in devs and d["disk0"]["format"] == "qcow2"
    check_fd_table(cmd)


def test_tdx(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(accel="tcg", tdx=True, firmware="ovmf")
    cmd = build_command(plan, host)
    a = cmd.qemu_argv
    assert cmd.mode == "tdx"
    assert one(a, "-M") == "q35,kernel_irqchip=split,confidential-guest-support=tdx0"
    # no instance data yet (as in --dry-run): the binding is a visible placeholder (tests/unit/runtime/test_rt_tdx_launch.py)
    assert values(a, "-object") == ["tdx-guest,id=tdx0,mrconfigid=@INSTANCE-DATA-SHA384@", "rng-random,id=rng0,filename=/dev/urandom"]
    assert "virtio-rng-pci,rng=rng0" in values(a, "-device")
    assert one(a, "-accel") == "kvm"  # TDX needs KVM whatever the plan's fallback says
    assert one(a, "-cpu") == "host,-kvm-steal-time,-kvmclock"
    assert proc_fd_path(cmd, one(a, "-bios")) == host.tdvf
    assert proc_fd_path(cmd, one(a, "-kernel")) == plan.spec.image_dir / "demo.efi"
    assert "pflash" not in " ".join(a) and "-append" not in a
    assert "/dev/kvm" in cmd.argv
    check_fd_table(cmd)


def test_disk_throttling(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lim = Limits(disk_bytes=RateLimit(size=1_000_000, refill_ms=500), disk_ops=RateLimit(size=300))
    plan = make_plan(limits=lim, disks=disks(tmp_path, "raw.img"))
    for opts in drives(build_command(plan, host).qemu_argv).values():
        assert opts["throttling.bps-total"] == str(1_000_000 * 1000 // 500)
        assert opts["throttling.iops-total"] == "300"


def test_uki_must_be_unambiguous(make_plan, host) -> None:  # type: ignore[no-untyped-def]
    plan = make_plan(firmware="ovmf")
    (plan.spec.image_dir / "other.efi").write_bytes(b"x")
    with pytest.raises(SandboxError, match="2 .efi files"):
        build_command(plan, host)
    explicit = make_plan(firmware="ovmf", kernel="demo.efi")
    assert proc_fd_path(build_command(explicit, host), one(build_command(explicit, host).qemu_argv, "-kernel")).name == "demo.efi"


def test_memory_limit_covers_guest_and_tcg_cache(make_plan) -> None:  # type: ignore[no-untyped-def]
    spec = make_plan(memory_mib=1024).spec
    tcg, kvm = memory_limit_bytes(spec, "tcg"), memory_limit_bytes(spec, "kvm")
    assert tcg - kvm == tb_size_mib(1024) * 2**20
    assert kvm > spec.memory_mib * 2**20


def test_disk_format_is_the_declared_one_never_probed(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A guest can write the qcow2 magic (and a backing-file name) into its raw rw disk: the next run must
    still attach it as raw. qcow2 only when the user says so."""
    from sealbox.sandbox.model import QCOW2_MAGIC

    (tmp_path / "guest-wrote.img").write_bytes(QCOW2_MAGIC + b"\0" * 4092)
    plan = make_plan(disks=disks(tmp_path, "guest-wrote.img:rw", "raw.img:ro:qcow2", "data.qcow2:qcow2"))
    d = drives(build_command(plan, host).qemu_argv)
    assert [d[k]["format"] for k in ("instance", "disk0", "disk1", "disk2")] == ["raw", "raw", "qcow2", "qcow2"]
    assert [(x.readonly, x.format) for x in plan.spec.disks] == [(False, "raw"), (True, "qcow2"), (False, "qcow2")]


def test_a_guest_reboot_ends_the_vm_and_every_disk_is_labelled(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for kw in ({}, {"rootfs": "disk"}, {"firmware": "ovmf"}):
        plan = make_plan(disks=disks(tmp_path, "raw.img:ro", "data.qcow2:qcow2"), **kw)
        a = build_command(plan, host).qemu_argv
        assert "-no-reboot" in a  # a reboot would come back with a new, unpinned host key
        labels = {m.group(1): m.group(2) for v in values(a, "-device") if (m := re.search(r"drive=([^,]+).*,serial=([^,]+)", v))}
        want = {"instance": "sealbox-instance", "disk0": "sealbox-disk0", "disk1": "sealbox-disk1"}
        if kw.get("rootfs"):
            want["rootfs"] = "sealbox-rootfs"
        assert labels == want, a


def test_disk_limits_are_clear_errors(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """microvm: 23 usable virtio-mmio devices (the 24th transport's interrupt never arrives: a disk there hung the
    boot), of which net, rng and the restore agent's serial port take three; q35: raw disks stay within vda..vdz, so
    device order and name order agree."""
    specs = [f"d{i}.img:ro" for i in range(27)]
    for i in range(27):
        (tmp_path / f"d{i}.img").write_bytes(b"\0" * 512)
    argv = build_command(make_plan(disks=disks(tmp_path, *specs[:19])), host).qemu_argv
    assert sum(v.startswith("virtio-") and "-device," in v for v in values(argv, "-device")) == 23
    with pytest.raises(SandboxError, match=r"microvm takes at most 19 extra disks \(20 given\)"):
        build_command(make_plan(disks=disks(tmp_path, *specs[:20])), host)
    with pytest.raises(SandboxError, match=r"at most 18 extra disks"):
        build_command(make_plan(rootfs="disk", disks=disks(tmp_path, *specs[:19])), host)
    build_command(make_plan(firmware="ovmf", disks=disks(tmp_path, *specs[:25])), host)
    with pytest.raises(SandboxError, match=r"at most 25 raw extra disks"):
        build_command(make_plan(firmware="ovmf", disks=disks(tmp_path, *specs[:26])), host)


def test_the_instance_disk_is_the_first_disk_after_the_root_disk(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The guest takes the first disk in device order that carries the instance magic; the host guarantees that is
    the instance disk by adding it before every user disk (devices are numbered in the order they are added)."""
    for kw in ({}, {"rootfs": "disk"}, {"firmware": "ovmf"}):
        a = build_command(make_plan(disks=disks(tmp_path, "raw.img:ro", "data.qcow2:rw"), **kw), host).qemu_argv
        blk = [m.group(1) for v in values(a, "-device") if (m := re.match(r"virtio-blk-(?:device|pci),drive=([^,]+)", v))]
        assert blk == (["rootfs"] if kw.get("rootfs") else []) + ["instance", "disk0", "disk1"], a


def test_microvm_has_the_restore_agents_port_and_a_restore_loads_its_state_from_an_fd(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every microvm sandbox can be snapshotted: its agent port is a virtio-serial port on a listening socket root made
    (an fd, like QMP). A restore adds -incoming fd:N, N being root's read-only descriptor of the state file."""
    plan = make_plan()
    cmd = build_command(plan, host)
    dev = values(cmd.qemu_argv, "-device")
    assert "virtio-serial-device,id=agent0" in dev
    assert "virtserialport,bus=agent0.0,chardev=agent,name=org.sealbox.agent.0" in dev
    agent = next(f for f in cmd.fds if f.kind == "agent")
    assert f"socket,id=agent,fd={agent.fd},server=on,wait=off" in values(cmd.qemu_argv, "-chardev")
    assert agent.path == cmd.agent_socket and cmd.agent_socket.startswith(str(plan.sandbox_dir / "vmm"))
    assert "-incoming" not in cmd.qemu_argv
    state = tmp_path / "vmstate"
    restoring = build_command(plan.model_copy(update={"incoming": state}), host)
    (incoming,) = values(restoring.qemu_argv, "-incoming")
    fd = next(f for f in restoring.fds if f.path == str(state))
    assert incoming == f"fd:{fd.fd}" and fd.kind == "file" and fd.access == "r"
    for kw in ({"firmware": "ovmf"},):  # firmware machines (q35) have no agent port
        assert not any("virtserialport" in v for v in values(build_command(make_plan(**kw), host).qemu_argv, "-device"))
def test_user_serials_and_burst_buckets_reach_qemu(make_plan, host, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """--disk ...,serial=NAME is the drive's serial (virtio-blk and SCSI); a burst (a bucket larger than one second's
    worth, sandbox/rates.py) becomes QEMU's -max over a 1 s burst length."""
    from sealbox.sandbox.rates import parse_iops, parse_rate

    lim = Limits(disk_bytes=parse_rate("2MiB/s:8MiB", "--disk-rate"), disk_ops=parse_iops("100"))
    for kw in ({}, {"firmware": "ovmf"}):
        plan = make_plan(limits=lim, disks=disks(tmp_path, "raw.img:rw,serial=persistent", "data.qcow2:qcow2,serial=db", "raw.img:ro"), **kw)
        a = build_command(plan, host).qemu_argv
        labels = {m.group(1): m.group(2) for v in values(a, "-device") if (m := re.search(r"drive=([^,]+).*,serial=([^,]+)", v))}
        assert (labels["disk0"], labels["disk1"], labels["disk2"], labels["instance"]) == ("persistent", "db", "sealbox-disk2", "sealbox-instance")
        d = drives(a)["disk0"]
        assert (d["throttling.bps-total"], d["throttling.bps-total-max"], d["throttling.bps-total-max-length"]) == (str(2 << 20), str(8 << 20), "1")
        assert d["throttling.iops-total"] == "100" and "throttling.iops-total-max" not in d
