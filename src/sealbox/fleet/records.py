"""Where each fleet sandbox lives: one record per sandbox in Ray's key-value store (the GCS), namespace
`sealbox`, key `sandbox/<name>`, value JSON.

The record is what lets any process of the fleet find a sandbox's host, and what keeps a sandbox whose host
left the fleet visible (as `lost`) instead of silently missing. Its life:

    placing   a caller claimed the name (atomically: the put fails if the key exists) and is reserving capacity
    creating  capacity reserved on a host (`node`, placement group `pg`); that host's agent is booting it
    running   the agent finished the create: from here the agent owns it, whatever became of the caller
    lost      its host left the fleet (node dead); the reservation was released; `rm` forgets it

`caller` is the Ray job id of the process that asked for it (a caller that dies while the record is
placing/creating leaves nothing: the agents sweep such records); `held` says the sandbox lives only as long
as that caller (a Pool's members: `holder=` in the SDK).
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel

from sealbox.fleet.rayenv import NAMESPACE

PREFIX = b"sandbox/"
State = Literal["placing", "creating", "running", "lost"]


class Record(BaseModel):
    name: str
    state: State = "placing"
    caller: str = ""  # Ray job id (hex) of the creating process
    held: bool = False  # removed when the caller's job ends (pool members)
    node: str | None = None  # Ray node id of the host
    host: str | None = None  # the host's name (its sealbox.host label)
    pg: str | None = None  # name of the placement group holding its capacity
    cpus: int = 0
    memory_mib: int = 0
    labels: dict[str, str] = {}
    created_at: float = 0.0
    lost_at: float | None = None
    reason: str | None = None


def _kv() -> Any:
    import ray.experimental.internal_kv as kv

    return kv


def key(name: str) -> bytes:
    return PREFIX + name.encode()


def claim(rec: Record) -> bool:
    """Store a new record; False if one of that name exists (the name is taken in the fleet)."""
    rec.created_at = rec.created_at or time.time()
    existed = _kv()._internal_kv_put(key(rec.name), rec.model_dump_json().encode(), overwrite=False, namespace=NAMESPACE)
    return not existed


def put(rec: Record) -> None:
    _kv()._internal_kv_put(key(rec.name), rec.model_dump_json().encode(), overwrite=True, namespace=NAMESPACE)


def get(name: str) -> Record | None:
    raw = _kv()._internal_kv_get(key(name), namespace=NAMESPACE)
    return _parse(raw)


def delete(name: str) -> None:
    _kv()._internal_kv_del(key(name), namespace=NAMESPACE)


def all_records() -> dict[str, Record]:
    kv = _kv()
    out: dict[str, Record] = {}
    for k in kv._internal_kv_list(PREFIX, namespace=NAMESPACE):
        rec = _parse(kv._internal_kv_get(k, namespace=NAMESPACE))
        if rec is not None:
            out[rec.name] = rec
    return out


def _parse(raw: bytes | None) -> Record | None:
    if raw is None:
        return None
    try:
        return Record.model_validate(json.loads(raw))
    except ValueError:
        return None  # not ours to interpret; never crash a listing on it
