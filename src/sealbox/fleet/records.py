"""Where each fleet sandbox lives: one record per sandbox in Ray's key-value store (the GCS), namespace
`sealbox`, key `sandbox/<name>`, value JSON.

The record is what lets any process of the fleet find a sandbox's host, and what keeps a sandbox whose host
left the fleet visible (as `lost`) instead of silently missing. Its life:

    placing   a caller claimed the name (atomically: the put fails if the key exists) and is reserving capacity
    creating  capacity reserved on a host (`node`, placement group `pg`); that host's agent is booting it
    running   the agent finished the create: from here the agent owns it, whatever became of the caller
    lost      its host left the fleet (node dead); the reservation was released; `rm` forgets it
    removed   `rm` of a lost sandbox: hidden from every listing and lookup, kept so that its host, if it comes
              back, removes the sandbox instead of re-adopting it; a new sandbox may take the name (a claim
              replaces it), and the returning host then removes its own (agent.py)

`caller` is the Ray job id of the process that asked for it (a caller that dies while the record is
placing/creating leaves nothing: the agents sweep such records); `held` says the sandbox lives only as long
as that caller (a Pool's members: `holder=` in the SDK).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from sealbox.fleet.rayenv import NAMESPACE
from sealbox.util.names import NAME_RE

PREFIX = b"sandbox/"
MAX_RECORD = 64 * 1024  # bytes: a record is a few hundred; anything bigger is not one of ours
State = Literal["placing", "creating", "running", "lost", "removed"]
_ID = r"^[A-Za-z0-9_.:/=-]{0,256}$"  # Ray ids, host names, placement group names: no spaces, no control characters


class Record(BaseModel):
    name: str = Field(pattern=NAME_RE.pattern)
    state: State = "placing"
    caller: str = Field("", pattern=_ID)  # Ray job id (hex) of the creating process
    held: bool = False  # removed when the caller's job ends (pool members)
    node: str | None = Field(None, pattern=_ID)  # Ray node id of the host
    host: str | None = Field(None, pattern=_ID)  # the host's name (its sealbox.host label)
    pg: str | None = Field(None, pattern=_ID)  # name of the placement group holding its capacity
    cpus: int = Field(0, ge=0, le=1 << 16)
    memory_mib: int = Field(0, ge=0, le=1 << 40)
    labels: dict[str, str] = Field(default_factory=dict, max_length=256)
    created_at: float = 0.0
    lost_at: float | None = None
    reason: str | None = Field(None, max_length=1000)


def _kv() -> Any:
    import ray.experimental.internal_kv as kv

    return kv


def key(name: str) -> bytes:
    return PREFIX + name.encode()


def claim(rec: Record) -> bool:
    """Store a new record; False if one of that name exists (the name is taken in the fleet). A `removed`
    record does not hold the name: it is replaced (of two claims racing for it, one wins)."""
    rec.created_at = rec.created_at or time.time()
    for _ in range(2):
        if not _kv()._internal_kv_put(key(rec.name), rec.model_dump_json().encode(), overwrite=False, namespace=NAMESPACE):
            return True
        old = get(rec.name, removed=True)
        if old is None or old.state != "removed":
            return False
        delete(rec.name)
    return False


def forget(rec: Record) -> None:
    """`rm` of a lost sandbox: its record becomes `removed` (see the module's doc)."""
    put(rec.model_copy(update={"state": "removed", "pg": None}))


def put(rec: Record) -> None:
    _kv()._internal_kv_put(key(rec.name), rec.model_dump_json().encode(), overwrite=True, namespace=NAMESPACE)


def get(name: str, *, removed: bool = False) -> Record | None:
    """The record of `name`; a `removed` one only if asked for."""
    rec = parse(key(name), _kv()._internal_kv_get(key(name), namespace=NAMESPACE))
    return rec if rec is None or removed or rec.state != "removed" else None


def delete(name: str) -> None:
    _kv()._internal_kv_del(key(name), namespace=NAMESPACE)


def all_records(*, removed: bool = False) -> dict[str, Record]:
    """Every record by name; `removed` ones only if asked for."""
    kv = _kv()
    out: dict[str, Record] = {}
    for k in kv._internal_kv_list(PREFIX, namespace=NAMESPACE):
        rec = parse(k, kv._internal_kv_get(k, namespace=NAMESPACE))
        if rec is not None and (removed or rec.state != "removed"):
            out[rec.name] = rec
    return out


def parse(k: bytes, raw: bytes | None) -> Record | None:
    """The record stored at key `k`, or None if it is not a well-formed record of that name (any member of
    the fleet can write here: a listing skips what it cannot trust instead of crashing or showing it)."""
    if raw is None or len(raw) > MAX_RECORD or not k.startswith(PREFIX):
        return None
    try:
        rec = Record.model_validate(json.loads(raw), strict=False)
    except (ValueError, RecursionError):  # JSON, UTF-8 and validation errors are ValueErrors
        return None
    return rec if key(rec.name) == k else None
