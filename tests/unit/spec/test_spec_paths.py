"""Includes, profiles and files[].source: missing, cyclic, too deep, or escaping the spec's directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

from sealbox.spec import load as load_mod

# --- includes -------------------------------------------------------------------------------------


def test_missing_builtin_module_lists_the_builtin_ones(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "include = ['base', 'nosuch']\n")
    spec_error(spec, has=[f"{spec}:", "include[1]", "'nosuch'", "built-in modules: azure, base, bob, default, devtools, gcp, gui, persistent, tdx"])


@pytest.mark.parametrize("name", ["nosuch.toml", "sub/nosuch.toml", "sub/nosuch"])
def test_missing_include_path(tmp_path: Path, name: str) -> None:
    spec = write(tmp_path, "s.toml", f"include = ['{name}']\n")
    spec_error(spec, has=[f"{spec}:", "include[0]", repr(name), "not found"])


def test_include_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sub.toml").mkdir()
    spec = write(tmp_path, "s.toml", "include = ['sub.toml']\n")
    spec_error(spec, has=[f"{spec}:", "include[0]", "'sub.toml'", "not a regular file"])


@pytest.mark.parametrize(("toml", "key", "shown"), [
    ("include = 'base'", "include", "'base'"),
    ("include = [1]", "include[0]", "1"),
    ("include = [['base']]", "include[0]", "['base']"),
    ("include = ['']", "include[0]", "''"),
    ("[profiles.p]\ninclude = [true]", "profiles.p.include[0]", "True"),
])
def test_include_of_the_wrong_type(tmp_path: Path, toml: str, key: str, shown: str) -> None:
    spec = write(tmp_path, "s.toml", toml + "\n")
    spec_error(spec, has=[f"{spec}", key, shown])


@pytest.mark.parametrize("name", ["../x.toml", "sub/../../x.toml", "/etc/x.toml", "link.toml"])
def test_include_escaping_the_spec_directory(tmp_path: Path, name: str) -> None:
    write(tmp_path, "x.toml", "")
    (tmp_path / "etc").mkdir()
    proj = tmp_path / "proj"
    write(proj, "sub/y.toml", "")
    (proj / "link.toml").symlink_to(tmp_path / "x.toml")
    spec = write(proj, "s.toml", f"include = ['{name}']\n")
    spec_error(spec, has=[f"{spec}:", "include[0]", repr(name), "escapes"])


def test_include_in_a_subdirectory_cannot_reach_back_up(tmp_path: Path) -> None:
    write(tmp_path, "common.toml", "")
    write(tmp_path, "sub/inc.toml", "include = ['../common.toml']\n")
    spec = write(tmp_path, "s.toml", "include = ['sub/inc.toml']\n")
    spec_error(spec, has=["sub/inc.toml:", "include[0]", "'../common.toml'", "escapes"])


def test_include_cycle_between_two_files_names_the_chain(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", "include = ['a.toml']\n")
    spec = write(tmp_path, "a.toml", "include = ['b.toml']\n")
    text = spec_error(spec, has=["include cycle", "a.toml -> b.toml -> a.toml", "b.toml: include[0]", "'a.toml'"])
    assert text.index("b.toml:") < text.index("include cycle")


def test_self_include(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "include = ['s.toml']\n")
    spec_error(spec, has=[f"{spec}: include[0]", "'s.toml'", "include cycle", "s.toml -> s.toml"])


def test_self_include_from_a_profile(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "[profiles.p]\ninclude = ['s.toml']\n")
    spec_error(spec, has=["profiles.p.include[0]", "include cycle"])


def test_diamond_includes_are_not_a_cycle(tmp_path: Path) -> None:
    write(tmp_path, "d.toml", "packages.include = ['pkg-d']\n")
    write(tmp_path, "b.toml", "include = ['d.toml']\n")
    write(tmp_path, "c.toml", "include = ['d.toml']\n")
    spec = write(tmp_path, "a.toml", "include = ['b.toml', 'c.toml']\n")
    assert load(spec).spec.packages.include == ["pkg-d"]


def test_include_chain_depth_limit(tmp_path: Path) -> None:
    depth = load_mod.MAX_INCLUDE_DEPTH
    for i in range(depth + 1):
        write(tmp_path, f"m{i}.toml", f"include = ['m{i + 1}.toml']\n" if i < depth else "name = 'deep'\n")
    spec_error(tmp_path / "m0.toml", has=[f"m{depth - 1}.toml: include[0]", f"'m{depth}.toml'", f"deeper than {depth}"])
    write(tmp_path, f"m{depth - 1}.toml", "name = 'deep'\n")  # one level less is fine
    assert load(tmp_path / "m0.toml").spec.name == "deep"


def test_error_inside_an_included_file_names_that_file(tmp_path: Path) -> None:
    write(tmp_path, "sub/inc.toml", "[kernel]\nmodules = ['bad name']\n")
    spec = write(tmp_path, "s.toml", "include = ['sub/inc.toml']\n")
    spec_error(spec, has=["sub/inc.toml: kernel.modules", "'bad name'"])
    write(tmp_path, "sub/inc.toml", "name = \n")
    spec_error(spec, has=["sub/inc.toml: invalid TOML"])


# --- profiles -------------------------------------------------------------------------------------


def test_unknown_profile_lists_defined_ones_including_included(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", "[profiles.from-inc]\n")
    spec = write(tmp_path, "s.toml", "include = ['inc.toml']\n[profiles.b]\n[profiles.a]\n")
    spec_error(spec, ["a", "zz"], has=[f"{spec}:", "unknown profile 'zz'", "profiles defined: a, b, from-inc"])


def test_unknown_profile_when_none_defined(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "")
    spec_error(spec, ["dev"], has=["unknown profile 'dev'", "profiles defined: none"])


def test_unknown_profile_for_the_default_spec() -> None:
    spec_error(None, ["nope"], has=["built-in default spec", "'nope'", "azure, devtools, gcp, gui, persistent, tdx"])


@pytest.mark.parametrize(("toml", "key"), [
    ("[profiles.a.profiles.b]\n", "profiles.a.profiles"),
    ("profiles = 1\n", "profiles"),
    ("profiles = [1]\n", "profiles"),
    ("profiles = {a = 1}\n", "profiles.a"),
])
def test_malformed_profiles(tmp_path: Path, toml: str, key: str) -> None:
    spec = write(tmp_path, "s.toml", toml)
    spec_error(spec, ["a"], has=[f"{spec}: {key}:"])


# --- files[].source -------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["../outside.txt", "sub/../../outside.txt", "/etc/hostname", "link", "dirlink/f"])
def test_source_escaping_the_spec_directory(tmp_path: Path, source: str) -> None:
    write(tmp_path, "outside.txt", "x")
    write(tmp_path, "elsewhere/f", "x")
    proj = tmp_path / "proj"
    (proj / "sub").mkdir(parents=True)
    (proj / "link").symlink_to(tmp_path / "outside.txt")
    (proj / "dirlink").symlink_to(tmp_path / "elsewhere")
    spec = write(proj, "s.toml", f"[[files]]\nsource = '{source}'\ndest = '/x'\n")
    spec_error(spec, has=[f"{spec}:", "files[0].source", repr(source), "escapes"])


def test_source_missing(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "[[files]]\nsource = 'a'\ndest = '/a'\n[[files]]\nsource = 'nope'\ndest = '/x'\n")
    write(tmp_path, "a", "")
    spec_error(spec, has=[f"{spec}:", "files[1].source", "'nope'", "does not exist"])


def test_dangling_symlink_source_is_missing(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to("gone")
    spec = write(tmp_path, "s.toml", "[[files]]\nsource = 'dangling'\ndest = '/x'\n")
    spec_error(spec, has=["files[0].source", "'dangling'", "does not exist"])


@pytest.mark.parametrize("source", ["", "a\u0000b"])
def test_source_empty_or_nul(tmp_path: Path, source: str) -> None:
    shown = source.replace("\0", "\\u0000")
    spec = write(tmp_path, "s.toml", f'[[files]]\nsource = "{shown}"\ndest = "/x"\n')
    spec_error(spec, has=[f"{spec}:", "files[0].source", repr(source)])


def test_source_in_a_profile_names_the_profile_key(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "[[profiles.p.files]]\nsource = '../x'\ndest = '/x'\n")
    spec_error(spec, ["p"], has=[f"{spec} (profile p):", "profiles.p.files[0].source", "'../x'"])


def test_special_file_in_a_source_tree_is_refused_at_load(tmp_path: Path) -> None:
    write(tmp_path, "tree/ok", "")
    os.mkfifo(tmp_path / "tree/pipe")
    spec = write(tmp_path, "s.toml", "[[files]]\nsource = 'tree'\ndest = '/opt/t'\n")
    spec_error(spec, has=[f"{spec}:", "files[0].source", "'pipe'", "not a regular file, directory or symlink"])


def test_symlinks_inside_a_source_tree_may_point_anywhere(tmp_path: Path) -> None:
    """They are copied as symlinks (resolved inside the image), never followed on the host."""
    write(tmp_path, "tree/ok", "")
    (tmp_path / "tree/etc-link").symlink_to("/etc/hostname")
    spec = write(tmp_path, "s.toml", "[[files]]\nsource = 'tree'\ndest = '/opt/t'\n")
    loaded = load(spec)
    assert loaded.spec.files[0].source == "tree"
    assert len(loaded.digest()) == 64


def test_source_dot_is_the_spec_directory(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "[[files]]\nsource = '.'\ndest = '/opt/spec'\n")
    assert load(spec).spec.files[0].source == "."
