"""bob-node (modules/bob/bob_node.py): the slot for the operator's node service runs exactly the configured argv,
with a clean environment, or says the slot is empty."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bobguest import guest_root, load
from sealbox.spec.bob import Bob

bn = load("bob_node")


def _config(tmp_path: Path, command: list[str]) -> str:
    bob = Bob(enable=True, builder_bundle=["192.0.2.1:1"], builder_state_diff=["192.0.2.1:2"], workload="w.tar",
              node_command=command)
    return str(guest_root(tmp_path, bob=bob) / "usr/lib/sealbox/bob/config.json")


def test_the_configured_argv_is_executed_in_the_nodes_home_with_a_clean_environment(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(bn.os, "chdir", lambda d: seen.setdefault("cwd", d))
    monkeypatch.setenv("SECRET_OF_THE_UNIT", "x")
    argv = ["/usr/local/bin/node", "--datadir", "/persistent/node/chain", "--ipc", "/run/sealbox-bob-node/rpc.sock"]
    bn.main(["bob-node", _config(tmp_path, argv)], execve=lambda path, args, env: seen.update(path=path, args=args, env=env))
    assert seen == {"cwd": "/persistent/node", "path": argv[0], "args": argv,
                    "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/persistent/node", "NODE_IPC_DIR": "/run/sealbox-bob-node"}}


def test_an_empty_slot_says_so_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bn.main(["bob-node", _config(tmp_path, [])], execve=lambda *a: pytest.fail("nothing may run")) == 0
    assert "node slot is empty" in capsys.readouterr().err


def test_a_program_that_cannot_run_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bn.os, "chdir", lambda d: None)
    with pytest.raises(SystemExit, match="bob-node: /nonexistent/node cannot be run: No such file"):
        bn.main(["bob-node", _config(tmp_path, ["/nonexistent/node"])])


@pytest.mark.parametrize("content", ["not json", json.dumps({"node_command": "/bin/node"}), json.dumps({"node_command": [1]}), "[]"])
def test_a_damaged_config_is_refused_naming_the_file(tmp_path: Path, content: str) -> None:
    f = tmp_path / "config.json"
    f.write_text(content)
    with pytest.raises(SystemExit, match=str(f)):
        bn.command(str(f))
