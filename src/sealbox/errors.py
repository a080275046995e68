"""Errors that reach the user as one clear line.

Every failure a user can cause or fix (bad spec, bad flag, missing tool, busy name) is raised as a
SealboxError subclass whose message names the file/key/value and the fix. The CLI prints it as
`sealbox: error: <message>` and exits non-zero; tracebacks are only shown with SEALBOX_DEBUG=1.
"""

from __future__ import annotations


class SealboxError(Exception):
    """A failure with a user-facing, one-line explanation."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = " ".join(message.split())  # always one line
        self.hint = " ".join(hint.split()) if hint else None
        super().__init__(self.message)

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class SpecError(SealboxError):
    """The image or sandbox specification is invalid (file, key, value and what is allowed)."""

    exit_code = 2


class UsageError(SealboxError):
    """A flag, name or path given on the command line is invalid."""

    exit_code = 2


class ToolError(SealboxError):
    """A host tool is missing or failed."""


class BuildError(SealboxError):
    """A build step failed; the message names the step."""


class SandboxError(SealboxError):
    """A sandbox command failed (state, host setup, VMM, guest)."""


class NotFound(SandboxError):
    """No such sandbox (or, from the SDK, no such path in the guest)."""


class SandboxTimeout(SandboxError, TimeoutError):
    """A bounded wait ran out: a guest not ready in time, a command past its timeout."""


class ResourceExhausted(SandboxError):
    """The host has no room for another sandbox (addresses, uids, ...): remove some or widen the range."""


class AttestError(SealboxError):
    """A quote, event log or policy could not be parsed or did not verify."""


class MeasureError(SealboxError):
    """An input to measurement prediction is malformed or missing."""
