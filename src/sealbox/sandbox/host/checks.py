"""The result type of every host prerequisite check (`sealbox doctor`, backend preflight)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class Check(BaseModel):
    name: str  # short id, e.g. "kvm", "cgroups", "firecracker"
    status: Literal["ok", "warn", "fail", "skip"]
    detail: str  # what was found, one line
    fix: str | None = None  # how to fix it, one line (for warn/fail)
