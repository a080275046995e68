"""Where the Firecracker binaries are and how the backend is tuned (environment, with defaults)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sealbox.errors import UsageError

DEFAULT_CHROOT_BASE = Path("/srv/jailer")  # the jailer's own default (docs/jailer.md)
LogLevel = Literal["Error", "Warning", "Info", "Debug", "Trace", "Off"]

ENV = {
    "firecracker": "SEALBOX_FIRECRACKER",
    "jailer": "SEALBOX_JAILER",
    "firecracker_sha256": "SEALBOX_FIRECRACKER_SHA256",
    "jailer_sha256": "SEALBOX_JAILER_SHA256",
    "chroot_base": "SEALBOX_JAILER_CHROOT_BASE",
    "log_level": "SEALBOX_FIRECRACKER_LOG_LEVEL",
    "api_spec": "SEALBOX_FIRECRACKER_API_SPEC",
}


class FirecrackerSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    firecracker: Path | None = None  # explicit binary; None = look it up on PATH
    jailer: Path | None = None
    firecracker_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    jailer_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    chroot_base: Path = DEFAULT_CHROOT_BASE
    log_level: LogLevel = "Warning"
    api_spec: Path | None = None  # swagger file to validate generated configs against at run time
    start_timeout: float = Field(default=10.0, gt=0, le=300)  # jailer exit + API socket up
    api_timeout: float = Field(default=5.0, gt=0, le=120)  # one API request

    @field_validator("firecracker_sha256", "jailer_sha256", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @field_validator("chroot_base")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FirecrackerSettings:
        env = os.environ if env is None else env
        values = {field: env[var] for field, var in ENV.items() if env.get(var)}
        try:
            return cls(**values)
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "?"
            raise UsageError(
                f"invalid {ENV.get(field, field)}={values.get(field)!r}: {err['msg']}",
                hint="digests are 64 lower-case hex chars; paths absolute; log level one of Error/Warning/Info/Debug/Trace/Off",
            ) from None

    # binaries ----------------------------------------------------------------------------------
    def _find(self, explicit: Path | None, name: str) -> Path | None:
        if explicit is not None:
            return explicit if explicit.is_file() else None
        found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/local/bin:/usr/sbin")
        return Path(found) if found else None

    def firecracker_path(self) -> Path | None:
        return self._find(self.firecracker, "firecracker")

    def jailer_path(self) -> Path | None:
        return self._find(self.jailer, "jailer")

    def exec_name(self) -> str:
        """The jailer names the jail and the cgroup parent after the *canonical* exec file name."""
        fc = self.firecracker_path()
        if fc is not None:
            return fc.resolve().name
        return (self.firecracker.name if self.firecracker else "firecracker")
