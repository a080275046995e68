"""Names that end up in paths, interface names, cgroup names and jailer ids must be safe everywhere."""

from __future__ import annotations

import re

from sealbox.errors import UsageError

# Firecracker's jailer accepts ids of ASCII letters, digits and '-' up to 64 chars; we use the same
# rule for sandbox names so a name is valid for every backend and every host resource derived from it,
# and a name starts with a letter or digit so that `sealbox rm NAME` never reads it as an option.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")


def check_sandbox_name(name: str, what: str = "sandbox name") -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise UsageError(
            f"invalid {what} {name!r}",
            hint="use 1-64 ASCII letters, digits or '-', and start with a letter or digit",
        )
    return name
