"""Spec errors through the CLI: exit 2, exactly one stderr line "sealbox: error: ...", no traceback, nothing written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from spec_testlib import write

from sealbox.cli.main import main

BAD_SPECS = {
    "unknown-key": ("foo = 1\n", "unknown key 'foo'"),
    "bad-value": ("[hardening]\nfirewall_allow_tcp = [0]\n", "hardening.firewall_allow_tcp"),
    "invalid-toml": ("name = \n", "invalid TOML"),
    "missing-include": ("include = ['nosuch']\n", "no built-in module 'nosuch'"),
    "include-cycle": ("include = ['s.toml']\n", "include cycle"),
    "escaping-source": ("[[files]]\nsource = '../x'\ndest = '/x'\n", "escapes"),
    "baked-keys": ("[users.dev]\nauthorized_keys = ['ssh-ed25519 AAAA dev']\n", "allow_baked_keys"),
    "deep": ("a = " + "[" * 4000 + "]" * 4000 + "\n", "nested deeper"),
}


def _snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime) for p in root.rglob("*")}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_error_line(rc: int, out: str, err: str, *has: str) -> None:
    assert rc == 2, (rc, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sealbox: error: ")
    assert "Traceback" not in err
    for part in has:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("command", [["summary"], ["build", "--print-spec"]])
@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_spec_errors_are_one_line_exit_2_and_write_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str], case: str
) -> None:
    text, expected = BAD_SPECS[case]
    proj = tmp_path / "proj"
    spec = write(proj, "s.toml", text)
    monkeypatch.chdir(proj)
    monkeypatch.delenv("SEALBOX_DEBUG", raising=False)
    before = _snapshot(tmp_path)
    rc, out, err = _run([*command, "s.toml"], capsys)
    _assert_one_error_line(rc, out, err, "s.toml", expected)
    assert _snapshot(tmp_path) == before
    assert spec.read_text() == text


def test_unknown_profile_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write(tmp_path, "s.toml", "[profiles.dev]\n[profiles.tdx]\n")
    rc, out, err = _run(["summary", str(spec), "--profile", "dev,nope"], capsys)
    _assert_one_error_line(rc, out, err, "unknown profile 'nope'", "profiles defined: dev, tdx")


@pytest.mark.parametrize("kind", ["directory", "missing", "not-utf8", "too-large", "fifo"])
def test_unreadable_spec_files(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    spec = tmp_path / "s.toml"
    if kind == "directory":
        spec.mkdir()
    elif kind == "not-utf8":
        spec.write_bytes(b"\xff\xfe\x00")
    elif kind == "too-large":
        spec.write_bytes(b"#" * (2 << 20))
    elif kind == "fifo":
        os.mkfifo(spec)
    before = _snapshot(tmp_path)
    rc, out, err = _run(["summary", str(spec)], capsys)
    _assert_one_error_line(rc, out, err, str(spec))
    assert _snapshot(tmp_path) == before


def test_summary_prints_the_merged_spec_and_its_digest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "motd", "hi\n")
    spec = write(tmp_path, "s.toml", """\
        include = ["base"]
        name = "web"
        [[files]]
        source = "motd"
        dest = "/etc/motd"
        [profiles.dev]
        include = ["devtools"]
        """)
    rc, out, err = _run(["summary", str(spec), "-p", "dev"], capsys)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["profiles"] == ["dev"]
    assert doc["fragments"][0] == "built-in module base"
    assert doc["spec"]["name"] == "web" and doc["spec"]["files"][0]["source"] == "motd"
    assert len(doc["spec_digest"]) == 64
    rc, out2, _ = _run(["summary", str(spec), "-p", "dev"], capsys)
    assert json.loads(out2)["spec_digest"] == doc["spec_digest"]
    (tmp_path / "motd").write_text("bye\n")
    rc, out3, _ = _run(["summary", str(spec), "-p", "dev"], capsys)
    assert json.loads(out3)["spec_digest"] != doc["spec_digest"]


def test_summary_without_a_spec_is_the_default_image(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["summary"], capsys)
    assert rc == 0 and json.loads(out)["spec"]["name"] == "default"


def test_settings_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    from sealbox.spec.docs import settings_markdown, settings_rows

    rc, out, _ = _run(["settings"], capsys)
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()] == [r["key"] for r in settings_rows()]
    rc, out, _ = _run(["settings", "--markdown"], capsys)
    assert rc == 0 and out == settings_markdown()


@pytest.mark.parametrize("value", ["bogus", "bootstrap,nope", ","])
def test_unknown_reuse_kind_is_one_clear_line(value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _snapshot(tmp_path)
    rc, out, err = _run(["build", "--reuse", value, "--output", str(tmp_path / "out")], capsys)
    _assert_one_error_line(rc, out, err, "--reuse", "bootstrap, tree, kernel, modules, loader, segment")
    assert _snapshot(tmp_path) == before
