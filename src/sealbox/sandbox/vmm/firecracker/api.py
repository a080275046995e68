"""A small client for Firecracker's HTTP API on its Unix socket (operations of the v1.16.1 swagger).

Every call is bounded by a timeout; every failure — no socket, no answer, or an API error with
Firecracker's `{"fault_message": ...}` — becomes one SandboxError line naming the request.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker import jailfs
from sealbox.util.unixpath import short_path

ActionType = Literal["InstanceStart", "SendCtrlAltDel", "FlushMetrics"]


class FirecrackerApiError(SandboxError):
    """Firecracker answered with an error status."""

    def __init__(self, message: str, *, status: int, fault: str) -> None:
        super().__init__(message)
        self.status = status
        self.fault = fault


@contextlib.contextmanager
def uds_path(path: Path, jail_root: Path | None = None) -> Iterator[str]:
    """A connectable name for a Unix socket. The host path of a jail's socket can exceed sun_path's
    108 bytes (a 64-char id alone gets close), so long paths go through an O_PATH fd of the directory.

    With `jail_root`, every name below it belongs to the VMM: the socket is resolved without following
    any symlink and connected through an O_PATH fd of that checked socket, so a VMM cannot point sealbox's
    requests at another socket (another sandbox's API, a host service)."""
    if jail_root is not None:
        with jailfs.open_root(jail_root) as root_fd:
            fd = jailfs.open_socket(root_fd, "/" + str(Path(path).relative_to(jail_root)), "connect to the API socket")
        try:
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with short_path(path) as name:
        yield name


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class FirecrackerClient:
    def __init__(self, socket_path: Path | str, timeout: float = 5.0, jail_root: Path | None = None) -> None:
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.jail_root = jail_root  # the socket lies in a jail: resolve it without following the VMM's symlinks

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        what = f"Firecracker API {method} {path}"
        limit = timeout or self.timeout
        try:
            with uds_path(self.socket_path, self.jail_root) as uds, httpx.Client(transport=httpx.HTTPTransport(uds=uds), base_url="http://localhost",
                                                                 timeout=httpx.Timeout(limit)) as client:
                resp = client.request(method, path, json=body, headers={"Accept": "application/json"})
        except FileNotFoundError:
            raise SandboxError(f"{what}: the API socket directory {self.socket_path.parent} does not exist",
                               hint="is the sandbox running?") from None
        except httpx.TimeoutException:
            raise SandboxError(f"{what}: no answer within {limit:g}s", hint="the VMM may be hung; 'sealbox stop' kills it") from None
        except httpx.TransportError as e:
            raise SandboxError(f"{what}: cannot reach the API socket {self.socket_path}: {_one_line(str(e)) or type(e).__name__}",
                               hint="is the sandbox running?") from None
        if resp.status_code >= 400:
            fault = _fault(resp)
            raise FirecrackerApiError(f"{what} failed ({resp.status_code}): {fault}", status=resp.status_code, fault=fault)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except json.JSONDecodeError:
            raise SandboxError(f"{what}: answer is not JSON: {_one_line(resp.text, 120)}") from None

    def _get_object(self, path: str) -> dict[str, Any]:
        """A GET whose answer must be a JSON object: the VMM is not trusted to send one."""
        answer = self._request("GET", path)
        if not isinstance(answer, dict):
            raise SandboxError(f"Firecracker API GET {path}: answer is not a JSON object: {_one_line(json.dumps(answer), 120)}")
        return answer

    # reads -------------------------------------------------------------------------------------
    def describe_instance(self) -> dict[str, Any]:
        """GET / — id, state (Not started/Running/Paused), vmm_version, app_name."""
        return self._get_object("/")

    def vm_config(self) -> dict[str, Any]:
        """GET /vm/config — the full configuration as Firecracker holds it."""
        return self._get_object("/vm/config")

    def machine_config(self) -> dict[str, Any]:
        return self._get_object("/machine-config")

    def version(self) -> str:
        return str(self._request("GET", "/version")["firecracker_version"])

    # actions -----------------------------------------------------------------------------------
    def action(self, action_type: ActionType) -> None:
        self._request("PUT", "/actions", {"action_type": action_type})

    def instance_start(self) -> None:
        self.action("InstanceStart")

    def send_ctrl_alt_del(self) -> None:
        self.action("SendCtrlAltDel")

    def flush_metrics(self) -> None:
        self.action("FlushMetrics")

    def pause(self) -> None:
        self._request("PATCH", "/vm", {"state": "Paused"})

    def resume(self) -> None:
        self._request("PATCH", "/vm", {"state": "Resumed"})

    # live updates ------------------------------------------------------------------------------
    def patch_drive(self, drive_id: str, *, path_on_host: str | None = None, rate_limiter: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"drive_id": drive_id}
        if path_on_host is not None:
            body["path_on_host"] = path_on_host
        if rate_limiter is not None:
            body["rate_limiter"] = rate_limiter
        self._request("PATCH", f"/drives/{_seg(drive_id)}", body)

    def patch_network_interface(self, iface_id: str, *, rx_rate_limiter: dict[str, Any] | None = None,
                                tx_rate_limiter: dict[str, Any] | None = None) -> None:
        body: dict[str, Any] = {"iface_id": iface_id}
        if rx_rate_limiter is not None:
            body["rx_rate_limiter"] = rx_rate_limiter
        if tx_rate_limiter is not None:
            body["tx_rate_limiter"] = tx_rate_limiter
        self._request("PATCH", f"/network-interfaces/{_seg(iface_id)}", body)

    # snapshots ---------------------------------------------------------------------------------
    def create_snapshot(self, snapshot_path: str, mem_file_path: str, *, snapshot_type: Literal["Full", "Diff"] = "Full",
                        timeout: float = 300.0) -> None:
        """PUT /snapshot/create — the VM must be Paused; writing guest memory can take a while."""
        body = {"snapshot_type": snapshot_type, "snapshot_path": snapshot_path, "mem_file_path": mem_file_path}
        self._request("PUT", "/snapshot/create", body, timeout=timeout)

    def load_snapshot(self, snapshot_path: str, mem_file_path: str, *, resume_vm: bool = True,
                      network_overrides: list[dict[str, str]] | None = None, timeout: float = 120.0) -> None:
        """PUT /snapshot/load on a fresh Firecracker (only logger/metrics configured before)."""
        body: dict[str, Any] = {"snapshot_path": snapshot_path,
                                "mem_backend": {"backend_type": "File", "backend_path": mem_file_path},
                                "resume_vm": resume_vm}
        if network_overrides:
            body["network_overrides"] = network_overrides
        self._request("PUT", "/snapshot/load", body, timeout=timeout)


def _seg(value: str) -> str:
    if not value or "/" in value or any(ord(c) < 0x21 or ord(c) > 0x7E for c in value):
        raise SandboxError(f"invalid Firecracker device id {value!r}")
    return value


def _fault(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except json.JSONDecodeError:
        return _one_line(resp.text) or resp.reason_phrase
    if isinstance(data, dict) and isinstance(data.get("fault_message"), str):
        return _one_line(data["fault_message"])
    return _one_line(json.dumps(data))
