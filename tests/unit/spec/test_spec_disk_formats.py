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
