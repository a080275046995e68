"""output.formats = ["oci"] and the [oci] section: a container image is built from its own spec, without the VM's
kernel and boot settings; its runtime settings are checked when the spec is loaded, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

from sealbox.spec.fields import merge_rule
from sealbox.spec.model import DEFAULT_PATH, Oci, needs_kernel

OCI = "name = 'app'\noutput.formats = ['oci']\n"


def test_an_oci_spec_needs_no_vm_settings_and_gets_unprivileged_defaults(tmp_path: Path) -> None:
    spec = load(write(tmp_path, "s.toml", OCI)).spec
    assert spec.output.formats == ["oci"]
    assert spec.oci.user == "nobody" and spec.oci.workdir == "/" and spec.oci.tag == "latest"
    assert spec.oci.entrypoint == [] and spec.oci.cmd == [] and spec.oci.env == {}
    assert not needs_kernel(spec.output.formats) and needs_kernel(["initrd"]) and needs_kernel([])


def test_oci_settings_are_taken_as_written(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", OCI + """\
[oci]
entrypoint = ["/bin/sh", "-c"]
cmd = ["echo $GREETING"]
env = { GREETING = "hello world", PATH = "/opt/bin:/usr/bin" }
user = "app:app"
workdir = "/opt/app"
tag = "v1.2"
compression_level = 1
""")
    o = load(spec).spec.oci
    assert o == Oci(entrypoint=["/bin/sh", "-c"], cmd=["echo $GREETING"], env={"GREETING": "hello world", "PATH": "/opt/bin:/usr/bin"},
                    user="app:app", workdir="/opt/app", tag="v1.2", compression_level=1)
    assert DEFAULT_PATH.startswith("/usr/local/sbin:")


def test_env_merges_name_by_name_and_argv_lists_override(tmp_path: Path) -> None:
    assert merge_rule(Oci, "env") == "merge"
    assert merge_rule(Oci, "cmd") == merge_rule(Oci, "entrypoint") == "override"
    write(tmp_path, "common.toml", '[oci]\nenv = { A = "1", B = "2" }\ncmd = ["/bin/true", "x"]\n')
    spec = write(tmp_path, "s.toml", 'include = ["common.toml"]\n' + OCI + '[oci]\nenv = { B = "3", C = "4" }\ncmd = ["/bin/false"]\n'
                 '[profiles.p]\noci.env = { D = "5" }\n')
    assert load(spec).spec.oci.env == {"A": "1", "B": "3", "C": "4"}
    assert load(spec).spec.oci.cmd == ["/bin/false"]
    assert load(spec, ["p"]).spec.oci.env == {"A": "1", "B": "3", "C": "4", "D": "5"}


def test_oci_is_built_from_its_own_spec(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "output.formats = ['oci', 'initrd']\n")
    spec_error(spec, has=[f"{spec} (merged)", "output.formats", "'initrd'", "another spec", "fragment"])


def test_the_vm_module_cannot_become_a_container(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "include = ['base']\n" + OCI)
    spec_error(spec, has=['output.formats = ["oci"]', "hardening.ssh", "hardening.firewall", "kernel.modules", "services.mask",
                          '"base"'])


@pytest.mark.parametrize("extra, key", [
    ("hardening.ssh = true\n", "hardening.ssh"),
    ("hardening.console_getty = true\n", "hardening.console_getty"),
    ("hardening.firewall_allow_tcp = [80]\n", "hardening.firewall_allow_tcp"),
    ("kernel.package = 'linux-image-6.12-cloud-amd64'\n", "kernel.package"),
    ("kernel.cmdline = ['quiet']\n", "kernel.cmdline"),
    ("kernel.load = ['vsock']\n", "kernel.load"),
    ("services.enable = ['x.service']\n", "services.enable"),
])
def test_a_vm_setting_a_fragment_sets_is_refused(tmp_path: Path, extra: str, key: str) -> None:
    spec = write(tmp_path, "s.toml", OCI + extra)
    text = spec_error(spec, has=[key, "container image does not have"])
    assert text.count("hardening.") + text.count("kernel.") + text.count("services.") == 1, text  # only the one set


def test_vm_settings_switched_off_are_fine(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", OCI + "hardening.ssh = false\nhardening.firewall = false\nhardening.firewall_allow_tcp = []\n")
    assert load(spec).spec.hardening.ssh is False


@pytest.mark.parametrize("extra, has", [
    ("oci.env = { '1A' = 'x' }\n", ["oci.env", "'1A'", "environment variable name"]),
    ("oci.env = { 'A-B' = 'x' }\n", ["oci.env", "'A-B'"]),
    ('oci.env = { A = "x\\u0000y" }\n', ["oci.env", "NUL"]),
    ('oci.cmd = ["/bin/echo", "a\\u0000b"]\n', ["oci.cmd", "NUL"]),
    ("oci.entrypoint = ['', 'x']\n", ["oci.entrypoint", "empty"]),
    ("oci.user = 'root;x'\n", ["oci.user", "'root;x'", "name or uid"]),
    ("oci.user = 'App'\n", ["oci.user", "'App'"]),
    ("oci.workdir = 'opt/app'\n", ["oci.workdir", "absolute"]),
    ("oci.workdir = '/opt/../etc'\n", ["oci.workdir", "'..'"]),
    ("oci.tag = '-x'\n", ["oci.tag", "'-x'", "image tag"]),
    ("oci.tag = 'a:b'\n", ["oci.tag"]),
    ("oci.compression_level = 0\n", ["oci.compression_level", "greater than or equal to 1"]),
    ("oci.cmd = '/bin/sh'\n", ["oci.cmd", "list"]),
    ("oci.volumes = ['/data']\n", ["unknown key 'oci.volumes'", "allowed here:", "cmd", "workdir"]),
])
def test_bad_oci_settings_name_key_and_value(tmp_path: Path, extra: str, has: list[str]) -> None:
    spec_error(write(tmp_path, "s.toml", OCI + extra), has=[str(tmp_path / "s.toml"), *has])


def test_a_name_that_cannot_name_an_image_is_refused(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "name = 'My_App'\noutput.formats = ['oci']\n")
    spec_error(spec, has=["name 'My_App'", "container image", "lowercase"])
    assert load(write(tmp_path, "t.toml", "name = 'My_App'\n")).spec.name == "My_App"  # a VM image may keep it
