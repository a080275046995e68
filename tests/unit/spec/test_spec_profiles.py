"""Profiles: looked up in the spec, then its includes, then among the built-in modules marked as profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
from spec_testlib import load, spec_error, write

from sealbox.cli.main import main
from sealbox.spec.load import builtin_modules, builtin_profiles, modules_dir


def test_builtin_profiles_are_devtools_and_tdx_and_not_base() -> None:
    assert builtin_profiles() == ["azure", "devtools", "gcp", "gui", "persistent", "tdx"]
    assert {"base", "default", "devtools", "gui", "tdx"} <= set(builtin_modules())


def test_a_builtin_profile_applies_to_any_spec(tmp_path: Path) -> None:
    spec = write(tmp_path, "my.toml", 'include = ["base"]\nname = "my"\n')
    loaded = load(spec, ["devtools"])
    assert "dev" in loaded.spec.users and "curl" in loaded.spec.packages.include
    assert loaded.fragments[-1] == "built-in profile devtools"
    assert loaded.warnings == []
    tdx = load(spec, ["tdx"]).spec
    assert tdx.kernel.package == "linux-image-6.12-cloud-amd64" and "tdx_guest" in tdx.kernel.modules
    assert "uki" in tdx.output.formats


def test_the_readme_example_edge_azure_then_devtools(tmp_path: Path) -> None:
    write(tmp_path, "files/app", "#!/bin/sh\n")
    spec = write(tmp_path, "bob.toml", """\
        include = ["base"]
        name = "bob"
        [packages]
        include = ["curl", "ca-certificates"]
        [[files]]
        source = "files/app"
        dest = "/opt/app"
        [hardening]
        firewall_allow_tcp = [8080]
        [profiles.edge]
        kernel.package = "linux-image-6.12-cloud-amd64"
        """)
    loaded = load(spec, ["edge", "azure", "devtools"])
    assert loaded.profiles == ["edge", "azure", "devtools"] and loaded.warnings == []  # no profile shadows a built-in
    assert loaded.spec.kernel.package == "linux-image-6.12-cloud-amd64"
    assert "dev" in loaded.spec.users and "hv_netvsc" in loaded.spec.kernel.modules
    assert loaded.fragments[-3:] == [f"{spec} (profile edge)", "built-in profile azure", "built-in profile devtools"]


def test_the_spec_wins_then_its_includes_then_the_builtins(tmp_path: Path) -> None:
    write(tmp_path, "inc.toml", '[profiles.tdx]\nname = "from-include"\n')
    spec = write(tmp_path, "s.toml", 'include = ["base", "inc.toml"]\nname = "s"\n')
    loaded = load(spec, ["tdx"])
    assert loaded.spec.name == "from-include"  # the include's profile, not the built-in one
    assert loaded.spec.kernel.package == "linux-image-cloud-amd64"
    assert len(loaded.warnings) == 1 and "shadows the built-in profile 'tdx'" in loaded.warnings[0]
    own = write(tmp_path, "own.toml", 'include = ["base"]\nname = "own"\n[profiles.devtools]\npackages.include = ["jq"]\n')
    loaded = load(own, ["devtools"])
    assert "dev" not in loaded.spec.users and "jq" in loaded.spec.packages.include
    assert len(loaded.warnings) == 1 and str(own) in loaded.warnings[0] and "\n" not in loaded.warnings[0]


def test_a_shadowing_profile_that_is_not_selected_warns_nothing(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["base"]\n[profiles.devtools]\npackages.include = ["jq"]\n')
    assert load(spec).warnings == []


def test_base_is_not_a_profile(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["base"]\n[profiles.dev]\n')
    spec_error(spec, ["base"],
               has=["unknown profile 'base'", "profiles defined: dev", "built-in profiles: azure, devtools, gcp, gui, persistent, tdx"])


def test_only_builtin_modules_may_be_marked_as_profiles(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", "profile = true\n")
    spec_error(spec, has=[str(spec), "profile: only built-in modules can be marked as profiles"])


def test_builtin_profile_modules_still_work_as_includes(tmp_path: Path) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["base", "devtools"]\n')
    assert "dev" in load(spec).spec.users


def test_the_default_spec_takes_both_builtin_profiles_without_warnings() -> None:
    loaded = load(None, ["devtools", "tdx"])  # type: ignore[arg-type]
    assert loaded.warnings == [] and "dev" in loaded.spec.users and "tdx_guest" in loaded.spec.kernel.modules
    assert loaded.spec.name == "default"
    assert not (modules_dir() / "default.toml").read_text().count("[profiles.")  # no copies that would shadow


def test_the_cli_prints_the_shadowing_warning_on_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "s.toml", 'include = ["base"]\n[profiles.tdx]\nname = "mine"\n')
    assert main(["summary", str(spec), "-p", "tdx"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sealbox: warning: ") and "tdx" in err[0]


def test_settings_lists_include_and_profiles_with_their_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["settings"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "include" in rows and "profiles.<name>" in rows
    assert "depth first" in rows["include"]
    assert "azure, devtools, gcp, gui, persistent, tdx" in rows["profiles.<name>"] and "includes" in rows["profiles.<name>"]
