"""Small helpers shared by CLI modules: output formatting and option parsing."""

from __future__ import annotations

import json
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


def warn(msg: str) -> None:
    click.echo(f"sealbox: warning: {msg}", err=True)


def load_spec_warned(spec: Path | None, profiles: list[str]) -> LoadedSpec:
    """load_spec, with its warnings (e.g. a profile shadowing a built-in one) shown on stderr."""
    from sealbox.spec.load import load_spec

    loaded = load_spec(spec, profiles)
    for w in loaded.warnings:
        warn(w)
    return loaded
