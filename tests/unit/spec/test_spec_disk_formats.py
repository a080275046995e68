"""output.formats: the disk formats are accepted, and refused with one line when the UKI they carry is not built."""

from __future__ import annotations

from pathlib import Path

from spec_testlib import load, spec_error, write


def test_disk_formats_with_uki_are_accepted(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "output.formats = ['uki', 'disk', 'qcow2', 'vhd', 'gcp']\n")
    assert load(spec).spec.output.formats == ["uki", "disk", "qcow2", "vhd", "gcp"]


def test_disk_without_uki_names_key_and_fix(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "output.formats = ['initrd', 'vhd']\n")
    spec_error(spec, has=[f"{spec}:", "output", "formats", "'vhd'", 'add "uki"'])


def test_a_profile_can_add_disks(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "output.formats = ['uki']\n[profiles.cloud]\noutput.formats = ['uki', 'gcp']\n")
    assert load(spec, ["cloud"]).spec.output.formats == ["uki", "gcp"]


def test_verity_root_needs_ext4_dmsetup_and_keeping_it(tmp_path: Path) -> None:
    base = "output.formats = ['uki', 'ext4', 'disk']\noutput.disk_root = 'verity'\n"
    spec = write(tmp_path, "a.toml", "output.formats = ['uki', 'disk']\noutput.disk_root = 'verity'\n")
    spec_error(spec, has=["output", 'needs "ext4"'])
    spec = write(tmp_path, "b.toml", base)
    spec_error(spec, has=['add "dmsetup" to packages.include'])
    spec = write(tmp_path, "c.toml", base + "packages.include = ['dmsetup']\n")
    spec_error(spec, has=['add "/usr/sbin/dmsetup" to strip.keep'])
    spec = write(tmp_path, "d.toml", base + "packages.include = ['dmsetup']\nstrip.keep = ['/usr/sbin/dm*']\n")
    assert load(spec).spec.output.disk_root == "verity"
