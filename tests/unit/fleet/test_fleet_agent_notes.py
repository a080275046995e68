"""The host agent's notes of creates in flight (agent.py: `fleet/creating/NAME` in the host's state dir): a note a
dead agent left is undone by the next one — the sandbox removed, its reservation and non-running record dropped —
unless the record says the create completed; a removal that fails keeps the note for the sweeper's next round.
Ray is not needed: the records and reservations are replaced by dictionaries here (integration tests use Ray)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from sealbox.errors import NotFound, SandboxError
from sealbox.fleet import agent as agent_mod
from sealbox.fleet.records import Record

NODE = "node-a"


class Host:
    def __init__(self, root: Path, fail: set[str] | None = None) -> None:
        self.root = root
        self.sandboxes = {"half", "done", "busy", "mine-now"}
        self.fail = fail or set()
        self.removed: list[str] = []

    def remove(self, name: str, *, force: bool = False) -> None:
        if name in self.fail:
            raise SandboxError(f"sandbox {name} is busy")
        if name not in self.sandboxes:
            raise NotFound(name)
        self.sandboxes.discard(name)
        self.removed.append(name)


@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    kv: dict[str, Record] = {}
    pgs: list[str] = []
    monkeypatch.setattr(agent_mod.records, "get", kv.get)
    monkeypatch.setattr(agent_mod.records, "delete", lambda name: kv.pop(name, None))
    monkeypatch.setattr(agent_mod.cluster, "remove_pg", lambda name: pgs.append(name) if name else None)
    return {"kv": kv, "pgs": pgs}


def agent(host: Host) -> agent_mod.HostAgent:
    a = object.__new__(agent_mod.HostAgent)  # without Ray: only what the notes need
    a.host, a.node_id, a.lock, a.creating = host, NODE, threading.Lock(), set()
    return a


def test_left_notes_are_undone_unless_the_create_completed(tmp_path: Path, fleet: dict[str, Any]) -> None:
    host = Host(tmp_path, fail={"busy"})
    a = agent(host)
    for name in ("half", "done", "busy", "gone", "running-here"):
        a._note(name, True)
    a.creating.add("running-here")  # a create of this agent, under way: not a dead one's
    fleet["kv"].update({
        "half": Record(name="half", state="creating", node=NODE, pg="sealbox:half"),
        "done": Record(name="done", state="running", node=NODE, pg="sealbox:done"),
        "busy": Record(name="busy", state="creating", node=NODE, pg="sealbox:busy"),
    })
    assert a._unfinished() == ["gone", "half"]
    assert host.removed == ["half"]  # "gone" had nothing left on the host; "done" completed; "busy" refused
    assert set(fleet["kv"]) == {"done", "busy"} and fleet["pgs"] == ["sealbox:half"]
    notes = tmp_path / "fleet" / "creating"
    assert sorted(p.name for p in notes.iterdir()) == ["busy", "running-here"]

    host.fail.clear()  # the host's own create process let go of it: the next round removes it
    assert a._unfinished() == ["busy"]
    assert "busy" not in fleet["kv"] and sorted(p.name for p in notes.iterdir()) == ["running-here"]


def test_a_record_now_another_hosts_is_left_alone(tmp_path: Path, fleet: dict[str, Any]) -> None:
    """The caller gave up and the name was claimed again, placed elsewhere: only this host's sandbox goes."""
    host = Host(tmp_path)
    a = agent(host)
    a._note("mine-now", True)
    fleet["kv"]["mine-now"] = Record(name="mine-now", state="creating", node="node-b", pg="sealbox:mine-now")
    assert a._unfinished() == ["mine-now"]
    assert host.removed == ["mine-now"] and "mine-now" in fleet["kv"] and fleet["pgs"] == []


def test_a_note_that_is_not_a_sandbox_name_is_ignored(tmp_path: Path, fleet: dict[str, Any]) -> None:
    host = Host(tmp_path)
    a = agent(host)
    notes = tmp_path / "fleet" / "creating"
    notes.mkdir(parents=True)
    (notes / "..bad name").touch()
    assert a._unfinished() == [] and host.removed == []
