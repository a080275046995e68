"""What other fleet processes report is hostile input: a record in Ray's KV store can be written by any
member of the fleet, and an agent's answers carry what its host (and the guests on it) made. Every parser
here takes any object and either returns a well-formed value or raises one SandboxError; it never crashes
with another exception, never lets a malformed value through, and never passes control characters on to a
terminal. No Ray needed."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sealbox.errors import NotFound, ResourceExhausted, SandboxError
from sealbox.fleet import records, wire
from sealbox.fleet.records import Record

GOOD = Record(name="sb-1", state="running", caller="01000000", node="ab" * 28, host="host0", pg="sealbox:sb-1", cpus=1,
              memory_mib=256, labels={"run": "x"}, created_at=1.0)

# ---- records --------------------------------------------------------------------------------------------


def test_a_record_round_trips() -> None:
    assert records.parse(records.key("sb-1"), GOOD.model_dump_json().encode()) == GOOD


def _raw(**change: Any) -> bytes:
    d = json.loads(GOOD.model_dump_json())
    d.update(change)
    return json.dumps(d).encode()


@pytest.mark.parametrize("raw", [
    None, b"", b"\xff\xfe", b"{", b"[]", b"null", b"5", b'"sb-1"',
    b"[" * 100_000,  # nesting deep enough for RecursionError in json
    b'{"name": "sb-1", "x": "' + b"a" * 100_000 + b'"}',  # oversized
    _raw(name=5), _raw(state="bogus"), _raw(cpus=-1), _raw(memory_mib=-5), _raw(labels={"a": 1}), _raw(labels=[1]),
    _raw(name="../../etc"), _raw(name="sb-1\x1b[2J"), _raw(name="other"),  # not the key's name
    _raw(node="x\n"), _raw(pg="a" * 10_000), _raw(created_at="never"),
])
def test_a_malformed_record_is_ignored(raw: bytes | None) -> None:
    assert records.parse(records.key("sb-1"), raw) is None


def test_a_record_under_a_foreign_key_is_ignored() -> None:
    assert records.parse(b"sandbox/\xff", GOOD.model_dump_json().encode()) is None


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=512))
def test_any_bytes_give_a_record_or_none(raw: bytes) -> None:
    rec = records.parse(records.key("sb-1"), raw)
    assert rec is None or rec.name == "sb-1"


# ---- an agent's answers ---------------------------------------------------------------------------------


def test_an_error_answer_is_raised_as_its_own_class_with_clean_text() -> None:
    with pytest.raises(NotFound) as e:
        wire.check({"error": "NotFound", "message": "no sandbox \x1b[2Jnamed x\n", "hint": "try\x07 again"})
    assert e.value.message == "no sandbox ?[2Jnamed x?" and e.value.hint == "try? again"
    with pytest.raises(ResourceExhausted):
        wire.check({"error": "ResourceExhausted", "message": "full"})


@pytest.mark.parametrize("res", [
    {"error": "KeyboardInterrupt", "message": "x"},  # not one of ours: a plain SandboxError
    {"error": "NotFound"}, {"error": 5, "message": "x"}, {"error": "NotFound", "message": b"bytes"},
    {"error": "NotFound", "message": "m" * 100_000},
])
def test_a_malformed_error_answer_is_one_sandbox_error(res: dict[str, Any]) -> None:
    with pytest.raises(SandboxError) as e:
        wire.check(res)
    assert len(e.value.message) <= wire.MAX_TEXT + 100


def test_a_pump_answer() -> None:
    p = wire.pump({"out": b"o", "err": b"", "exit": None})
    assert (p.out, p.err, p.exit) == (b"o", b"", None)
    assert wire.pump({"out": b"", "err": b"e", "exit": 3}).exit == 3
    assert wire.pump({"out": b"", "err": b"", "exit": -9}).exit == -9


@pytest.mark.parametrize("res", [
    None, [], "x", {}, {"out": "text", "err": b"", "exit": None}, {"out": b"", "err": None, "exit": None},
    {"out": b"", "err": b"", "exit": True}, {"out": b"", "err": b"", "exit": "3"}, {"out": b"", "err": b"", "exit": 1 << 40},
    {"out": b"", "err": b"", "exit": 3.5}, {"out": b"x" * (wire.MAX_PUMP + 1), "err": b"", "exit": None},
])
def test_a_malformed_pump_answer_is_refused(res: Any) -> None:
    with pytest.raises(SandboxError):
        wire.pump(res)


def test_a_row() -> None:
    row = wire.row({"name": "sb-1", "status": "running", "cpus": 1, "labels": {"a": "b"}, "error": "bad\x1b]0;title\x07"}, "host0")
    assert (row.name, row.status, row.cpus, row.labels, row.error) == ("sb-1", "running", 1, {"a": "b"}, "bad?]0;title?")


@pytest.mark.parametrize("obj", [
    None, [], {"status": "running"}, {"name": "../x", "status": "running"}, {"name": "sb\n", "status": "running"},
    {"name": "sb-1", "status": 5}, {"name": "sb-1", "status": "running", "labels": {"a": 1}},
    {"name": "sb-1", "status": "running", "cpus": "many"}, {"name": "sb-1", "status": "x" * 10_000},
])
def test_a_malformed_row_is_refused_naming_the_host(obj: Any) -> None:
    with pytest.raises(SandboxError, match="host0"):
        wire.row(obj, "host0")


def test_rows_skip_nothing_silently() -> None:
    with pytest.raises(SandboxError):
        wire.rows("not a list", "host0")
    with pytest.raises(SandboxError):
        wire.rows([{"name": "sb-1", "status": "running"}] * (wire.MAX_ROWS + 1), "host0")
    assert [r.name for r in wire.rows([{"name": "a", "status": "running"}, {"name": "b", "status": "exited"}], "h")] == ["a", "b"]


def test_a_logs_answer() -> None:
    lg = wire.logs({"data": b"\x1b[2J console", "size": 13, "status": "running"})
    assert (lg.data, lg.size, lg.status) == (b"\x1b[2J console", 13, "running")  # console bytes pass as they are


@pytest.mark.parametrize("res", [
    {"data": "text", "size": 1, "status": "running"}, {"data": b"", "size": -1, "status": "running"},
    {"data": b"abc", "size": 1, "status": "running"},  # more data than the log has
    {"data": b"", "size": 0, "status": "\x1b[2J"}, {"data": b"", "size": True, "status": "running"}, {},
])
def test_a_malformed_logs_answer_is_refused(res: Any) -> None:
    with pytest.raises(SandboxError):
        wire.logs(res)


def test_a_field() -> None:
    assert wire.field({"id": 3}, "id", int) == 3
    for res in (None, {}, {"id": "3"}, {"id": True}):
        with pytest.raises(SandboxError, match="'id'"):
            wire.field(res, "id", int)


def test_a_hello() -> None:
    h = wire.hello({"node": "ab" * 28, "pid": 42, "host": "LocalHost('/x')", "started_at": 1.0,
                    "doctor": [{"name": "kvm", "status": "fail", "detail": "no\x1b[31m"}], "gc": {}, "adopted": ["sb-1"], "forgotten": []})
    assert (h.pid, h.adopted, h.doctor_failures()) == (42, ["sb-1"], ["kvm"])


@pytest.mark.parametrize("res", [
    None, {"pid": "42"}, {"node": "n", "pid": 42, "doctor": "ok", "adopted": []},
    {"node": "n", "pid": 42, "doctor": [], "adopted": ["../x"]}, {"node": "n", "pid": 42, "doctor": [{"name": 1}], "adopted": []},
])
def test_a_malformed_hello_is_refused(res: Any) -> None:
    with pytest.raises(SandboxError):
        wire.hello(res)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.sampled_from(
                        ["out", "err", "exit", "name", "status", "data", "size", "error", "message", "hint", "pid", "node",
                         "doctor", "adopted", "labels", "cpus"]), kids, max_size=6), max_leaves=20))
def test_any_answer_gives_a_value_or_one_sandbox_error(obj: Any) -> None:
    for parse in (wire.check, wire.pump, lambda o: wire.row(o, "h"), lambda o: wire.rows(o, "h"), wire.logs, wire.hello):
        with contextlib.suppress(SandboxError):
            parse(obj)
