"""recordview.py reads records without pydantic for ps/inspect/logs; the oracle is the model that writes them.

Records are written by the real writer (SandboxRecord + StateDir.save) with arbitrary JSON in their free-form
fields; the view must read every one of them itself (the fast path), hold exactly what the model reads back, and
give the same `ps` rows, `ps --json`, table and `inspect` output. Bytes that are not in the written shape (fields
missing, extra, of another JSON type, NaN, duplicate keys, ...) must either be refused by the view — the model then
reads them, with its own coercions and messages — or read to exactly what the model reads."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from sealbox.cli.main import main
from sealbox.sandbox import query, recordview, status
from sealbox.sandbox.state import SandboxRecord, StateDir
from sealbox.sandbox.steps import StepEntry, StepLog

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
LIVE = (4242, 9)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63) + 1, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
free_form = st.dictionaries(st.sampled_from(["cpus", "memory_mib", "labels", "backend", "accel", "pid", "start_time", "guest_ip",
                                             "name", "published", "dirs"]) | st.text(max_size=8), json_values, max_size=6)
opt_int = st.none() | st.integers(0, 2**31) | st.just(LIVE[0])
entries = st.builds(StepEntry, kind=st.sampled_from(["cgroup", "net.publish", "netns", "vmm"]) | st.text(max_size=8), params=free_form,
                    state=st.sampled_from(["planned", "done", "undone", "refused"]), outputs=free_form, error=st.none() | st.text(max_size=10))
records = st.builds(SandboxRecord, name=st.sampled_from(["a", "box-1", "z9"]),
                    status=st.sampled_from(["creating", "running", "stopped", "failed", "removing", "odd"]),
                    created_at=st.floats(0, 4e9), spec=free_form, image=free_form, network=free_form, vmm=free_form, guest=free_form,
                    steps=st.builds(StepLog, entries=st.lists(entries, max_size=3)), owner_pid=opt_int, owner_start=opt_int,
                    holder_pid=opt_int, holder_start=opt_int, error=st.none() | st.text(max_size=10))


def _text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)  # as inspect prints it


def alive(pid: int | None, start: int | None) -> bool:
    return pid == LIVE[0]


def test_the_view_knows_the_models_fields() -> None:
    """A field added to the model must be added to the view (else every new record takes the slow path)."""
    assert recordview.RECORD_FIELDS == tuple(SandboxRecord.model_fields)
    assert recordview.STEPLOG_FIELDS == tuple(StepLog.model_fields)
    assert recordview.ENTRY_FIELDS == tuple(StepEntry.model_fields)


@SETTINGS
@given(record=records)
def test_every_written_record_is_read_alike(record: SandboxRecord) -> None:
    data = (record.model_dump_json(indent=2) + "\n").encode()  # what StateDir.save writes
    model = SandboxRecord.model_validate_json(data)
    view = recordview.parse(data)  # no Unusual: a record sealbox wrote takes the fast path
    assert view.model_dump(mode="json") == model.model_dump(mode="json")
    assert _text(view.model_dump()) == _text(model.model_dump(mode="json"))
    for get in (status.derive, status.row):
        assert get(view, alive) == get(model, alive)
    row = status.row(view, alive)
    assert row.model_dump() == TypeAdapter(status.PsRow).dump_python(row)  # the fields, as pydantic sees them
    assert status.table([row], now=5e9) == status.table([status.row(model, alive)], now=5e9)


def _mutations(good: dict[str, Any]) -> list[bytes]:
    text = json.dumps(good)
    out = [text.replace('"version": 1', '"version": 1.0'), text.replace('"version": 1', '"version": true'),
           text.replace('"created_at": 5.0', '"created_at": 5'), text.replace('"created_at": 5.0', '"created_at": "5"'),
           text.replace('"created_at": 5.0', '"created_at": NaN'), text.replace('"created_at": 5.0', '"created_at": 1e400'),
           text.replace('"name": "n"', '"name": 7'), text.replace('{"version"', '{"name": "x", "version"'),
           text.replace('"cpus": 2', '"cpus": 99999999999999999999999'), text.replace('"cpus": 2', '"cpus": "\\ud800"'),
           text.replace('"cpus": 2', '"cpus": Infinity'), text.replace('"owner_pid": 4242', '"owner_pid": 4242.0'),
           text.replace('"owner_pid": 4242', '"owner_pid": "4242"'), text.replace('"state": "done"', '"state": null'),
           text.replace('"kind": "cgroup"', '"kind": "cgroup", "extra": 1'), text[:-1], text + "x", "\ufeff" + text, "[]", "null", ""]
    for key in good:
        out.append(json.dumps({k: v for k, v in good.items() if k != key}))  # a field missing (an older record)
        out.append(json.dumps({**good, key: None}))
        out.append(json.dumps({**good, key: [good[key]]}))
    out.append(json.dumps({**good, "later": 1}))  # a field from a newer sealbox
    return [t.encode() for t in out] + [text.encode("utf-16"), b"\xff" + text.encode()]


def test_a_record_not_in_the_written_shape_is_refused_or_read_as_the_model_reads_it() -> None:
    record = SandboxRecord(name="n", status="running", created_at=5.0, spec={"cpus": 2}, owner_pid=LIVE[0],
                           steps=StepLog(entries=[StepEntry(kind="cgroup", params={}, state="done", outputs={"dirs": []})]))
    good = record.model_dump(mode="json")
    assert recordview.parse(json.dumps(good).encode()).model_dump() == good
    refused = 0
    for data in _mutations(good):
        try:
            view = recordview.parse(data)
        except recordview.Unusual:
            refused += 1
            continue
        model = SandboxRecord.model_validate_json(data)  # accepted by the view: the model must read the same
        assert _text(view.model_dump()) == _text(model.model_dump(mode="json")), data  # as text: 5 == 5.0, "5" != "5.0"
    nullable = ("owner_pid", "owner_start", "holder_pid", "holder_start", "error")  # {**good, key: None}: still a written shape
    assert refused == len(_mutations(good)) - len(nullable)


@pytest.mark.parametrize("data", [b"{", b'{"name": 1}', b"[]", json.dumps({"name": "n", "created_at": "soon"}).encode()])
def test_a_corrupt_record_gets_the_models_own_message(tmp_path: Path, data: bytes) -> None:
    state = StateDir(tmp_path / "s")
    state.reserve(SandboxRecord(name="n", created_at=1.0))
    state.record_path("n").write_bytes(data)
    with pytest.raises(Exception) as model:
        state.load("n")
    with pytest.raises(Exception) as view:
        recordview.load(state, "n")
    assert (type(view.value), str(view.value)) == (type(model.value), str(model.value))
    with pytest.raises(ValidationError):
        SandboxRecord.model_validate_json(data)


def _state(root: Path) -> StateDir:
    """Sandboxes as sealbox leaves them: each status ps shows, labels, published ports, a console log."""
    state = StateDir(root)
    steps = [StepEntry(kind="net.publish", params={}, state="done", outputs={"published": ["127.0.0.1:8080->80/tcp"]}),
             StepEntry(kind="cgroup", params={"path": "/x"}, state="done", outputs={"dirs": [str(root / "no-cgroup")]})]
    now = time.time()
    for i, (name, st_, vmm) in enumerate([("up", "running", {"backend": "qemu", "accel": "tcg", "pid": 2**22 + 3, "start_time": 1}),
                                          ("off", "stopped", {"backend": "firecracker", "accel": "kvm"}),
                                          ("half", "creating", {}), ("bad", "failed", {"backend": "qemu"})]):
        r = SandboxRecord(name=name, status=st_, created_at=now - 4000 * i - 100, vmm=vmm, owner_pid=2**22 + 5, owner_start=3,
                          spec={"cpus": i + 1, "memory_mib": 256 * (i + 1), "labels": {"team": "a", "i": str(i)} if i % 2 else {}},
                          network={"guest_ip": f"10.54.0.{i + 2}", "netns": f"sealbox-{name}"}, image={"name": "default"},
                          guest={"client_key_openssh": "-----BEGIN OPENSSH PRIVATE KEY-----"}, error="boom" if st_ == "failed" else None)
        r.steps.entries += steps
        state.reserve(r)
    (state.sandbox_dir("off") / "console").mkdir()
    (state.sandbox_dir("off") / "console" / "console.log").write_bytes(b"hello\x1b[31m red\n")
    state.sandbox_dir("nothing-yet").mkdir()  # reserved, record not written yet
    return state


def _model_rows(state: StateDir, all_: bool) -> list[status.PsRow]:
    rows = [status.row(state.load(n)) for n in state.names()]
    return rows if all_ else [r for r in rows if r.status in status.ACTIVE]


@pytest.mark.parametrize("all_", [False, True])
def test_ps_output_is_the_models(capsys: pytest.CaptureFixture[str], tmp_path: Path, all_: bool) -> None:
    state = _state(tmp_path / "s")
    flags = ["--all"] if all_ else []
    assert main(["ps", *flags, "--json", "--state-dir", str(state.root)]) == 0
    got = capsys.readouterr().out
    rows = _model_rows(state, all_)
    want = [TypeAdapter(status.PsRow).dump_python(r) for r in rows]  # pydantic's dump of the same rows
    assert got == json.dumps(want, indent=2, sort_keys=True, default=str) + "\n"
    assert main(["ps", *flags, "--state-dir", str(state.root)]) == 0
    table = capsys.readouterr().out
    assert table == status.table(rows) + "\n"  # CREATED: whole seconds of age, the same within this test
    assert ("nothing-yet" in table) == all_ and ("team=a" in table) == all_


@pytest.mark.parametrize("name", ["up", "off", "half", "bad", "nothing-yet"])
def test_inspect_and_logs_output_is_the_models(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    state = _state(tmp_path / "s")
    assert main(["inspect", name, "--state-dir", str(state.root)]) == 0
    got = json.loads(capsys.readouterr().out)
    model = state.load(name)
    assert {k: v for k, v in got.items() if k not in ("derived_status", "exit_reason", "sandbox_dir")} == \
        query._redact(model.model_dump(mode="json"))
    assert got["derived_status"] == status.derive(model) and "PRIVATE KEY" not in json.dumps(got)
    assert main(["logs", name, "--state-dir", str(state.root)]) == 0
    assert capsys.readouterr().out == ("hello\x1b[31m red\n" if name == "off" else "")


def test_a_row_from_another_host_is_type_checked() -> None:
    """PsRow is plain data now; model_validate (a fleet client reads rows from another host) still checks each field."""
    row = status.PsRow(name="a", status="running", cpus=2, labels={"k": "v"}, ports=["127.0.0.1:1->2/tcp"])
    assert status.PsRow.model_validate(row.model_dump()) == row
    for bad in ({"name": "a"}, {**row.model_dump(), "cpus": "many"}, {**row.model_dump(), "labels": {"k": 1}}, ["a"]):
        with pytest.raises(ValidationError):
            status.PsRow.model_validate(bad)
