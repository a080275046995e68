"""The [bob] section: declared once, defaults, endpoint/port/workload validation, and what include = ["bob"] needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

from sealbox.spec.bob import Bob, parse_endpoint
from sealbox.spec.docs import settings_rows

GOOD = """\
include = ["base", "bob"]
name = "searcher"
[bob]
builder_bundle = ["192.0.2.10:8645"]
builder_state_diff = ["[2001:db8::10]:8646"]
workload = "work/searcher.oci.tar"
"""


def good(tmp_path: Path, extra: str = "") -> Path:
    """GOOD with the [bob] lines of `extra` added, each replacing a line of GOOD that sets the same key."""
    write(tmp_path, "work/searcher.oci.tar", "an archive\n")
    keys = {line.split("=")[0].strip() for line in extra.splitlines()}
    kept = "".join(line + "\n" for line in GOOD.splitlines() if line.split("=")[0].strip() not in keys)
    return write(tmp_path, "s.toml", kept + extra)


def test_include_bob_pulls_the_module_with_the_documented_defaults(tmp_path: Path) -> None:
    loaded = load(good(tmp_path))
    b = loaded.spec.bob
    assert b.enable and "built-in module bob" in loaded.fragments
    assert (b.control_ssh_port, b.data_ssh_port, b.key_registration_port, b.input_only_udp_port) == (22, 10022, 8080, 27017)
    assert (b.dwell_seconds, b.log_delay_seconds) == (300, 120)
    assert b.builder_bundle == ["192.0.2.10:8645"] and b.builder_state_diff == ["[2001:db8::10]:8646"]
    assert {"python3", "conntrack", "nftables"} <= set(loaded.spec.packages.include)
    assert loaded.resolve_source(b.workload) == tmp_path / "work" / "searcher.oci.tar"


def test_a_spec_without_bob_is_unchanged(tmp_path: Path) -> None:
    spec = load(write(tmp_path, "s.toml", 'include = ["base"]\n')).spec
    assert spec.bob == Bob() and not spec.bob.enable


def test_settings_are_taken_as_written(tmp_path: Path) -> None:
    spec = load(good(tmp_path, "dwell_seconds = 5\nlog_delay_seconds = 0\ndata_ssh_port = 2222\n"
                                "builder_bundle = ['198.51.100.1:1', '198.51.100.2:65535']\n")).spec
    assert (spec.bob.dwell_seconds, spec.bob.log_delay_seconds, spec.bob.data_ssh_port) == (5, 0, 2222)
    assert spec.bob.builder_bundle == ["198.51.100.1:1", "198.51.100.2:65535"]  # a later list replaces, never appends


def test_the_node_command_reaches_the_guests_config(tmp_path: Path) -> None:
    from sealbox.builder.bob_firewall import image_files

    spec = load(good(tmp_path, "node_command = ['/usr/local/bin/node', '--ipc', '/run/sealbox-bob-node/rpc.sock']\n")).spec
    config = json.loads(image_files(spec.bob)["/usr/lib/sealbox/bob/config.json"])
    assert config["node_command"] == ["/usr/local/bin/node", "--ipc", "/run/sealbox-bob-node/rpc.sock"]
    assert json.loads(image_files(load(good(tmp_path)).spec.bob)["/usr/lib/sealbox/bob/config.json"])["node_command"] == []


def test_every_bob_setting_is_documented_once() -> None:
    rows = {r["key"]: r for r in settings_rows() if r["key"].startswith("bob.")}
    assert set(rows) == {f"bob.{k}" for k in Bob.model_fields}
    assert rows["bob.dwell_seconds"]["default"] == "300" and rows["bob.log_delay_seconds"]["default"] == "120"


@pytest.mark.parametrize("extra, has", [
    ("dwell_seconds = -1\n", ["bob.dwell_seconds", "greater than or equal to 0"]),
    ("dwell_seconds = 'five'\n", ["bob.dwell_seconds", "integer"]),
    ("log_delay_seconds = 700000\n", ["bob.log_delay_seconds", "less than or equal to 604800"]),
    ("data_ssh_port = 0\n", ["bob.data_ssh_port", "greater than or equal to 1"]),
    ("key_registration_port = 65536\n", ["bob.key_registration_port", "less than or equal to 65535"]),
    ("data_ssh_port = 22\n", ["bob:", "data_ssh_port = 22 is also control_ssh_port", "own port"]),
    ("input_only_udp_port = 9000\n", ["cl_p2p_port = 9000 is also input_only_udp_port (UDP)"]),
    ("input_only_udp_port = 8080\n", ["input_only_udp_port = 8080 is also key_registration_port (TCP)", "choose another"]),
    ("builder_bundle = ['builder.example:8645']\n", ["bob.builder_bundle", "'builder.example:8645'", "ADDRESS:PORT"]),
    ("builder_bundle = ['192.0.2.10']\n", ["bob.builder_bundle", "ADDRESS:PORT"]),
    ("builder_bundle = ['192.0.2.300:1']\n", ["bob.builder_bundle", "not an IP address"]),
    ("builder_bundle = ['192.0.2.1:0']\n", ["bob.builder_bundle", "port 0"]),
    ("builder_bundle = ['192.0.2.1:70000']\n", ["bob.builder_bundle", "port 70000"]),
    ("builder_bundle = ['2001:db8::1:80']\n", ["bob.builder_bundle", "ADDRESS:PORT"]),
    ("builder_bundle = ['[192.0.2.1]:80']\n", ["bob.builder_bundle", "brackets"]),
    ("builder_bundle = ['0.0.0.0:80']\n", ["bob.builder_bundle", "no single host"]),
    ("builder_bundle = ['192.0.2.1:80', '192.0.2.1:80']\n", ["bob.builder_bundle", "twice"]),
    ("builder_bundle = '192.0.2.1:80'\n", ["bob.builder_bundle", "list"]),
    ("workload = '/abs/w.tar'\n", ["bob.workload", "relative path"]),
    ("workload = '../w.tar'\n", ["bob.workload", "'..'"]),
    ("workload = 'work/searcher.img'\n", ["bob.workload", ".tar"]),
    ("workload = 'work/missing.tar'\n", ["bob.workload", "'work/missing.tar' does not exist", "output.formats"]),
    ("workload = 'work'\n", ["bob.workload", ".tar"]),
    ("ssh_port = 22\n", ["unknown key 'bob.ssh_port'", "allowed here:", "control_ssh_port"]),
    ("node_command = ['geth', '--datadir', '.']\n", ["bob.node_command", "'geth' must be the program's absolute path"]),
    ("node_command = ['/usr/local/bin/geth', \"a\\nb\"]\n", ["bob.node_command", "argument 1", "newline"]),
    ("node_command = '/usr/local/bin/geth'\n", ["bob.node_command", "list"]),
])
def test_bad_values_name_the_key_and_the_fix(tmp_path: Path, extra: str, has: list[str]) -> None:
    spec_error(good(tmp_path, extra), has=[str(tmp_path / "s.toml"), *has])


def test_a_workload_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.tar").mkdir()
    spec_error(good(tmp_path, "workload = 'dir.tar'\n"), has=["bob.workload", "not a regular file"])


@pytest.mark.parametrize("drop, has", [
    ("builder_bundle", ["bob.builder_bundle: no endpoint", "set e.g. builder_bundle"]),
    ("builder_state_diff", ["bob.builder_state_diff: no endpoint"]),
    ("workload", ["bob.workload: no workload", 'output.formats = ["oci"]']),
])
def test_the_module_needs_the_endpoints_and_the_workload(tmp_path: Path, drop: str, has: list[str]) -> None:
    text = "".join(line + "\n" for line in GOOD.splitlines() if not line.startswith(drop))
    write(tmp_path, "work/searcher.oci.tar", "x")
    spec_error(write(tmp_path, "s.toml", text), has=["(merged)", *has])


def test_bob_without_its_tools_is_refused(tmp_path: Path) -> None:
    # a spec cannot remove a package a module adds, but a spec that sets bob.enable itself can forget them
    write(tmp_path, "work/searcher.oci.tar", "x")
    text = GOOD.replace('include = ["base", "bob"]', 'include = ["base"]').replace("[bob]", "[bob]\nenable = true")
    spec_error(write(tmp_path, "s.toml", text), has=["bob.enable", '"python3"', "packages.include"])


def test_a_container_image_cannot_be_a_searcher_sandbox(tmp_path: Path) -> None:
    write(tmp_path, "work/searcher.oci.tar", "x")
    text = GOOD.replace('include = ["base", "bob"]', 'include = ["bob"]') + "[output]\nformats = ['oci']\n"
    spec_error(write(tmp_path, "s.toml", text), has=["bob.enable"])


def test_parse_endpoint() -> None:
    assert parse_endpoint("192.0.2.7:8645")[1] == 8645
    assert str(parse_endpoint("[2001:db8::7]:1")[0]) == "2001:db8::7"
    with pytest.raises(ValueError, match="ADDRESS:PORT"):
        parse_endpoint("192.0.2.7:8645 ")


@pytest.mark.parametrize("how", ['include = ["base", "bob", "persistent"]', 'include = ["base", "persistent", "bob"]'])
def test_bob_with_the_plain_persistent_module_is_refused(tmp_path: Path, how: str) -> None:
    """persistent formats a blank data disk as plain ext4 at boot, before bob's initialize could encrypt it."""
    write(tmp_path, "work/searcher.oci.tar", "x")
    text = GOOD.replace('include = ["base", "bob"]', how)
    spec_error(write(tmp_path, "s.toml", text), has=["bob.enable", "persistent.enable", "plain ext4", "remove"])
