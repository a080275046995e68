"""Calls Ray's sandbox backend interface as Ray's SandboxRuntime would, on sealbox's adapter
(sealbox.fleet.raybackend.FleetSandboxBackend) over the test fleet, in the head's network namespace; prints what it
saw as one JSON object. Not product code. argv: ADDRESS WORKDIR (a directory of the test's own: the STAND-IN
hosts run commands on this machine, so the "guest" files land there)."""

from __future__ import annotations

import json
import sys
from typing import Any

from ray.experimental.sandbox.backend.base import BaseSandboxBackend, SandboxStatus
from ray.experimental.sandbox.config import SandboxConfig
from ray.experimental.sandbox.exceptions import SandboxCreationError, SandboxNotFoundError, SandboxTimeoutError

from sealbox.fleet.client import Fleet
from sealbox.fleet.raybackend import FleetSandboxBackend

IMAGE = "/nonexistent/standin-image"


def main(address: str, work: str) -> dict[str, Any]:
    fleet = Fleet(address)
    backend = FleetSandboxBackend(fleet.requiring(zone="a"))
    out: dict[str, Any] = {"is_backend": isinstance(backend, BaseSandboxBackend)}
    # shell: Ray's setting, the shell that runs string commands inside the sandbox
    cfg = SandboxConfig(image=IMAGE, cpu=0.5, memory="200Mi", env={"GREETING": "hello"}, workdir=work, shell="/bin/sh")  # noqa: S604
    sid = backend.create_sandbox(cfg)
    out["id"], out["host"] = sid, fleet.host_of(sid)
    out["info"] = fleet.info(sid).model_dump()
    out["status"] = backend.get_status(sid).value
    r = backend.exec_command(sid, 'echo "$GREETING $EXTRA from $(pwd)"; echo oops >&2; exit 4', env={"EXTRA": "x"})
    out["exec_str"] = [r.exit_code, r.stdout, r.stderr, r.duration_seconds >= 0]
    r = backend.exec_command(sid, ["printf", "%s|", "a b", "$GREETING"], cwd="/")
    out["exec_argv"] = [r.exit_code, r.stdout]
    try:
        backend.exec_command(sid, ["sleep", "30"], timeout=1)
        out["timeout"] = None
    except SandboxTimeoutError as e:
        out["timeout"] = str(e)
    backend.write_file(sid, f"{work}/f.txt", "one\n")
    backend.write_file(sid, f"{work}/f.txt", b"two\n", append=True)
    out["read"] = backend.read_file(sid, f"{work}/f.txt").decode()
    try:
        backend.read_file(sid, f"{work}/missing")
        out["read_missing"] = None
    except FileNotFoundError as e:
        out["read_missing"] = str(e)
    for what, cfg in {"public": SandboxConfig(image=IMAGE, network="public"),
                      "nohost": None}.items():
        try:
            if cfg is None:
                FleetSandboxBackend(fleet.requiring(zone="nowhere")).create_sandbox(SandboxConfig(image=IMAGE, cpu=1))
            else:
                backend.create_sandbox(cfg)
            out[what] = None
        except SandboxCreationError as e:
            out[what] = str(e)
    backend.delete_sandbox(sid)
    out["status_after"] = backend.get_status(sid).value
    try:
        backend.delete_sandbox(sid)
        out["delete_again"] = None
    except SandboxNotFoundError as e:
        out["delete_again"] = str(e)
    out["unknown"] = backend.get_status("ray-nope").value == SandboxStatus.TERMINATED.value
    out["left"] = [r.name for r in fleet.list(all_=True)]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2])))
