"""Shared helpers for the Firecracker tests: plans, the spec vector, and a stand-in Firecracker API server."""

from __future__ import annotations

import ipaddress
import json
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from sealbox.sandbox.model import CgroupPlan, DiskSpec, GuestNet, Limits, SandboxSpec, VmPlan
from vectors import vector

REPO = Path(__file__).resolve().parents[3]


def spec_path() -> Path:
    return vector("firecracker/firecracker-v1.16.1.yaml")


def make_plan(tmp: Path, *, name: str = "fc-test", cpus: int = 2, memory_mib: int = 256, rootfs: str = "initrd",
              disks: tuple[DiskSpec, ...] = (), limits: Limits = Limits(), cgroup_version: int = 1,
              cmdline: str | None = None, uid: int = 64123, gid: int = 64123, from_snapshot: Path | None = None) -> VmPlan:
    net = GuestNet(subnet=ipaddress.IPv4Network("10.213.0.4/30"), host_ip=ipaddress.IPv4Address("10.213.0.5"),
                   guest_ip=ipaddress.IPv4Address("10.213.0.6"), guest_mac="02:aa:bb:cc:dd:ee", tap="tap0",
                   netns=f"sealbox-{name}")
    spec = SandboxSpec(name=name, image_dir=tmp / "image", cpus=cpus, memory_mib=memory_mib, rootfs=rootfs,
                       disks=disks, vmm="firecracker", limits=limits, from_snapshot=from_snapshot)
    return VmPlan(
        spec=spec, sandbox_dir=tmp / "sandbox", kernel=tmp / "image" / "vmlinux",
        initrd=tmp / "image" / "initrd.cpio.zst", rootfs=tmp / "image" / "rootfs.ext4",
        instance_disk=tmp / "sandbox" / "instance.img",
        cmdline=cmdline if cmdline is not None else f"{net.kernel_ip_arg(name)} console=ttyS0",
        net=net, uid=uid, gid=gid,
        cgroup=CgroupPlan(version=cgroup_version, name=f"sealbox/{name}", memory_bytes=(memory_mib + 128) << 20,
                          cpu_quota_us=cpus * 100_000, pids_max=limits.pids_max),
        accel="kvm", console_log=tmp / "sandbox" / "console.log")


class StandInFirecrackerApi:
    """A stand-in for Firecracker's API server (NOT Firecracker): an HTTP server on a Unix socket that
    checks every request's method, path and body against the swagger spec and answers like
    Firecracker does (204; 200 + JSON; 400 + {"fault_message": ...})."""

    def __init__(self, sock: Path, spec: Any, state: str = "Running") -> None:
        self.sock, self.spec = sock, spec
        self.requests: list[tuple[str, str, Any]] = []
        self.violations: list[str] = []
        self.state = state
        self.vm_config: dict[str, Any] = {"boot-source": {"kernel_image_path": "/vmlinux"}, "drives": [],
                                           "machine-config": {"vcpu_count": 1, "mem_size_mib": 128}}
        self.fail_next: dict[str, tuple[int, str]] = {}  # "METHOD /path" -> (status, fault message)
        self.hooks: dict[str, Callable[[Any], None]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                method, path = self.command, self.path
                outer.requests.append((method, path, body))
                found = outer.spec.find_operation(method, path)
                if found is None:
                    outer.violations.append(f"{method} {path}: no such operation in the spec")
                    return self._answer(400, {"fault_message": f"Invalid request method and/or path: {method} {path}"})
                op, params = found
                if op.body_definition is not None:
                    if body is None and op.body_required:
                        outer.violations.append(f"{method} {path}: missing body")
                        return self._answer(400, {"fault_message": "Empty request body"})
                    if body is not None:
                        errs = outer.spec.errors_for(op.body_definition, body)
                        if errs:
                            outer.violations.append(f"{method} {path}: {errs[0]}")
                            return self._answer(400, {"fault_message": f"An error occurred when deserializing the json body of a request: {errs[0]}"})
                elif body is not None:
                    outer.violations.append(f"{method} {path}: unexpected body")
                for key, val in params.items():  # Firecracker requires the path id to equal the body id
                    if body is not None and key in body and body[key] != val:
                        fault = f"The id from the path [{val}] does not match the id from the body [{body[key]}]!"
                        return self._answer(400, {"fault_message": fault})
                key = f"{method} {op.template}"
                if key in outer.fail_next:
                    status, msg = outer.fail_next.pop(key)
                    return self._answer(status, {"fault_message": msg})
                if key in outer.hooks:
                    outer.hooks[key](body)
                if method == "GET":
                    return self._answer(200, outer._get(op.template))
                if op.template == "/vm":
                    outer.state = "Paused" if body["state"] == "Paused" else "Running"
                return self._answer(204)

            do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _handle

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                import sys
                import traceback

                if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    return  # the client hung up after reading its answer: not a protocol violation

                outer.violations.append("stand-in server error: " + traceback.format_exc().strip().splitlines()[-1])

        class UnixHandler(Handler):
            def __init__(self, request: Any, client_address: Any, server: Any) -> None:
                super().__init__(request, ("local", 0), server)

        self.server = Server(str(sock), UnixHandler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def _get(self, template: str) -> Any:
        if template == "/":
            return {"app_name": "Firecracker", "id": "fc-test", "state": self.state, "vmm_version": "1.16.1"}
        if template == "/vm/config":
            return self.vm_config
        if template == "/machine-config":
            return self.vm_config["machine-config"]
        if template == "/version":
            return {"firecracker_version": "1.16.1"}
        return {}

    def __enter__(self) -> StandInFirecrackerApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


def vmm_uid() -> int:
    """The stand-in VMM's uid: the plans' unprivileged uid as root, else our own (files need an owner we can set)."""
    import os

    return 64123 if os.geteuid() == 0 else os.getuid()


def running_record(tmp: Path, sock: Path, *, name: str = "fc-test", chroot_base: Path | None = None,
                   disks: tuple[DiskSpec, ...] = (), staged: dict[str, str] | None = None):
    """A sandbox record as the manager would leave it after the Firecracker steps ran, pointing at a
    live pid (this test process) and at `sock` for the API. `staged` is the stage step's record of how
    each jail file was placed ('link' or 'copy'); the caller creates those files."""
    import os
    import time

    from sealbox.sandbox.state import SandboxRecord, process_start_time
    from sealbox.sandbox.steps import StepEntry, StepLog
    from sealbox.sandbox.vmm.firecracker.backend import FirecrackerBackend
    from sealbox.sandbox.vmm.firecracker.settings import FirecrackerSettings

    backend = FirecrackerBackend(FirecrackerSettings(chroot_base=chroot_base or tmp / "jails", firecracker=tmp / "absent-fc"))
    plan = make_plan(tmp, name=name, disks=disks, uid=vmm_uid(), gid=vmm_uid())
    stage, start = backend._steps(plan, probe=False)
    entries = [StepEntry(kind=stage.kind, params=stage.model_dump(mode="json"), state="done", outputs={"staged": staged or {}}),
               StepEntry(kind=start.kind, params=start.model_dump(mode="json"), state="done",
                         outputs={"pid": os.getpid(), "start_time": process_start_time(os.getpid()), "api_sock": str(sock)})]
    record = SandboxRecord(name=name, status="running", created_at=time.time(), steps=StepLog(entries=entries),
                           network={"guest_ip": "10.213.0.6"}, guest={"host_keys": ["ssh-ed25519 AAAA"]})
    return backend, record, stage.layout
