"""The built-in modules persistent, azure and gcp: what each sets, what the spec checks for them, and the console= rule
that lets a cloud profile set its serial console's speed."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

from sealbox.guest import files as guest_files
from sealbox.spec.load import load_spec


def test_cloud_profiles_bring_their_drivers_agent_and_console() -> None:
    azure = load_spec(None, ["azure"]).spec
    assert {"hv_vmbus", "hv_netvsc", "hv_storvsc", "hv_utils", "pci_hyperv", "mlx5_core", "nvme"} <= set(azure.kernel.modules)
    assert azure.cloud.providers == ["azure"] and "busybox" in azure.packages.include
    gcp = load_spec(None, ["gcp"]).spec
    assert {"gve", "virtio_net", "virtio_scsi", "nvme"} <= set(gcp.kernel.modules) and gcp.cloud.providers == ["gcp"]
    # the serial console: the profile's console=ttyS0,SPEED replaces base's console=ttyS0 (Linux would keep the first)
    assert [a for a in azure.kernel.cmdline if a.startswith("console=")] == ["console=ttyS0,115200n8"]
    assert [a for a in gcp.kernel.cmdline if a.startswith("console=")] == ["console=ttyS0,38400n8"]
    assert [a for a in load_spec(None).spec.kernel.cmdline if a.startswith("console=")] == ["console=ttyS0"]
    both = load_spec(None, ["azure", "gcp"]).spec
    assert both.cloud.providers == ["azure", "gcp"]


def test_console_rule_keeps_other_ports_and_arguments(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["base"]\nkernel.cmdline = ["console=tty0", "console=ttyS0,9600", "quiet", "console=hvc0"]\n')
    assert load(spec).spec.kernel.cmdline == ["quiet", "panic=-1", "systemd.show_status=error", "console=tty0", "console=ttyS0,9600", "console=hvc0"]


def test_persistent_module() -> None:
    s = load_spec(None, ["persistent"]).spec
    assert s.persistent.enable and s.persistent.disk == ["serial=persistent", "azure-lun=0"]
    assert "e2fsprogs" in s.packages.include and {"/usr/sbin/mke2fs", "/usr/sbin/e2fsck"} <= set(s.strip.keep)
    units, files = guest_files.feature_files(s.persistent.disk, [])
    assert units == ["sealbox-persistent.service"]
    assert files["/usr/lib/sealbox/persistent.conf"][0] == b"disk=serial=persistent\ndisk=azure-lun=0\n"
    # sealbox's own feature units come before the ready marker: the spec's units are ordered after it instead
    assert guest_files.ready_order([*guest_files.UNITS, *guest_files.FEATURE_UNITS, "app.service"]) == (
        b"# sealbox: the ready marker and the host keys come before anything the image's spec enables\n[Unit]\nBefore=app.service\n")
    for unit in guest_files.FEATURE_UNITS:
        assert "Before=sealbox-ready.service" in guest_files.read(unit).decode()


@pytest.mark.parametrize(("text", "has"), [
    ('include = ["base"]\npersistent.enable = true\npackages.include = ["e2fsprogs"]\nstrip.keep = ["/usr/sbin/*"]\n',
     ["persistent.disk names no disk"]),
    ('include = ["base"]\npersistent.enable = true\npersistent.disk = ["serial=x"]\n', ['add "e2fsprogs" to packages.include']),
    ('include = ["base"]\npersistent.enable = true\npersistent.disk = ["serial=x"]\npackages.include = ["e2fsprogs"]\n',
     ["strip.extra_tools removes /usr/sbin/mke2fs", "to strip.keep"]),
    ('include = ["base"]\npersistent.disk = ["serial=bad name"]\n', ["persistent.disk", "not a valid disk identity"]),
    ('include = ["base"]\npersistent.disk = ["azure-lun=64"]\n', ["not a valid disk identity"]),
    ('include = ["base"]\npersistent.disk = ["lun=1"]\n', ["not a valid disk identity"]),
    ('include = ["base"]\ncloud.providers = ["azure"]\n', ['add "busybox" to packages.include']),
    ('include = ["base"]\ncloud.providers = ["aws"]\n', ["cloud.providers[0]"]),
])
def test_bad_settings_are_one_line_errors(tmp_path: Path, text: str, has: list[str]) -> None:
    spec_error(write(tmp_path, "s.toml", text), has=has)


def test_a_user_keeps_the_module_and_adds_an_identity(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["default", "persistent"]\npersistent.disk = ["serial=db"]\n')
    assert load(spec).spec.persistent.disk == ["serial=persistent", "azure-lun=0", "serial=db"]
