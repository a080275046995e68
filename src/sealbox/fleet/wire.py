"""What other fleet processes report, parsed as hostile input (a host agent's answers carry what its host and
the guests on it made, and any fleet member can write to Ray's key-value store).

Every parser takes any object and returns a well-formed value or raises one SandboxError naming what was
wrong; text that reaches a terminal (messages, statuses, names) has its control characters replaced. Console
and command output stay bytes, as they are (the SDK decodes them like a local command's).

The limit of this: Ray itself moves these values between processes with pickle, so a compromised member of
the Ray cluster can do more than send bad data (Ray's own security model trusts every node of a cluster).
What is checked here is what an honest agent may still relay from a hostile guest or a broken host.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sealbox.errors import NotFound, ResourceExhausted, SandboxError, SandboxTimeout, SealboxError, UsageError
from sealbox.sandbox.status import PsRow
from sealbox.util.names import NAME_RE

MAX_TEXT = 2000  # characters of a message or hint shown to the user
MAX_PUMP = 1024 * 1024  # bytes per stream in one pump answer (execs.MAX_PUMP)
MAX_ROWS = 100_000  # sandboxes one host may list
MAX_LOG_CHUNK = 4 << 20  # bytes of console in one logs answer (the agent's default max_bytes)
ERRORS: dict[str, type[SealboxError]] = {c.__name__: c for c in (SealboxError, SandboxError, NotFound, SandboxTimeout,
                                                                  ResourceExhausted, UsageError)}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WORD = re.compile(r"^[A-Za-z0-9_.:/=-]{0,256}$")  # statuses, node ids, doctor check names: no spaces, no controls


def text(value: str, limit: int = MAX_TEXT) -> str:
    """`value` without control characters (each becomes '?'), cut at `limit` characters."""
    out = _CONTROL.sub("?", value)
    return out if len(out) <= limit else out[:limit] + "…"


def _int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def check(res: Any) -> Any:
    """An answer, or the error it carries raised as the same sealbox exception (a malformed one as SandboxError)."""
    if not (isinstance(res, dict) and "error" in res):
        return res
    kind, msg, hint = res.get("error"), res.get("message"), res.get("hint")
    if not isinstance(msg, str) or not isinstance(hint, str | None):
        raise SandboxError("the host agent answered with a malformed error")
    cls = ERRORS.get(kind, SandboxError) if isinstance(kind, str) else SandboxError
    raise cls(text(msg), hint=None if hint is None else text(hint))


def field(res: Any, key: str, kind: type) -> Any:
    """res[key] of an (error-checked) answer, if it is a `kind` (a bool is no int here)."""
    check(res)
    value = res.get(key) if isinstance(res, dict) else None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(f"the host agent's answer has no valid {key!r}")
    return value


class Pump(BaseModel):
    out: bytes
    err: bytes
    exit: int | None


def pump(res: Any) -> Pump:
    """A command's output so far and, once it ended, its exit code (-255..255: a signal is negative)."""
    check(res)
    if not isinstance(res, dict):
        raise SandboxError("the host agent answered a command's output with something else")
    out, err, code = res.get("out"), res.get("err"), res.get("exit", ...)
    if not (isinstance(out, bytes) and isinstance(err, bytes) and len(out) <= MAX_PUMP and len(err) <= MAX_PUMP):
        raise SandboxError("the host agent's command output is malformed (not bytes, or too much at once)")
    if not (code is None or _int(code, -255, 255)):
        raise SandboxError(f"the host agent's exit code {text(repr(code), 40)} is not an exit code")
    return Pump(out=out, err=err, exit=code)


def row(obj: Any, host: str) -> PsRow:
    """One sandbox as a host lists it; names must be sandbox names, the text fields lose their control characters."""
    try:
        r = PsRow.model_validate(obj)  # every field type-checked (pydantic)
    except ValidationError as e:
        raise SandboxError(f"host {host} listed a malformed sandbox: {text(str(e.errors()[0]['loc']), 100)}") from None
    if not NAME_RE.fullmatch(r.name) or not _WORD.fullmatch(r.status):
        raise SandboxError(f"host {host} listed a sandbox with a malformed name or status: {text(repr(r.name), 80)}")
    clean = dataclasses.replace(r, vmm=text(r.vmm), accel=text(r.accel), address=text(r.address), image=text(r.image))
    clean.error = None if r.error is None else text(r.error)
    clean.reason = None if r.reason is None else text(r.reason)
    return clean


def rows(obj: Any, host: str) -> list[PsRow]:
    if not isinstance(obj, list) or len(obj) > MAX_ROWS:
        raise SandboxError(f"host {host} answered its sandbox list with something else")
    return [row(o, host) for o in obj]


class Logs(BaseModel):
    data: bytes
    size: int
    status: str


def logs(res: Any) -> Logs:
    """A piece of a console log: `data` (console bytes, as the guest wrote them), the log's `size`, the VMM's status."""
    check(res)
    if not isinstance(res, dict):
        raise SandboxError("the host agent answered a log read with something else")
    data, size, status = res.get("data"), res.get("size"), res.get("status")
    if not (isinstance(data, bytes) and len(data) <= MAX_LOG_CHUNK and _int(size, len(data), 1 << 50)):
        raise SandboxError("the host agent's log piece is malformed")
    if not (isinstance(status, str) and _WORD.fullmatch(status)):
        raise SandboxError("the host agent's sandbox status is malformed")
    return Logs(data=data, size=size, status=status)


class DoctorCheck(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=_WORD.pattern)
    status: str = Field(pattern=_WORD.pattern)


class Hello(BaseModel):
    """An agent introducing itself (`sealbox fleet status`)."""

    model_config = ConfigDict(extra="ignore")
    node: str = Field(pattern=_WORD.pattern)
    pid: int = Field(ge=1, le=1 << 22)
    started_at: float = 0.0
    doctor: list[DoctorCheck] = Field(max_length=1000)
    adopted: list[str] = Field(max_length=MAX_ROWS)
    forgotten: list[str] = Field(default_factory=list, max_length=MAX_ROWS)
    undone: list[str] = Field(default_factory=list, max_length=MAX_ROWS)  # unfinished creates it removed at its start

    def doctor_failures(self) -> list[str]:
        return [c.name for c in self.doctor if c.status == "fail"]


def hello(res: Any) -> Hello:
    try:
        h = Hello.model_validate(res, strict=True)
    except ValidationError as e:
        raise SandboxError(f"the host agent introduced itself with malformed data: {text(str(e.errors()[0]['loc']), 100)}") from None
    if not all(NAME_RE.fullmatch(n) for n in (*h.adopted, *h.forgotten, *h.undone)):
        raise SandboxError("the host agent named a sandbox with a malformed name")
    return h
