"""Every value error in a spec is one line naming the file, the dotted key and the bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

# (toml, dotted key, bad value as shown) — each must be refused with all three in one line.
BAD_VALUES = [
    # wrong types
    ("epoch = 'x'", "epoch", "'x'"),
    ("epoch = true", "epoch", "True"),
    ("epoch = 1.5", "epoch", "1.5"),
    ("name = 5", "name", "5"),
    ("name = 1979-05-27", "name", "1979"),
    ("packages.include = 'vim'", "packages.include", "'vim'"),
    ("distribution.components = 'main'", "distribution.components", "'main'"),
    ("hardening.ssh = 'yes'", "hardening.ssh", "'yes'"),
    ("hardening.firewall_allow_tcp = ['22']", "hardening.firewall_allow_tcp[0]", "'22'"),
    ("kernel.cmdline = [1]", "kernel.cmdline[0]", "1"),
    ("users.bob.uid = '1000'", "users.bob.uid", "'1000'"),
    ("users = 1", "users", "1"),
    ("users.bob = 1", "users.bob", "1"),
    ("files = 1", "files", "1"),
    ("files = [1]", "files[0]", "1"),
    ("[[files]]\nsource = 1\ndest = '/x'", "files[0].source", "1"),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\nmode = '0644'", "files[0].mode", "'0644'"),
    ("strip.docs = 0", "strip.docs", "0"),
    ("output = []", "output", "output"),
    # bad values
    ("name = '../x'", "name", "'../x'"),
    ("name = ''", "name", "''"),
    ("epoch = -1", "epoch", "-1"),
    ("epoch = 4294967296", "epoch", "4294967296"),
    ("distribution.suite = 'Bookworm'", "distribution.suite", "'Bookworm'"),
    ("distribution.architecture = 'arm64'", "distribution.architecture", "'arm64'"),
    ("distribution.components = ['Main']", "distribution.components", "'Main'"),
    ("distribution.mirror = 'ftp://mirror.example/debian'", "distribution.mirror", "'ftp://mirror.example/debian'"),
    ("distribution.mirror = 'mirror.example/debian'", "distribution.mirror", "'mirror.example/debian'"),
    ("distribution.snapshot = 'http://snap.example/a b'", "distribution.snapshot", "'http://snap.example/a b'"),
    ("distribution.security_mirror = 'http://x\"'", "distribution.security_mirror", "'http://x\"'"),
    ('distribution.mirror = "http://mirror.example/deb\\u0000ian"', "distribution.mirror", "\\x00"),
    ('distribution.mirror = "http://mirror.example/\\u001b[31m"', "distribution.mirror", "\\x1b"),
    ("distribution.mirror = 'http:///debian'", "distribution.mirror", "'http:///debian'"),
    ("distribution.mirror = 'http://[::1/debian'", "distribution.mirror", "'http://[::1/debian'"),
    ("distribution.mirror = 'http://mirror.example/dé'", "distribution.mirror", "'http://mirror.example/dé'"),
    ('users.bob.authorized_keys = ["ssh-ed25519 AAAA dev\\rinjected"]', "users.bob.authorized_keys", "\\r"),
    ("packages.include = ['Vim']", "packages.include", "'Vim'"),
    ("packages.include = ['vim;reboot']", "packages.include", "'vim;reboot'"),
    ("packages.include = ['v']", "packages.include", "'v'"),
    ("packages.include = ['vim=']", "packages.include", "'vim='"),
    ("services.enable = ['sshd']", "services.enable", "'sshd'"),
    ("services.mask = ['a.exe']", "services.mask", "'a.exe'"),
    ("services.enable = ['../x.service']", "services.enable", "'../x.service'"),
    ("kernel.modules = ['a b']", "kernel.modules", "'a b'"),
    ("kernel.load = ['x/y']", "kernel.load", "'x/y'"),
    ("kernel.package = 'Linux'", "kernel.package", "'Linux'"),
    ("kernel.cmdline = ['a b']", "kernel.cmdline", "'a b'"),
    ("kernel.cmdline = ['']", "kernel.cmdline", "''"),
    ("hardening.firewall_allow_tcp = [0]", "hardening.firewall_allow_tcp", "0"),
    ("hardening.firewall_allow_udp = [65536]", "hardening.firewall_allow_udp", "65536"),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\nmode = 4096", "files[0].mode", "4096"),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\nmode = -1", "files[0].mode", "-1"),
    ("[[files]]\nsource = 's.toml'\ndest = 'etc/x'", "files[0].dest", "'etc/x'"),
    ("[[files]]\nsource = 's.toml'\ndest = '/a/../b'", "files[0].dest", "'/a/../b'"),
    ("[[files]]\nsource = 's.toml'\ndest = '/a//b'", "files[0].dest", "'/a//b'"),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\nowner = 'Root'", "files[0].owner", "'Root'"),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\ngroup = 'a b'", "files[0].group", "'a b'"),
    ("[[files]]\ndest = '/x'", "files[0].source", "required"),
    ("users.root = {}", "users", "'root'"),
    ("users.Bob = {}", "users", "'Bob'"),
    ("users.1abc = {}", "users", "'1abc'"),
    ("users.bob.uid = 0", "users.bob.uid", "0"),
    ("users.bob.uid = 999", "users.bob.uid", "999"),
    ("users.bob.groups = ['Wheel']", "users.bob.groups", "'Wheel'"),
    ("users.bob.shell = 'bin/sh'", "users.bob.shell", "'bin/sh'"),
    ("users.bob.shell = '/bin/../sh'", "users.bob.shell", "'/bin/../sh'"),
    ("users.bob.shell = ''", "users.bob.shell", "''"),
    ("users.bob.authorized_keys = ['not a key']", "users.bob.authorized_keys", "'not a key'"),
    ("strip.paths = ['usr/share']", "strip.paths", "'usr/share'"),
    ("strip.keep = ['/usr/../etc']", "strip.keep", "'/usr/../etc'"),
    ("output.formats = ['iso']", "output.formats[0]", "'iso'"),
    ("output.compression_level = 0", "output.compression_level", "0"),
    ("output.compression_level = 20", "output.compression_level", "20"),
    ("output.ext4_extra_mib = -1", "output.ext4_extra_mib", "-1"),
]


@pytest.mark.parametrize(("toml", "key", "shown"), BAD_VALUES, ids=[b[0].split("\n")[-1][:40] for b in BAD_VALUES])
def test_bad_value_names_file_key_and_value(tmp_path: Path, toml: str, key: str, shown: str) -> None:
    spec = write(tmp_path, "s.toml", toml + "\n")
    spec_error(spec, has=[f"{spec}:", key, shown])


@pytest.mark.parametrize(("toml", "key", "shown"), BAD_VALUES[:8] + BAD_VALUES[40:48])
def test_bad_value_in_a_profile_names_the_profile(tmp_path: Path, toml: str, key: str, shown: str) -> None:
    body = "\n".join(f"  {line}" for line in toml.replace("[[files]]", "[[profiles.p.files]]").splitlines())
    if "[[profiles" not in body:
        body = "[profiles.p]\n" + body
    spec = write(tmp_path, "s.toml", body + "\n")
    spec_error(spec, ["p"], has=[f"{spec} (profile p):", f"profiles.p.{key}", shown])


def test_bad_value_in_an_include_names_the_included_file(tmp_path: Path) -> None:
    write(tmp_path, "mods/net.toml", "hardening.firewall_allow_udp = [70000]\n")
    spec = write(tmp_path, "s.toml", "include = ['mods/net.toml']\n")
    text = spec_error(spec, has=["mods/net.toml:", "hardening.firewall_allow_udp", "70000"])
    assert not text.startswith(str(spec))


# --- unknown keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("toml", "key", "allowed"), [
    ("foo = 1", "'foo'", ["distribution", "epoch", "include", "profiles"]),
    ("[kernel]\nfoo = 1", "'kernel.foo'", ["cmdline, load, modules, package"]),
    ("[hardening]\nfirewal = true", "'hardening.firewal'", ["firewall"]),
    ("[users.bob]\nshel = '/bin/sh'", "'users.bob.shel'", ["authorized_keys, groups, instance_password, shell, uid"]),
    ("[[files]]\nsource = 's.toml'\ndest = '/x'\nmod = 1", "'files[0].mod'", ["dest, group, mode, owner, source"]),
    ("[a.b.c]\nd = 1", "'a'", ["distribution"]),
])
def test_unknown_key_names_it_and_lists_what_is_allowed_there(tmp_path: Path, toml: str, key: str, allowed: list[str]) -> None:
    spec = write(tmp_path, "s.toml", toml + "\n")
    spec_error(spec, has=[f"{spec}:", f"unknown key {key}", "allowed here:", *allowed])


@pytest.mark.parametrize(("toml", "key", "allowed"), [
    ("[profiles.dev]\nfoo = 1", "'profiles.dev.foo'", ["distribution", "include"]),
    ("[profiles.dev.kernel]\nfoo = 1", "'profiles.dev.kernel.foo'", ["cmdline, load, modules, package"]),
    ("[profiles.dev.users.bob]\nfoo = 1", "'profiles.dev.users.bob.foo'", ["authorized_keys, groups, instance_password, shell, uid"]),
])
def test_unknown_key_in_a_profile(tmp_path: Path, toml: str, key: str, allowed: list[str]) -> None:
    spec = write(tmp_path, "s.toml", toml + "\n")
    text = spec_error(spec, ["dev"], has=[f"{spec} (profile dev):", f"unknown key {key}", *allowed])
    assert "profiles," not in text.split("allowed here:")[1]  # a profile cannot hold profiles


def test_profiles_are_validated_even_when_not_selected(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "[profiles.dev]\nfoo = 1\n")
    spec_error(spec, has=["profiles.dev.foo"])


def test_good_urls_are_accepted(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", """\
        [distribution]
        mirror = "https://mirror.example:8443/debian/"
        security_mirror = "file:///srv/mirror/debian-security"
        snapshot = "http://[fd00::1]/archive/debian/20250101T000000Z"
        """)
    d = load(spec).spec.distribution
    assert d.mirror == "https://mirror.example:8443/debian" and d.security_mirror == "file:///srv/mirror/debian-security"


def test_duplicate_uids_are_refused_after_merging(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", "users.alice.uid = 1500\n")
    spec = write(tmp_path, "s.toml", "include = ['inc.toml']\nusers.bob.uid = 1500\nusers.carol.uid = 1501\n")
    spec_error(spec, has=[f"{spec} (merged):", "users.bob.uid", "1500", "users.alice"])


# --- baked keys -----------------------------------------------------------------------------------

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ7x6Z5kq3w2p1GmJb8xJx3m5Q6uJ8s2a2H1b0kqZp5X dev@laptop"


def test_baked_authorized_keys_refused_without_allow(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", f"[users.dev]\nauthorized_keys = ['{KEY}']\n")
    spec_error(spec, has=[f"{spec} (merged):", "users.dev.authorized_keys", "hardening.allow_baked_keys"])


def test_baked_authorized_keys_allowed_with_allow(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", f"[hardening]\nallow_baked_keys = true\n[users.dev]\nauthorized_keys = ['{KEY}']\n")
    assert load(spec).spec.users["dev"].authorized_keys == [KEY]


def test_baked_keys_allowed_by_a_profile_only_when_selected(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", f"""\
        [profiles.dev]
        hardening.allow_baked_keys = true
        users.dev.authorized_keys = ['{KEY}']
        [profiles.prod]
        hardening.allow_baked_keys = false
        """)
    assert load(spec, ["dev"]).spec.users["dev"].authorized_keys == [KEY]
    spec_error(spec, ["dev", "prod"], has=["users.dev.authorized_keys"])


def test_a_later_fragment_can_revoke_allow_baked_keys(tmp_path: Path) -> None:
    write(tmp_path, "dev.toml", f"hardening.allow_baked_keys = true\nusers.dev.authorized_keys = ['{KEY}']\n")
    spec = write(tmp_path, "s.toml", "include = ['dev.toml']\nhardening.allow_baked_keys = false\n")
    spec_error(spec, has=["users.dev.authorized_keys"])


# --- the file itself ------------------------------------------------------------------------------


def test_invalid_toml_names_file_line_and_column(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'name = "a"\nname = "b"\n')
    spec_error(spec, has=[f"{spec}:", "invalid TOML", "line 2"])
    spec.write_text("[kernel\n")
    spec_error(spec, has=["invalid TOML", "line 1"])


def test_not_utf8(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_bytes(b"name = '\xff\xfe'\n")
    spec_error(spec, has=[f"{spec}:", "not UTF-8"])


def test_spec_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "d.toml").mkdir()
    spec_error(tmp_path / "d.toml", has=[f"{tmp_path / 'd.toml'}:", "directory"])


def test_spec_missing(tmp_path: Path) -> None:
    spec_error(tmp_path / "nope.toml", has=[f"{tmp_path / 'nope.toml'}:", "not found"])


def test_spec_under_a_file(tmp_path: Path) -> None:
    write(tmp_path, "f", "x")
    spec_error(tmp_path / "f/s.toml", has=["cannot read"])


def test_too_large_is_refused_and_the_limit_itself_is_fine(tmp_path: Path) -> None:
    spec = tmp_path / "s.toml"
    spec.write_bytes(b"#" * ((1 << 20) - 1) + b"\n")
    load(spec)
    spec.write_bytes(b"#" * (1 << 20) + b"\n")
    spec_error(spec, has=[f"{spec}:", "larger than 1 MiB"])


def test_special_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "s.toml"
    os.mkfifo(fifo)  # reading it would block forever
    spec_error(fifo, has=[f"{fifo}:", "not a regular file"])


@pytest.mark.parametrize("text", [
    "a = " + "[" * 5000 + "]" * 5000,
    "a = " + "{b = " * 5000 + "1" + "}" * 5000,
    "packages.include = " + "[" * 3000 + "]" * 3000,
    "[" + ".".join(["a"] * 3000) + "]\nx = 1",
    "[" + ".".join(["users"] * 2000) + "]\nx = 1",
])
def test_deep_nesting_is_a_spec_error(tmp_path: Path, text: str) -> None:
    spec = write(tmp_path, "s.toml", text + "\n")
    spec_error(spec, has=[f"{spec}:"])


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "")
    assert load(spec).spec.name == "image"
