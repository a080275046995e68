"""Ray's SandboxConfig as sealbox's adapter maps it onto a sealbox create (FleetSandboxBackend over a recording
Host: no Ray cluster, no guest); what it refuses, how statuses and a missing sandbox are said in Ray's terms.
Commands and files through it run against a real fleet in tests/integration/fleet/test_fleet_frontends.py."""

from __future__ import annotations

from typing import Any

import pytest
from ray.experimental.sandbox.backend.base import BaseSandboxBackend, SandboxStatus
from ray.experimental.sandbox.config import SandboxConfig
from ray.experimental.sandbox.exceptions import SandboxCreationError, SandboxNotFoundError

from sealbox.errors import NotFound, ResourceExhausted
from sealbox.fleet.raybackend import FleetSandboxBackend
from sealbox.sandbox.status import PsRow
from sealbox.sdk.options import CreateOptions


class RecordingHost:
    """Keeps what it was asked to create; every sandbox has the status in `status`."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.created: dict[str, CreateOptions] = {}
        self.status = "running"
        self.fail = fail

    def create(self, opts: CreateOptions, **kw: Any) -> dict[str, Any]:
        if self.fail:
            raise self.fail
        self.created[opts.name] = opts
        return {"name": opts.name}

    def info(self, name: str) -> PsRow:
        if name not in self.created:
            raise NotFound(f"no sandbox named {name!r}")
        return PsRow(name=name, status=self.status)

    def remove(self, name: str, *, force: bool = False) -> None:
        if self.created.pop(name, None) is None:
            raise NotFound(f"no sandbox named {name!r}")


def test_config_mapping() -> None:
    host = RecordingHost()
    backend = FleetSandboxBackend(host)
    assert isinstance(backend, BaseSandboxBackend)
    sid = backend.create_sandbox(SandboxConfig(image="/srv/img", cpu=1.5, memory="1.5Gi", timeout_seconds=90))
    o = host.created[sid]
    assert (o.image, o.cpus, o.memory_mib, o.timeout_s, o.labels) == ("/srv/img", 2, 1536, 90.0, {"ray-sandbox-backend": "1"})
    assert o.network == "isolated"
    sid2 = backend.create_sandbox(SandboxConfig(image="/srv/img"))  # Ray's defaults (0): sealbox's
    assert (host.created[sid2].cpus, host.created[sid2].memory_mib) == (2, None)
    assert sid != sid2 and sid.startswith("ray-")


@pytest.mark.parametrize(("cfg", "says"), [
    ({"network": "public"}, "network='public'"),
    ({"network": "host"}, "network='host'"),
    ({"capabilities": []}, "capabilities"),
    ({"memory": "12 parsecs"}, "memory='12 parsecs'"),
])
def test_refused_not_ignored(cfg: dict[str, Any], says: str) -> None:
    host = RecordingHost()
    with pytest.raises(SandboxCreationError, match=says):
        FleetSandboxBackend(host).create_sandbox(SandboxConfig(image="/srv/img", **cfg))
    assert host.created == {}


def test_a_full_fleet_is_a_creation_error() -> None:
    host = RecordingHost(fail=ResourceExhausted("the fleet is full: no host has 2 vCPUs, 512 MiB free"))
    with pytest.raises(SandboxCreationError, match="the fleet is full"):
        FleetSandboxBackend(host).create_sandbox(SandboxConfig(image="/srv/img"))


@pytest.mark.parametrize(("status", "ray"), [("running", SandboxStatus.RUNNING), ("creating", SandboxStatus.PENDING),
                                             ("failed", SandboxStatus.ERROR), ("exited", SandboxStatus.TERMINATED),
                                             ("lost", SandboxStatus.TERMINATED), ("stopped", SandboxStatus.TERMINATED)])
def test_status(status: str, ray: SandboxStatus) -> None:
    host = RecordingHost()
    backend = FleetSandboxBackend(host)
    sid = backend.create_sandbox(SandboxConfig(image="/srv/img"))
    host.status = status
    assert backend.get_status(sid) == ray


def test_delete() -> None:
    host = RecordingHost()
    backend = FleetSandboxBackend(host)
    sid = backend.create_sandbox(SandboxConfig(image="/srv/img"))
    backend.delete_sandbox(sid)
    assert host.created == {} and backend.get_status(sid) == SandboxStatus.TERMINATED
    with pytest.raises(SandboxNotFoundError):
        backend.delete_sandbox(sid)
