"""Small helpers shared by CLI modules: output formatting and option parsing."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from sealbox.spec.load import LoadedSpec


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True, default=str))


def split_profiles(values: tuple[str, ...]) -> list[str]:
    """--profile a,b --profile c -> [a, b, c] (order kept, empty items dropped)."""
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in v.split(",") if p.strip()]
    return out


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def colour_allowed(stream: Any) -> bool:
    """Escape codes for colour only on a terminal, and never with NO_COLOR set to anything (no-color.org)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


_SGR = re.compile(rb"\x1b\[[0-9;:]*m")
_PARTIAL = re.compile(rb"\x1b(\[[0-9;:]*)?$")


class SgrFilter:
    """Drops colour/bold escape sequences (SGR) from a byte stream, also when one is split across chunks."""

    def __init__(self) -> None:
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk
        m = _PARTIAL.search(data[-64:])  # an unfinished sequence at the end waits for the next chunk
        cut = len(data) - (len(m.group(0)) if m else 0)
        self._held = data[cut:]
        return _SGR.sub(b"", data[:cut])

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held


def warn(msg: str) -> None:
    click.echo(f"sealbox: warning: {msg}", err=True)


def load_spec_warned(spec: Path | None, profiles: list[str]) -> LoadedSpec:
    """load_spec, with its warnings (e.g. a profile shadowing a built-in one) shown on stderr."""
    from sealbox.spec.load import load_spec

    loaded = load_spec(spec, profiles)
    for w in loaded.warnings:
        warn(w)
    return loaded
