"""A `removed` record (`rm` of a lost sandbox, records.py): hidden from lookups and listings unless asked for, and
it does not hold the name — a claim replaces it, a claim over any other record fails. Ray's key-value store is
replaced by a dictionary with its put-if-absent semantics."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from sealbox.fleet import records
from sealbox.fleet.records import Record


@pytest.fixture
def kv(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bytes]:
    store: dict[bytes, bytes] = {}

    def put(k: bytes, v: bytes, overwrite: bool = True, namespace: Any = None) -> bool:
        existed = k in store
        if overwrite or not existed:
            store[k] = v
        return existed

    fake = SimpleNamespace(
        _internal_kv_put=put,
        _internal_kv_get=lambda k, namespace=None: store.get(k),
        _internal_kv_del=lambda k, namespace=None: store.pop(k, None),
        _internal_kv_list=lambda prefix, namespace=None: [k for k in store if k.startswith(prefix)],
    )
    monkeypatch.setattr(records, "_kv", lambda: fake)
    return store


def test_removed_is_hidden_and_gives_the_name_back(kv: dict[bytes, bytes]) -> None:
    assert records.claim(Record(name="a", state="lost", node="n1", host="h1"))
    assert not records.claim(Record(name="a", caller="j2"))  # taken
    records.forget(records.get("a"))  # type: ignore[arg-type]
    assert records.get("a") is None and records.all_records() == {}
    assert records.get("a", removed=True).host == "h1"  # type: ignore[union-attr]
    assert set(records.all_records(removed=True)) == {"a"}
    assert records.claim(Record(name="a", caller="j2"))  # the name is free again
    rec = records.get("a")
    assert rec is not None and (rec.state, rec.caller, rec.host) == ("placing", "j2", None)
    assert not records.claim(Record(name="a", caller="j3"))
