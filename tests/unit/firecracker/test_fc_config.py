"""Contract: the generated --config-file validates against the v1.16.1 definitions for many plans."""

from __future__ import annotations

from pathlib import Path

import pytest
from fc_testlib import make_plan, spec_path
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox.model import DiskSpec, Limits, RateLimit
from sealbox.sandbox.vmm.firecracker import config as C
from sealbox.sandbox.vmm.firecracker.schema import load_spec
from sealbox.util.names import NAME_RE

TMP = Path("/nonexistent/fc-contract")  # the config builder never touches the files

rate = st.builds(RateLimit, size=st.integers(1, 2**62), refill_ms=st.integers(1, 10**7),
                 one_time_burst=st.none() | st.integers(0, 2**62))
limits = st.builds(Limits, pids_max=st.integers(16, 10**6), nofile=st.integers(64, 10**6),
                   net_rx_bytes=st.none() | rate, net_tx_bytes=st.none() | rate,
                   disk_bytes=st.none() | rate, disk_ops=st.none() | rate)
disks = st.lists(st.builds(DiskSpec, path=st.sampled_from([Path(f"/data/d{i}.img") for i in range(6)]), readonly=st.booleans()),
                 max_size=4, unique_by=lambda d: d.path)
names = st.from_regex(NAME_RE, fullmatch=True)  # the sandbox name rule
extra_args = st.lists(st.sampled_from(["quiet", "loglevel=3", "console=hvc0", "panic=10", "reboot=t", "systemd.unit=x"]), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=names, cpus=st.integers(1, 32), mem=st.integers(64, 1024 * 1024), rootfs=st.sampled_from(["initrd", "disk"]),
       disks=disks, limits=limits, cg=st.sampled_from([1, 2]), extra=extra_args, level=st.sampled_from(["Error", "Warning", "Info", "Debug"]))
def test_generated_config_validates_for_many_plans(name, cpus, mem, rootfs, disks, limits, cg, extra, level) -> None:
    spec = load_spec(str(spec_path()))
    plan = make_plan(TMP, name=name, cpus=cpus, memory_mib=mem, rootfs=rootfs, disks=tuple(disks), limits=limits,
                     cgroup_version=cg, cmdline=" ".join([f"ip=10.213.0.6::10.213.0.5:255.255.255.252:{name}:eth0:off", *extra]))
    cfg = C.build_config(plan, level)
    assert spec.errors("FullVmConfiguration", cfg) == []
    for key, definition in (("boot-source", "BootSource"), ("machine-config", "MachineConfiguration"),
                            ("logger", "Logger"), ("metrics", "Metrics")):
        assert spec.errors(definition, cfg[key]) == []
    for d in cfg["drives"]:
        assert spec.errors("Drive", d) == []
    C.validate_config(cfg, spec_path())
    # what the issue asks for, beyond schema validity
    mc = cfg["machine-config"]
    assert (mc["vcpu_count"], mc["mem_size_mib"], mc["smt"]) == (cpus, mem, False)
    boot = cfg["boot-source"]
    assert boot["boot_args"].startswith(plan.cmdline.strip()) and "ip=10.213.0.6::" in boot["boot_args"]
    assert ("initrd_path" in boot) == (rootfs == "initrd")
    drives = {d["drive_id"]: d for d in cfg["drives"]}
    roots = [d for d in cfg["drives"] if d["is_root_device"]]
    if rootfs == "disk":
        assert roots == [drives["rootfs"]] and drives["rootfs"]["is_read_only"] is True
    else:
        assert roots == []
    assert drives["instance"]["is_read_only"] is True and "rate_limiter" not in drives["instance"]
    for i, disk in enumerate(disks):
        assert drives[f"disk{i}"]["is_read_only"] is disk.readonly
    for d in cfg["drives"]:  # a writable drive must honour the guest's flushes (Unsafe ignores them)
        assert d["cache_type"] == ("Unsafe" if d["is_read_only"] else "Writeback"), d
    # the instance disk's identity is its position: the first drive after the root device, before user disks
    order = [d["drive_id"] for d in cfg["drives"]]
    assert order == (["rootfs"] if rootfs == "disk" else []) + ["instance"] + [f"disk{i}" for i in range(len(disks))]
    (iface,) = cfg["network-interfaces"]
    assert (iface["iface_id"], iface["host_dev_name"], iface["guest_mac"]) == ("eth0", "tap0", "02:aa:bb:cc:dd:ee")
    if limits.net_rx_bytes:
        assert iface["rx_rate_limiter"]["bandwidth"]["size"] == limits.net_rx_bytes.size
    else:
        assert "rx_rate_limiter" not in iface
    if limits.disk_ops and disks:
        assert drives["disk0"]["rate_limiter"]["ops"]["refill_time"] == limits.disk_ops.refill_ms


def test_boot_args_add_only_what_is_missing(tmp_path: Path) -> None:
    plan = make_plan(tmp_path, cmdline="ip=1 console=hvc0 panic=5")
    assert C.boot_args(plan) == "ip=1 console=hvc0 panic=5 reboot=k"
    plan = make_plan(tmp_path, cmdline="ip=1")
    assert C.boot_args(plan) == "ip=1 console=ttyS0 reboot=k panic=1"


def _bad(plan, **spec_changes):
    spec = plan.spec.model_construct(**{**plan.spec.__dict__, **spec_changes})
    return plan.model_construct(**{**plan.__dict__, "spec": spec})


@pytest.mark.parametrize("changes,message", [
    ({"cpus": 0}, "Firecracker supports 1 to 32 vCPUs"),
    ({"cpus": 33}, "Firecracker supports 1 to 32 vCPUs"),
    ({"memory_mib": 0}, "positive number of MiB"),
    ({"memory_mib": -5}, "positive number of MiB"),
    ({"tdx": True}, "cannot run TDX"),
    ({"firmware": "ovmf"}, "boots kernels directly"),
    ({"limits": Limits.model_construct(pids_max=256, nofile=4096, net_rx_bytes=RateLimit.model_construct(size=0, refill_ms=1000, one_time_burst=None),
                                       net_tx_bytes=None, disk_bytes=None, disk_ops=None)}, "net rx bytes: size 0"),
    ({"limits": Limits.model_construct(pids_max=256, nofile=4096, net_rx_bytes=None, net_tx_bytes=None, disk_ops=None,
                                       disk_bytes=RateLimit.model_construct(size=10, refill_ms=-1, one_time_burst=None))},
     "disk bytes: refill_ms -1"),
    ({"limits": Limits.model_construct(pids_max=256, nofile=4096, net_rx_bytes=None, net_tx_bytes=None, disk_bytes=None,
                                       disk_ops=RateLimit.model_construct(size=10, refill_ms=5, one_time_burst=-2))}, "one_time_burst -2"),
])
def test_bad_sizes_and_rate_limits_are_clear_errors(tmp_path: Path, changes, message) -> None:
    with pytest.raises(SandboxError, match=message) as e:
        C.build_config(_bad(make_plan(tmp_path), **changes))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["", "a" * 65, "bad_name", "sp ace", "ümlaut", "dot.ted"])
def test_bad_ids_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="jail id"):
        C.check_plan(_bad(make_plan(tmp_path), name=name))


def test_other_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="newline"):
        C.boot_args(make_plan(tmp_path, cmdline="ip=1\ninit=/bin/sh"))
    with pytest.raises(SandboxError, match="command line is"):
        C.boot_args(make_plan(tmp_path, cmdline="x" * 2040))
    with pytest.raises(SandboxError, match="as root"):
        C.check_plan(make_plan(tmp_path, uid=0))
    with pytest.raises(SandboxError, match="raw disks only"):
        C.check_plan(make_plan(tmp_path, disks=(DiskSpec.parse("/d.qcow2:ro:qcow2"),)))
    plan = make_plan(tmp_path, rootfs="disk")
    with pytest.raises(SandboxError, match="rootfs.ext4"):
        C.staged_files(plan.model_construct(**{**plan.__dict__, "rootfs": None}))
    twice = (DiskSpec(path=Path("/d.img")), DiskSpec(path=Path("/d.img")))
    with pytest.raises(SandboxError, match="attached twice"):
        C.check_plan(make_plan(tmp_path, disks=twice))
    with pytest.raises(SandboxError, match="lacks required key 'drives'"):
        C.validate_config({"boot-source": {}}, None)


def test_runtime_validation_catches_a_broken_config(tmp_path: Path) -> None:
    cfg = C.build_config(make_plan(tmp_path))
    cfg["machine-config"]["vcpu_count"] = 64
    with pytest.raises(SandboxError, match=r"generated Firecracker config .*vcpu_count"):
        C.validate_config(cfg, spec_path())


def test_cli_limits_reach_the_rate_limiters_and_serials_are_refused() -> None:
    """--disk-rate/--disk-iops/--net-rate become the drives' and the interface's token buckets as they are; a disk
    serial cannot be set on Firecracker (its virtio-blk ID comes from the host file's inode): a clear refusal."""
    from sealbox.sandbox.rates import parse_iops, parse_rate

    mib = 1 << 20
    lim = Limits(disk_bytes=parse_rate("1MiB/s:4MiB", "--disk-rate"), disk_ops=parse_iops("100"),
                 net_rx_bytes=parse_rate("2MiB/s", "--net-rate"), net_tx_bytes=parse_rate("2MiB/s", "--net-rate"))
    cfg = C.build_config(make_plan(TMP, disks=(DiskSpec(path=Path("/data/d.img")),), limits=lim))
    assert cfg["drives"][-1]["rate_limiter"] == {"bandwidth": {"size": 4 * mib, "refill_time": 4000}, "ops": {"size": 100, "refill_time": 1000}}
    iface = cfg["network-interfaces"][0]
    assert iface["rx_rate_limiter"] == iface["tx_rate_limiter"] == {"bandwidth": {"size": 2 * mib, "refill_time": 1000}}
    load_spec(str(spec_path())).validate("FullVmConfiguration", cfg, what="config")
    with pytest.raises(SandboxError, match=r"Firecracker cannot give a disk a serial \(serial=db\)"):
        C.build_config(make_plan(TMP, disks=(DiskSpec(path=Path("/data/d.img"), serial="db"),)))
