"""Python packages that only one command needs are optional extras: importing one that is missing is a one-line
error naming the package and the extra that brings it, not a traceback at start-up."""

from __future__ import annotations

import importlib
from types import ModuleType

from sealbox.errors import ToolError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` (from the `sealbox[extra]` extra) or raise a ToolError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ToolError(
            f"{purpose} needs the Python module {module!r}, which is not installed",
            hint=f"install the optional extra: .venv/bin/pip install 'sealbox[{extra}]' (scripts/setup.sh installs it)",
        ) from None
