"""A TD is launched bound to its instance data: MRCONFIGID = SHA-384 of the canonical instance data, given to
QEMU's tdx-guest object (base64). Checked on the command line; no TDX hardware needed."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from pathlib import Path

import pytest

from sealbox.cli.main import main
from sealbox.errors import SandboxError
from sealbox.guest.instance import InstanceData, canonical, mrconfigid
from sealbox.sandbox import planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.vmm import qemu, qemu_launch
from sealbox.sandbox.vmm.qemu import PENDING_MRCONFIGID, HostFacts, build_command


@pytest.fixture(autouse=True)
def broken_kvm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(planning, "_kvm", lambda root, dry_run: KvmStatus(present=True, functional=False, detail="vCPUs never run"))


def tdx_object(argv: list[str]) -> str:
    (obj,) = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-object" and argv[i + 1].startswith("tdx-guest,")]
    return obj


def test_dry_run_shows_the_tdx_object_with_the_binding(capsys, image_dir: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rc = main(["run", str(image_dir), "--name", "td1", "--tdx", "--dry-run", "--json", "--state-dir", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    d = json.loads(out)
    assert tdx_object(d["qemu_argv"]) == f"tdx-guest,id=tdx0,mrconfigid={PENDING_MRCONFIGID}"
    assert any("MRCONFIGID" in w and "client key" in w for w in d["warnings"])


def _plan(image_dir: Path, tmp_path: Path, digest: bytes | None):  # type: ignore[no-untyped-def]
    from sealbox.sandbox.model import CgroupPlan, GuestNet, SandboxSpec, VmPlan

    spec = SandboxSpec(image_dir=image_dir, name="td2", tdx=True)
    subnet = ipaddress.IPv4Network("10.213.4.8/30")
    net = GuestNet(subnet=subnet, host_ip=subnet[1], guest_ip=subnet[2], guest_mac="02:aa:bb:cc:dd:ee", tap="tap0", netns="sealbox-td2")
    sdir = tmp_path / "state" / "td2"
    return VmPlan(spec=spec, sandbox_dir=sdir, kernel=image_dir / "demo.efi", initrd=None, rootfs=None,
                  instance_disk=sdir / "instance.img", cmdline="", net=net, uid=995, gid=994,
                  cgroup=CgroupPlan(version=1, name="sealbox/td2", memory_bytes=1 << 29, cpu_quota_us=100_000, pids_max=256),
                  accel="kvm", console_log=sdir / "console.log", mrconfigid=digest.hex() if digest else None)  # fmt: skip


def test_launch_argv_carries_the_instance_data_digest(image_dir: Path, tmp_path: Path) -> None:
    d = InstanceData(hostname="td2", address="10.213.4.10/30", gateway="10.213.4.9", dns=("10.213.4.9",),
                     authorized_keys={"root": ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom x",)})
    cmd = build_command(_plan(image_dir, tmp_path, mrconfigid(d)), HostFacts())
    value = tdx_object(cmd.qemu_argv).removeprefix("tdx-guest,id=tdx0,mrconfigid=")
    assert base64.b64decode(value, validate=True) == hashlib.sha384(canonical(d)).digest()


def test_a_td_is_never_started_unbound(image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qemu_launch, "tdx_support", lambda: (True, "stand-in: a TDX host"))  # past the host check
    backend = qemu.QemuBackend(HostFacts())
    with pytest.raises(SandboxError, match="MRCONFIGID"):
        backend.check_host(_plan(image_dir, tmp_path, None))
