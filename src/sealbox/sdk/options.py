"""CreateOptions: everything Sandbox.create takes, as data (what a remote host's agent would receive).

Its own module so that listing sandboxes (`sealbox ps`) does not build this model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class CreateOptions(BaseModel):
    """Everything `Sandbox.create` takes, as data (what a remote host's agent receives).

    Fields not declared here are passed to the runtime as they are (any newer `sealbox run` flag works from
    the SDK at once); the runtime's own check names an unknown one."""

    model_config = ConfigDict(frozen=True, extra="allow")
    image: str
    name: str
    cpus: int = 2
    memory_mib: int | None = None  # None: 512, or the image's minimum if that is more
    network: Literal["isolated", "nat"] = "isolated"
    allow_egress: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()
    publish: tuple[str, ...] = ()
    disks: tuple[str, ...] = ()
    timeout_s: float = 180.0
    labels: dict[str, str] = Field(default_factory=dict)
    rootfs: Literal["initrd", "disk"] = "initrd"
    vmm: Literal["auto", "qemu", "firecracker"] = "auto"
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    firmware: Literal["direct", "ovmf"] = "direct"
    boot: Literal["kernel", "disk-image"] = "kernel"
    tdx: bool = False
    console_max_mib: int = 16
    from_snapshot: str | None = None
