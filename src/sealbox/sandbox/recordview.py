"""Reading a sandbox record without pydantic, for the read-only verbs (ps, inspect, logs: query.py).

Importing pydantic and building the record's schema costs more than the rest of `sealbox ps`, so a record is read
here with the standard library — but only a record in exactly the shape SandboxRecord writes (state.py): every
field present, each of its exact JSON type, nothing else, plain JSON values (no NaN, no duplicate keys, no lone
surrogates, no huge numbers). For such a record the model would change nothing, so the view holds what
`SandboxRecord.model_validate_json` would and dumps what its `model_dump(mode="json")` would (a test holds the two
to that). Anything else — an older record without a newer field, a hand-edited one, a corrupt one — is read by the
model itself (StateDir.load), so its coercions and its error messages stay the model's own.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sealbox.errors import NotFound

if TYPE_CHECKING:
    from sealbox.sandbox.layout import StateLayout
    from sealbox.sandbox.state import SandboxRecord

# the fields SandboxRecord, StepLog and StepEntry have (in their order); a unit test compares them with the models
RECORD_FIELDS = ("version", "name", "status", "created_at", "spec", "image", "network", "vmm", "guest", "steps",
                 "owner_pid", "owner_start", "holder_pid", "holder_start", "error")
STEPLOG_FIELDS = ("entries",)
ENTRY_FIELDS = ("kind", "params", "state", "outputs", "error")
_DICTS = ("spec", "image", "network", "vmm", "guest")
_OPT_INTS = ("owner_pid", "owner_start", "holder_pid", "holder_start")
_INT_LIMIT = 1 << 63  # beyond i64 the model's JSON parser may differ from json's: leave such a record to it


class Unusual(ValueError):
    """Not exactly the shape SandboxRecord writes: the model reads it."""


@dataclass
class EntryView:
    kind: str
    params: dict[str, Any]
    state: str
    outputs: dict[str, Any]
    error: str | None


@dataclass
class StepsView:
    entries: list[EntryView] = field(default_factory=list)


@dataclass
class RecordView:
    """A record as SandboxRecord would hold it: the same attributes, read-only use."""

    name: str
    created_at: float
    version: int = 1
    status: str = "creating"
    spec: dict[str, Any] = field(default_factory=dict)
    image: dict[str, Any] = field(default_factory=dict)
    network: dict[str, Any] = field(default_factory=dict)
    vmm: dict[str, Any] = field(default_factory=dict)
    guest: dict[str, Any] = field(default_factory=dict)
    steps: StepsView = field(default_factory=StepsView)
    owner_pid: int | None = None
    owner_start: int | None = None
    holder_pid: int | None = None
    holder_start: int | None = None
    error: str | None = None

    def model_dump(self, mode: str = "json") -> dict[str, Any]:
        """What SandboxRecord.model_dump(mode="json") gives for the same record (the values are JSON already)."""
        out = {k: getattr(self, k) for k in RECORD_FIELDS if k != "steps"}
        out["steps"] = {"entries": [{k: getattr(e, k) for k in ENTRY_FIELDS} for e in self.steps.entries]}
        copy: dict[str, Any] = json.loads(json.dumps(out))  # a deep copy: callers may change what they get
        return copy


def load(layout: StateLayout, name: str) -> RecordView | SandboxRecord:
    """The record of sandbox `name`, as StateDir.load gives it (the same errors: NotFound, SandboxError)."""
    path = layout.record_path(name)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if layout.sandbox_dir(name).is_dir():
            # reserved but never written: StateDir.load's stand-in, a failed create gc can remove
            return RecordView(name=name, status="failed", created_at=0.0, error="record missing")
        raise NotFound(f"no such sandbox: {name!r}", hint="see 'sealbox ps --all'") from None
    except OSError:
        data = b""  # unreadable: the model's reader says so in its own words
    try:
        return parse(data)
    except Unusual:
        from sealbox.sandbox.state import StateDir

        return StateDir(layout.root).load(name)


def parse(data: bytes) -> RecordView:
    """A record in exactly the written shape, or Unusual."""
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise Unusual(str(e)) from None
    rec = _exact(obj, RECORD_FIELDS)
    for key in ("name", "status"):
        _is(rec[key], str)
    _is(rec["version"], int)
    _is(rec["created_at"], float)
    if not math.isfinite(rec["created_at"]):
        raise Unusual("created_at")
    for key in _DICTS:
        _plain(_is(rec[key], dict))
    for key in _OPT_INTS:
        _optional(rec[key], int)
    _optional(rec["error"], str)
    entries = _is(_exact(rec["steps"], STEPLOG_FIELDS)["entries"], list)
    return RecordView(**{k: rec[k] for k in RECORD_FIELDS if k != "steps"}, steps=StepsView([_entry(e) for e in entries]))


def _entry(obj: Any) -> EntryView:
    e = _exact(obj, ENTRY_FIELDS)
    _is(e["kind"], str)
    _is(e["state"], str)
    _plain(_is(e["params"], dict))
    _plain(_is(e["outputs"], dict))
    _optional(e["error"], str)
    return EntryView(**e)


def _exact(obj: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if type(obj) is not dict or set(obj) != set(fields):
        raise Unusual("not the fields the model writes")
    return obj


def _is(value: Any, kind: type) -> Any:
    if type(value) is not kind:  # exact: a bool is no int here, an int no float (the model would convert them)
        raise Unusual(f"{value!r} is no {kind.__name__}")
    if isinstance(value, int) and not -_INT_LIMIT < value < _INT_LIMIT:
        raise Unusual("a huge number")
    return value


def _optional(value: Any, kind: type) -> None:
    if value is not None:
        _is(value, kind)


def _plain(value: Any) -> None:
    """Free-form values (dict[str, Any] fields): JSON that both parsers read alike."""
    if isinstance(value, dict):
        for k, v in value.items():
            _plain(k)
            _plain(v)
    elif isinstance(value, list):
        for v in value:
            _plain(v)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
            raise Unusual("a lone surrogate") from None
    elif type(value) is int:
        _is(value, int)
    elif isinstance(value, float) and not math.isfinite(value):
        raise Unusual("a number out of range")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise Unusual("a key given twice")
    return out


def _no_constant(name: str) -> Any:
    raise Unusual(f"{name} is no JSON")
