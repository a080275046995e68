"""The read-only verbs on existing sandboxes: ps, inspect, logs — the ones a user runs most, so they start fast.

They read records through recordview.py (no pydantic unless a record is not in the shape sealbox writes) and never
take a sandbox's lock, so they keep working while a long `run` holds it. Only `inspect` of a running sandbox loads
its VMM backend, to ask the VMM itself.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealbox.errors import SandboxError
from sealbox.sandbox import recordview
from sealbox.sandbox import status as st
from sealbox.util.names import check_sandbox_name

if TYPE_CHECKING:
    from sealbox.sandbox.layout import StateLayout

SECRET_KEYS = ("client_key_openssh",)  # never printed by inspect


def load(layout: StateLayout, name: str) -> st.Record:
    check_sandbox_name(name)
    return recordview.load(layout, name)


def ps(layout: StateLayout, *, all_: bool = False) -> list[st.PsRow]:
    rows = []
    for name in layout.names():
        try:
            rows.append(st.row(recordview.load(layout, name)))
        except SandboxError as e:
            rows.append(st.corrupt_row(name, e.message))
    return rows if all_ else [r for r in rows if r.status in st.ACTIVE]


def _redact(obj: Any) -> Any:
    """Secrets never leave through inspect: the keys older records carried, and any private key text."""
    if isinstance(obj, dict):
        return {k: ("<redacted>" if k in SECRET_KEYS else _redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redact(v) for v in obj]
    if isinstance(obj, str) and "PRIVATE KEY" in obj:
        return "<redacted>"
    return obj


def inspect(layout: StateLayout, name: str) -> dict[str, Any]:
    record = load(layout, name)
    status = st.derive(record)
    dump: dict[str, Any] = record.model_dump(mode="json")
    out: dict[str, Any] = _redact(dump)
    out["derived_status"] = status
    if status == "exited":
        out["exit_reason"] = st.exit_reason(record)
    out["sandbox_dir"] = str(layout.sandbox_dir(name))
    if status == "running":
        from sealbox.sandbox.control import backend_for
        from sealbox.sandbox.state import SandboxRecord

        try:  # the backends take the model; the view holds the same record
            full = record if isinstance(record, SandboxRecord) else SandboxRecord.model_validate(dump)
            out["vmm_view"] = _redact(backend_for(full).inspect(full))
        except Exception as e:  # noqa: BLE001 - the VMM's own view is best effort
            out["vmm_view"] = {"error": " ".join(str(e).split()) or type(e).__name__}
    return out


def console_path(layout: StateLayout, name: str) -> Path:
    return layout.console_log(name)


def follow_logs(layout: StateLayout, name: str, *, follow: bool, poll: float = 0.25,
                max_seconds: float | None = None) -> Iterator[bytes]:
    """Console log chunks; with `follow`, keep going until the VMM exits (then drain), Ctrl-C, the
    sandbox is removed, or `max_seconds` (tests) passes. Each wait is one bounded sleep."""
    record = load(layout, name)
    path = console_path(layout, name)
    if not path.exists() and not follow:
        return
    offset = 0
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while True:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while chunk := f.read(64 * 1024):
                    offset += len(chunk)
                    yield chunk
        except FileNotFoundError:
            if not follow or not layout.exists(name):
                return
        if not follow:
            return
        try:
            record = recordview.load(layout, name)
        except SandboxError:
            return  # removed meanwhile
        if st.derive(record) not in st.ACTIVE:
            follow = False  # one more pass drains what the VMM wrote before it exited
            continue
        if deadline is not None and time.monotonic() >= deadline:
            return
        time.sleep(poll)
