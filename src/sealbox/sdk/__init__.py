"""The sealbox Python SDK: sandboxes as objects (Sandbox, AsyncSandbox, Pool) over the sandbox runtime.

Layering: sdk sits between sandbox/ (the runtime) and cli/ (which is built on it). Names are loaded on first
use, so `import sealbox.sdk` costs next to nothing until something is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sealbox.errors import NotFound, ResourceExhausted, SandboxError, SandboxTimeout, SealboxError, UsageError
    from sealbox.sdk.aio import AsyncCommandHandle, AsyncSandbox
    from sealbox.sdk.commands import CommandFailed, CommandHandle, CommandResult, CommandTimeout
    from sealbox.sdk.files import EntryInfo
    from sealbox.sdk.host import Host, LocalHost, SandboxInfo
    from sealbox.sdk.options import CreateOptions
    from sealbox.sdk.pool import Pool
    from sealbox.sdk.sandbox import Sandbox

EXPORTS = {
    "Sandbox": "sealbox.sdk.sandbox", "AsyncSandbox": "sealbox.sdk.aio", "AsyncCommandHandle": "sealbox.sdk.aio",
    "Pool": "sealbox.sdk.pool", "CommandResult": "sealbox.sdk.commands", "CommandHandle": "sealbox.sdk.commands",
    "CommandFailed": "sealbox.sdk.commands", "CommandTimeout": "sealbox.sdk.commands", "EntryInfo": "sealbox.sdk.files",
    "CreateOptions": "sealbox.sdk.options", "Host": "sealbox.sdk.host", "LocalHost": "sealbox.sdk.host",
    "SandboxInfo": "sealbox.sdk.host", "SealboxError": "sealbox.errors", "SandboxError": "sealbox.errors",
    "NotFound": "sealbox.errors", "SandboxTimeout": "sealbox.errors", "ResourceExhausted": "sealbox.errors",
    "UsageError": "sealbox.errors",
}
__all__ = [
    "AsyncCommandHandle", "AsyncSandbox", "CommandFailed", "CommandHandle", "CommandResult", "CommandTimeout", "CreateOptions",
    "EntryInfo", "Host", "LocalHost", "NotFound", "Pool", "ResourceExhausted", "Sandbox", "SandboxError", "SandboxInfo",
    "SandboxTimeout", "SealboxError", "UsageError",
]


def __getattr__(name: str) -> Any:
    module = EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sealbox.sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
