"""Spec merging: include order (depth first), profile order, later wins, list append + dedupe, users by name,
declared overrides, files[].source labels, canonical JSON and the spec digest."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from spec_testlib import load, write

from sealbox.spec import load as load_mod
from sealbox.spec import load_spec
from sealbox.spec.fields import merge_rule
from sealbox.spec.model import Distribution, Hardening, ImageBody, Kernel, Output, Packages, Strip, User


def test_includes_are_depth_first_in_include_order_then_the_file(tmp_path: Path) -> None:
    write(tmp_path, "d.toml", 'name = "d"\n[packages]\ninclude = ["pkg-d"]\n')
    write(tmp_path, "b.toml", 'include = ["d.toml"]\nname = "b"\n[packages]\ninclude = ["pkg-b"]\n')
    write(tmp_path, "c.toml", '[packages]\ninclude = ["pkg-c"]\n[kernel]\npackage = "linux-image-c"\n')
    spec = write(tmp_path, "a.toml", 'include = ["b.toml", "c.toml"]\n[packages]\ninclude = ["pkg-a"]\n')
    loaded = load(spec)
    assert loaded.fragments == ["d.toml", "b.toml", "c.toml", str(spec)]
    assert loaded.spec.packages.include == ["pkg-d", "pkg-b", "pkg-c", "pkg-a"]
    assert loaded.spec.name == "b"  # a and c do not set it; b came after d
    assert loaded.spec.kernel.package == "linux-image-c"


def test_builtin_module_comes_before_the_file_and_the_file_wins(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", """\
        include = ["base"]
        name = "mine"
        [hardening]
        firewall_allow_tcp = [22, 8080]
        [kernel]
        cmdline = ["quiet", "loglevel=3"]
        """)
    loaded = load(spec)
    assert loaded.fragments == ["built-in module base", str(spec)]
    assert loaded.spec.name == "mine"
    assert loaded.spec.hardening.firewall_allow_tcp == [22, 8080]  # 22 from base, deduplicated
    assert loaded.spec.kernel.cmdline == ["console=ttyS0", "quiet", "panic=-1", "systemd.show_status=error", "loglevel=3"]
    assert loaded.spec.packages.include[0] == "systemd"  # base's list first


PROFILES = """\
    name = "plain"
    [packages]
    include = ["pkg-file"]
    [profiles.one]
    name = "one"
    packages.include = ["pkg-one"]
    [profiles.two]
    name = "two"
    packages.include = ["pkg-two", "pkg-one"]
    kernel.cmdline = ["two"]
    """


@pytest.mark.parametrize("order", [["one", "two"], ["two", "one"]])
def test_profiles_apply_after_the_file_in_the_order_given(tmp_path: Path, order: list[str]) -> None:
    spec = write(tmp_path, "s.toml", PROFILES)
    loaded = load(spec, order)
    assert loaded.spec.name == order[-1]
    assert loaded.profiles == order
    assert loaded.fragments == [str(spec)] + [f"{spec} (profile {p})" for p in order]
    expected = ["pkg-file"] + (["pkg-one", "pkg-two"] if order[0] == "one" else ["pkg-two", "pkg-one"])
    assert loaded.spec.packages.include == expected
    assert loaded.spec.kernel.cmdline == ["two"]


def test_no_profile_selected_leaves_profiles_out(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, "s.toml", PROFILES))
    assert loaded.spec.name == "plain" and loaded.spec.packages.include == ["pkg-file"]


def test_profile_defined_in_an_include_and_extended_by_the_file(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", '[profiles.dev]\npackages.include = ["from-inc"]\nname = "inc"\n')
    spec = write(tmp_path, "s.toml", 'include = ["inc.toml"]\n[profiles.dev]\nname = "file"\npackages.include = ["from-file"]\n')
    loaded = load(spec, ["dev"])
    assert loaded.spec.packages.include == ["from-inc", "from-file"]
    assert loaded.spec.name == "file"
    assert loaded.fragments == ["inc.toml", str(spec), "inc.toml (profile dev)", f"{spec} (profile dev)"]


def test_profile_may_include_modules(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", '[profiles.dev]\ninclude = ["devtools"]\n')
    loaded = load(spec, ["dev"])
    assert "built-in module devtools" in loaded.fragments
    assert loaded.spec.hardening.console_getty is True
    assert "dev" in loaded.spec.users


def test_scalars_override_nested_and_defaults_fill_the_rest(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", '[distribution]\nsecurity = false\nsuite = "trixie"\n[output]\ncompression_level = 3\n')
    spec = write(tmp_path, "s.toml", 'include = ["inc.toml"]\n[distribution]\nsuite = "bookworm"\n')
    s = load(spec).spec
    assert s.distribution.suite == "bookworm" and s.distribution.security is False
    assert s.output.compression_level == 3 and s.output.ext4_extra_mib == 16
    assert s.distribution.components == ["main"]


def test_lists_append_and_drop_duplicates_keeping_first_position(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", '[services]\nmask = ["a.service", "b.service"]\n[distribution]\ncomponents = ["main", "contrib"]\n')
    spec = write(tmp_path, "s.toml", """\
        include = ["inc.toml"]
        [services]
        mask = ["c.service", "a.service", "c.service"]
        [distribution]
        components = ["non-free", "main"]
        """)
    s = load(spec).spec
    assert s.services.mask == ["a.service", "b.service", "c.service"]
    assert s.distribution.components == ["main", "contrib", "non-free"]


def test_users_merge_by_name(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", '[users.dev]\ngroups = ["sudo"]\nshell = "/bin/sh"\n[users.ops]\nuid = 2000\n')
    spec = write(tmp_path, "s.toml", """\
        include = ["inc.toml"]
        [users.dev]
        uid = 1500
        groups = ["adm", "sudo"]
        [users.qa]
        """)
    users = load(spec).spec.users
    assert sorted(users) == ["dev", "ops", "qa"]
    assert users["dev"] == User(uid=1500, groups=["sudo", "adm"], shell="/bin/sh")  # noqa: S604  # a login shell, not subprocess
    assert users["ops"].uid == 2000 and users["qa"] == User()


def test_output_formats_is_a_declared_override(tmp_path: Path) -> None:
    assert merge_rule(Output, "formats") == "override"
    spec = write(tmp_path, "s.toml", 'include = ["base"]\n[output]\nformats = ["ext4"]\n')
    assert load(spec).spec.output.formats == ["ext4"]
    # and a profile replaces it again
    spec = write(tmp_path, "t.toml", 'include = ["base"]\n[profiles.p]\noutput.formats = ["uki", "initrd"]\n')
    assert load(spec, ["p"]).spec.output.formats == ["uki", "initrd"]


def test_merge_rules_derive_from_the_declarations() -> None:
    assert merge_rule(Packages, "include") == "append"
    assert merge_rule(Kernel, "cmdline") == "append"
    assert merge_rule(Hardening, "firewall_allow_tcp") == "append"
    assert merge_rule(Distribution, "suite") == "override"
    assert merge_rule(Strip, "docs") == "override"
    assert merge_rule(ImageBody, "users") == "merge"
    assert merge_rule(ImageBody, "kernel") == "merge"
    assert merge_rule(ImageBody, "files") == "append"


def test_identical_file_entries_are_deduplicated_distinct_ones_kept(tmp_path: Path) -> None:
    write(tmp_path, "motd", "hi\n")
    entry = '[[files]]\nsource = "motd"\ndest = "/etc/motd"\n'
    write(tmp_path, "inc.toml", entry)
    spec = write(tmp_path, "s.toml", 'include = ["inc.toml"]\n' + entry + '[[files]]\nsource = "motd"\ndest = "/etc/issue"\n')
    assert [f.dest for f in load(spec).spec.files] == ["/etc/motd", "/etc/issue"]


def test_the_default_spec_and_its_profiles() -> None:
    plain = load_spec(None)
    assert plain.spec_path is None and plain.spec.name == "default"
    assert plain.fragments == ["built-in module base", "built-in default spec"]
    dev = load_spec(None, ["devtools"])
    assert dev.spec.hardening.allow_baked_keys and not dev.spec.strip.package_manager
    assert set(plain.spec.packages.include) < set(dev.spec.packages.include)
    tdx = load_spec(None, ["tdx"])
    assert tdx.spec.kernel.package == "linux-image-6.12-cloud-amd64"
    assert tdx.spec.kernel.modules[-1] == "tdx_guest" and "virtio_net" in tdx.spec.kernel.modules


# --- files[].source labels --------------------------------------------------------------------------


def test_relative_sources_are_labelled_relative_to_the_top_spec(tmp_path: Path) -> None:
    write(tmp_path, "sub/data/motd", "hello\n")
    write(tmp_path, "sub/inc.toml", '[[files]]\nsource = "data/motd"\ndest = "/etc/motd"\n')
    write(tmp_path, "top.txt", "t\n")
    spec = write(tmp_path, "s.toml", 'include = ["sub/inc.toml"]\n[[files]]\nsource = "top.txt"\ndest = "/top"\n')
    loaded = load(spec)
    assert [f.source for f in loaded.spec.files] == ["sub/data/motd", "top.txt"]
    assert loaded.resolve_source("sub/data/motd") == (tmp_path / "sub/data/motd").resolve()


def test_builtin_sources_are_labelled_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mods = tmp_path / "mods"
    write(mods, "extra.toml", '[[files]]\nsource = "extra-files/issue"\ndest = "/etc/issue"\n')
    write(mods, "extra-files/issue", "sealbox\n")
    monkeypatch.setattr(load_mod, "modules_dir", lambda: mods)
    spec = write(tmp_path, "proj/s.toml", 'include = ["extra"]\n')
    loaded = load(spec)
    assert loaded.spec.files[0].source == "builtin:extra-files/issue"
    assert loaded.resolve_source("builtin:extra-files/issue").read_text() == "sealbox\n"


def test_a_source_symlink_inside_the_directory_is_labelled_by_its_target(tmp_path: Path) -> None:
    write(tmp_path, "real/motd", "x")
    (tmp_path / "alias").symlink_to("real")
    spec = write(tmp_path, "s.toml", '[[files]]\nsource = "alias/motd"\ndest = "/etc/motd"\n')
    assert load(spec).spec.files[0].source == "real/motd"


# --- canonical JSON and the digest ------------------------------------------------------------------


def _tree(base: Path) -> Path:
    write(base, "files/motd", "hello\n")
    write(base, "files/tree/a.conf", "a=1\n")
    write(base, "files/tree/sub/b.conf", "b=2\n")
    (base / "files/tree/link").symlink_to("a.conf")
    return write(base, "s.toml", """\
        include = ["base"]
        name = "dig"
        [[files]]
        source = "files/motd"
        dest = "/etc/motd"
        [[files]]
        source = "files/tree"
        dest = "/etc/app"
        """)


def test_canonical_json_is_complete_and_round_trips(tmp_path: Path) -> None:
    loaded = load(_tree(tmp_path))
    canon = loaded.canonical()
    assert json.loads(json.dumps(canon)) == canon
    assert set(canon) == set(ImageBody.model_fields)
    assert canon["files"][1] == {"source": "files/tree", "dest": "/etc/app", "mode": None, "owner": "root", "group": "root"}
    assert type(loaded.spec).model_validate(canon) == loaded.spec


def test_digest_is_stable_for_the_same_inputs_and_location_independent(tmp_path: Path) -> None:
    spec = _tree(tmp_path / "one")
    first = load(spec).digest()
    assert load(spec).digest() == first
    shutil.copytree(tmp_path / "one", tmp_path / "two", symlinks=True)
    assert load(tmp_path / "two/s.toml").digest() == first
    # formatting, comments and key order do not matter; only the merged meaning does
    text = (tmp_path / "one/s.toml").read_text()
    (tmp_path / "two/s.toml").write_text('# a comment\nname = "dig"   \n' + text.replace('name = "dig"\n', ""))
    assert load(tmp_path / "two/s.toml").digest() == first


@pytest.mark.parametrize("change", [
    "content", "new-file", "removed-file", "exec-bit", "symlink-target", "empty-dir", "renamed", "spec-setting",
])
def test_digest_changes_when_anything_copied_in_changes(tmp_path: Path, change: str) -> None:
    spec = _tree(tmp_path)
    before = load(spec).digest()
    tree = tmp_path / "files/tree"
    if change == "content":
        (tmp_path / "files/motd").write_text("hellO\n")
    elif change == "new-file":
        write(tree, "sub/c.conf", "")
    elif change == "removed-file":
        (tree / "sub/b.conf").unlink()
    elif change == "exec-bit":
        os.chmod(tree / "a.conf", 0o755)
    elif change == "symlink-target":
        (tree / "link").unlink()
        (tree / "link").symlink_to("sub/b.conf")
    elif change == "empty-dir":  # copied into the image as a directory, so it must count
        (tree / "empty").mkdir()
    elif change == "renamed":
        (tree / "sub/b.conf").rename(tree / "sub/b2.conf")
    elif change == "spec-setting":
        spec.write_text(spec.read_text().replace('name = "dig"', 'name = "dig2"'))
    assert load(spec).digest() != before


def test_digest_encoding_is_unambiguous(tmp_path: Path) -> None:
    """Two different trees must not hash alike by shifting bytes between a file's content and the next name."""
    one, two = tmp_path / "one", tmp_path / "two"
    for base in (one, two):
        write(base, "s.toml", '[[files]]\nsource = "d"\ndest = "/d"\n')
    write(one, "d/a", "X")
    write(one, "d/b", "Y")
    os.chmod(one / "d/a", 0o644)
    os.chmod(one / "d/b", 0o644)
    write(two, "d/a", "X\0" + oct(0o100644 & 0o7777) + "\0d/b\0Y")
    os.chmod(two / "d/a", 0o644)
    assert load(one / "s.toml").digest() != load(two / "s.toml").digest()


def test_digest_tells_a_file_from_a_symlink_with_the_same_text(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for base in (one, two):
        write(base, "s.toml", '[[files]]\nsource = "d"\ndest = "/d"\n')
    write(one, "d/x", "target")
    os.chmod(one / "d/x", 0o777)
    (two / "d").mkdir()
    (two / "d/x").symlink_to("target")
    assert load(one / "s.toml").digest() != load(two / "s.toml").digest()


def test_digest_of_an_unreadable_or_vanished_source_is_a_spec_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.errors import SpecError

    loaded = load(_tree(tmp_path))
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self.name == "a.conf":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(SpecError, match=r"files\[1\].source 'files/tree': cannot read: Permission denied: .*a.conf"):
        loaded.digest()
    monkeypatch.undo()
    shutil.rmtree(tmp_path / "files/tree")
    with pytest.raises(SpecError, match=r"files\[1\].source 'files/tree': cannot read"):
        loaded.digest()
