"""The CLI's sandbox verbs are the SDK's calls (one code path): what `sealbox run/ps/exec` hand to the SDK."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sealbox.cli.main import main
from sealbox.sdk import LocalHost, Sandbox


def test_run_is_sandbox_create(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def create(cls: type[Sandbox], image: Path, **kw: Any) -> Sandbox:
        seen.update(kw, image=image)
        return Sandbox(kw["name"], kw["host"], created={"name": kw["name"], "vmm": "qemu", "accel": "tcg", "address": "10.0.0.2",
                                                        "ready_s": 1.0, "run_s": 2.0})

    monkeypatch.setattr(Sandbox, "create", classmethod(create))
    rc = main(["run", str(tmp_path / "img"), "--name", "x", "--label", "team=rl", "--net", "nat", "--timeout", "30",
               "--state-dir", str(tmp_path / "state")])
    assert rc == 0 and "x is running (qemu/tcg, 10.0.0.2)" in capsys.readouterr().out
    assert (seen["labels"], seen["network"], seen["timeout_s"], seen["cpus"]) == ({"team": "rl"}, "nat", 30.0, 2)
    assert isinstance(seen["host"], LocalHost) and seen["host"].root == tmp_path / "state"
    assert main(["run", str(tmp_path / "img"), "--name", "x", "--label", "novalue", "--state-dir", str(tmp_path / "state")]) == 2
    assert "label 'novalue' is not KEY=VALUE" in capsys.readouterr().err


def test_exec_builds_its_line_with_the_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(LocalHost, "exec_replace", lambda self, name, remote, user, tty: seen.update(name=name, remote=remote, user=user))
    rc = main(["exec", "-e", "GREETING=it's $(x)", "-w", "/tmp/d", "box", "--state-dir", str(tmp_path), "--", "printf", "%s", "a b"])
    assert rc == 0
    assert seen == {"name": "box", "remote": "cd -- /tmp/d || exit 1; export GREETING='it'\"'\"'s $(x)'; printf %s 'a b'", "user": None}
    assert main(["exec", "-e", "BAD-NAME=1", "box", "--state-dir", str(tmp_path), "--", "true"]) == 2
    assert "environment variable name 'BAD-NAME' is invalid" in capsys.readouterr().err
    assert main(["exec", "box", "--state-dir", str(tmp_path), "--", "type", "cd"]) == 0
    assert seen["remote"] == "type cd"  # as before: a builtin works, nothing is prepended
