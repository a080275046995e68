"""Sandbox labels: free-form metadata kept in the record (ps/inspect show them, `Sandbox.list(labels=)` filters).

Keys are plain words (sealbox itself uses the `sealbox.` prefix, e.g. sealbox.pool), values printable text.
Standard library only: `sealbox ps --label` parses them, and ps must start without pydantic.
"""

from __future__ import annotations

import re

from sealbox.errors import UsageError

LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")
LABEL_VALUE_MAX = 256
LABELS_MAX = 64


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Labels as given, or a one-line UsageError naming the bad key/value."""
    if len(labels) > LABELS_MAX:
        raise UsageError(f"{len(labels)} labels given; at most {LABELS_MAX} are kept", hint="drop some labels")
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.fullmatch(key):
            raise UsageError(f"label key {key!r} is invalid", hint="use 1-63 letters, digits, '.', '_', '/', '-', starting with a letter or digit")
        if not isinstance(value, str) or len(value) > LABEL_VALUE_MAX or not value.isprintable():
            raise UsageError(f"label {key}={value!r} is invalid", hint=f"values are printable text of at most {LABEL_VALUE_MAX} characters")
    return dict(labels)


def parse_labels(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """['k=v', ...] (the CLI's --label) -> {k: v}; a later key wins."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"label {item!r} is not KEY=VALUE", hint="e.g. --label team=rl")
        out[key] = value
    return check_labels(out)
