"""bob-netguard's verifier against hand-written `nft -j list ruleset` documents (shaped as nft 1.0.6 prints them), and
its pid checks and nft calls with a fake root and a fake runner. The real nft is the integration test's."""

from __future__ import annotations

import copy
import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from bobguest import guest_root, load

ng = load("bob_netguard")
PORT = 27017


def chain(name: str, hook: str, table: str = "sealbox_container", family: str = "inet", type_: str = "filter") -> Any:
    return {"chain": {"family": family, "table": table, "name": name, "handle": 1, "type": type_, "hook": hook,
                      "prio": -300, "policy": "accept"}}


def rule(chain_name: str, expr: list[Any], table: str = "sealbox_container") -> Any:
    return {"rule": {"family": "inet", "table": table, "chain": chain_name, "handle": 3, "expr": expr}}


L4 = {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}}
SPORT = {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "sport"}}, "right": PORT}}
DROP_EXPR = [L4, SPORT, {"counter": {"packets": 0, "bytes": 0}}, {"drop": None}]


def listed(*items: Any) -> dict[str, Any]:
    return {"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
                         {"table": {"family": "inet", "name": "sealbox_container", "handle": 1}}, *items]}


GOOD = listed(chain("output", "output"), rule("output", DROP_EXPR), chain("forward", "forward"), rule("forward", DROP_EXPR))


def test_the_loaded_document_is_what_the_verifier_accepts() -> None:
    # the document `apply` loads, turned into what `nft -j list ruleset` would print for it
    items = [c["add"] for c in ng.ruleset(PORT)["nftables"][1:] if "add" in c]
    assert ng.verify({"nftables": items}, PORT) == []
    assert ng.verify(GOOD, PORT) == []


def test_per_protocol_rules_count_together() -> None:
    tcp = [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": PORT}}, {"drop": None}]
    udp = [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "udp"}}, SPORT, {"drop": None}]
    doc = listed(chain("o", "output"), rule("o", tcp), rule("o", udp), chain("f", "forward"), rule("f", DROP_EXPR))
    assert ng.verify(doc, PORT) == []


@pytest.mark.parametrize("what, doc, missing", [
    ("no rules at all", listed(), ["tcp/udp source-port 27017 drop in the output", "forward"]),
    ("forward chain missing", listed(chain("output", "output"), rule("output", DROP_EXPR)), ["forward hook"]),
    ("another port", listed(chain("o", "output"), rule("o", [L4, {**SPORT, "match": {**SPORT["match"], "right": 27018}},
                                                               {"drop": None}])), ["output hook"]),
    ("udp only", listed(chain("o", "output"), rule("o", [{**L4, "match": {**L4["match"], "right": "udp"}}, SPORT,
                                                         {"drop": None}])), ["no tcp source-port 27017 drop in the output"]),
    ("accepted before the drop", listed(chain("o", "output"), rule("o", [{"accept": None}]), rule("o", DROP_EXPR)),
     ["output hook"]),
    ("a jump before the drop", listed(chain("o", "output"), rule("o", [{"jump": {"target": "x"}}]), rule("o", DROP_EXPR)),
     ["output hook"]),
    ("a narrowing match", listed(chain("o", "output"), rule("o", [{"match": {"op": "==", "left": {"meta": {"key": "oifname"}},
                                                                             "right": "lo"}}, *DROP_EXPR])), ["output hook"]),
    ("counted, not dropped", listed(chain("o", "output"), rule("o", [L4, SPORT, {"counter": None}, {"accept": None}])),
     ["output hook"]),
    ("a regular chain", listed({"chain": {"family": "inet", "table": "sealbox_container", "name": "o", "handle": 1}},
                               rule("o", DROP_EXPR)), ["output hook"]),
    ("a dormant table", {"nftables": [{"table": {"family": "inet", "name": "sealbox_container", "handle": 1, "flags": "t"}},
                                      *GOOD["nftables"][2:]]}, ["output hook", "forward hook"]),
    ("chains of a table never listed", {"nftables": [i for i in GOOD["nftables"] if "table" not in i]}, ["output hook"]),
    ("the ip family only", listed(chain("o", "output", family="ip"), {"rule": {**rule("o", DROP_EXPR)["rule"], "family": "ip"}}),
     ["output hook"]),
    ("a port given as a string", listed(chain("o", "output"), rule("o", [L4, {"match": {**SPORT["match"], "right": "27017"}},
                                                                          {"drop": None}])), ["output hook"]),
])
def test_what_is_missing_is_named(what: str, doc: Any, missing: list[str]) -> None:
    got = ng.verify(doc, PORT)
    assert got, f"{what}: accepted"
    for text in missing:
        assert any(text in line for line in got), f"{what}: {got}"


@pytest.mark.parametrize("doc", [None, [], {"nftables": "x"}, {"nftables": [1, "a", {"rule": 5}, {"chain": {"family": "inet"}},
                                                                               {"rule": {"family": "inet", "table": 1}}]},
                                 {"nftables": [chain("o", "output"), rule("o", "not a list")]},
                                 {"nftables": [chain("o", "output"), rule("o", [[], {"match": None}, {"drop": None}])]}])
def test_hostile_documents_are_refused_not_raised(doc: Any) -> None:
    assert ng.verify(doc, PORT)


def test_removing_any_one_rule_is_detected() -> None:
    for i, item in enumerate(GOOD["nftables"]):
        if "rule" in item:
            doc = copy.deepcopy(GOOD)
            del doc["nftables"][i]
            assert ng.verify(doc, PORT), f"without item {i} still accepted"


def owner_of(fd: int) -> int:
    """Stands in for the nsfs ioctls (the fake namespaces are plain files): their owner."""
    return os.fstat(fd).st_uid


class FakeGuest:
    """A fake root with a pidfile and /proc/PID/ns/net (regular files: their inodes stand for namespaces)."""

    def __init__(self, base: Path, pid: int = 4242, own_netns: bool = False) -> None:
        self.root = guest_root(base)
        cfg = self.root / "usr/lib/sealbox/bob/config.json"
        assert json.loads(cfg.read_text())["input_only_udp_port"] == PORT
        (self.root / "run/sealbox-bob-work").mkdir(parents=True)
        (self.root / ng.PIDFILE).write_text(f"{pid}\n")
        (self.root / "proc/self/ns").mkdir(parents=True)
        (self.root / "proc/self/ns/net").write_text("guest")
        (self.root / f"proc/{pid}/ns").mkdir(parents=True)
        if own_netns:
            os.link(self.root / "proc/self/ns/net", self.root / f"proc/{pid}/ns/net")
        else:
            (self.root / f"proc/{pid}/ns/net").write_text("container")
        self.listing: Any = GOOD
        self.calls: list[tuple[list[str], bytes | None]] = []
        self.rc = 0

    def run(self, argv: list[str], stdin: bytes | None, fds: tuple[int, ...]) -> tuple[int, bytes]:
        assert len(fds) == 1 and argv[:3] == ["nsenter", f"--net=/proc/self/fd/{fds[0]}", "--"]
        assert os.fstat(fds[0]).st_ino == (self.root / "proc/4242/ns/net").stat().st_ino  # the checked namespace
        self.calls.append((argv[3:], stdin))
        return self.rc, json.dumps(self.listing).encode() if argv[-1] == "ruleset" else b""

    def guard(self) -> Any:
        return ng.Guard(self.root, run=self.run, user=pwd.getpwuid(os.getuid()).pw_name, owner_of=owner_of)


def test_apply_loads_then_reads_back(tmp_path: Path) -> None:
    g = FakeGuest(tmp_path)
    assert "loaded and verified" in g.guard().apply()
    (load_argv, doc), (list_argv, _) = g.calls
    assert load_argv == ["nft", "-j", "-f", "-"] and json.loads(doc or b"") == ng.ruleset(PORT)
    assert list_argv == ["nft", "-j", "list", "ruleset"]
    g.listing = listed()  # loaded, yet not there (e.g. nft lied or something removed them at once)
    with pytest.raises(ng.Failed, match="lacks"):
        g.guard().apply()


def test_verify_fails_closed(tmp_path: Path) -> None:
    g = FakeGuest(tmp_path)
    assert "present" in g.guard().verify()
    g.listing = listed(chain("output", "output"), rule("output", DROP_EXPR))
    with pytest.raises(ng.Failed, match="forward hook"):
        g.guard().verify()
    g.listing, g.rc = GOOD, 1
    with pytest.raises(ng.Failed, match="could not be read"):
        g.guard().verify()


@pytest.mark.parametrize("pidtext", ["", "1", "-5", "abc", "4243"])
def test_no_container_pid_no_verdict(tmp_path: Path, pidtext: str) -> None:
    g = FakeGuest(tmp_path)
    (g.root / ng.PIDFILE).write_text(pidtext)
    with pytest.raises(ng.Failed, match="not running|is gone"):
        g.guard().verify()
    assert g.calls == []


def test_the_guests_own_namespace_or_another_users_process_is_refused(tmp_path: Path) -> None:
    g = FakeGuest(tmp_path / "a", own_netns=True)
    with pytest.raises(ng.Failed, match="not the searcher's container"):
        g.guard().verify()
    g = FakeGuest(tmp_path / "b")
    other = next(p.pw_name for p in pwd.getpwall() if p.pw_uid != os.getuid())
    with pytest.raises(ng.Failed, match="not the searcher's container"):
        ng.Guard(g.root, run=g.run, user=other, owner_of=owner_of).verify()
    assert g.calls == []


def test_apply_waits_for_the_container_then_gives_up(tmp_path: Path) -> None:
    g = FakeGuest(tmp_path)
    pidfile = g.root / ng.PIDFILE
    pidfile.unlink()
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s
        if now[0] >= 3:
            pidfile.write_text("4242\n")  # podman wrote it three seconds in

    guard = ng.Guard(g.root, run=g.run, user=pwd.getpwuid(os.getuid()).pw_name, owner_of=owner_of,
                     clock=lambda: now[0], sleep=sleep)
    assert "loaded and verified" in guard.apply(wait=120) and now[0] == 3
    pidfile.unlink()
    now[0] = 0.0
    guard.sleep = lambda s: now.__setitem__(0, now[0] + s)
    with pytest.raises(ng.Failed, match="not running"):
        guard.apply(wait=10)
    assert now[0] == 10
