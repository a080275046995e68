"""Small helpers shared by CLI modules: output formatting and option parsing."""

from __future__ import annotations

import json
import sys
from typing import Any

import click


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
