"""The API client against a stand-in Firecracker API server that checks requests against the swagger spec."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
from fc_testlib import StandInFirecrackerApi, spec_path

from sealbox.errors import SandboxError
from sealbox.sandbox.vmm.firecracker.api import FirecrackerApiError, FirecrackerClient
from sealbox.sandbox.vmm.firecracker.schema import load_spec


@pytest.fixture
def server(tmp_path: Path):
    with StandInFirecrackerApi(tmp_path / "api.sock", load_spec(str(spec_path()))) as srv:
        yield srv


@pytest.fixture
def client(server: StandInFirecrackerApi) -> FirecrackerClient:
    return FirecrackerClient(server.sock, timeout=2.0)


RL = {"bandwidth": {"size": 1000, "refill_time": 100, "one_time_burst": 0}, "ops": {"size": 10, "refill_time": 1000}}


def test_every_client_call_is_a_valid_request(server: StandInFirecrackerApi, client: FirecrackerClient) -> None:
    assert client.describe_instance()["state"] == "Running"
    assert client.vm_config()["machine-config"]["vcpu_count"] == 1
    assert client.machine_config() == {"vcpu_count": 1, "mem_size_mib": 128}
    assert client.version() == "1.16.1"
    client.instance_start()
    client.send_ctrl_alt_del()
    client.flush_metrics()
    client.pause()
    assert client.describe_instance()["state"] == "Paused"
    client.resume()
    client.patch_drive("rootfs", rate_limiter=RL)
    client.patch_drive("disk0", path_on_host="/disk0.img")
    client.patch_network_interface("eth0", rx_rate_limiter=RL, tx_rate_limiter={"bandwidth": {"size": 0, "refill_time": 0}})
    client.create_snapshot("/snapshot/vmstate", "/snapshot/memory")
    client.load_snapshot("/snapshot/vmstate", "/snapshot/memory", resume_vm=True,
                         network_overrides=[{"iface_id": "eth0", "host_dev_name": "tap0"}])
    assert server.violations == []
    assert [(m, p) for m, p, _ in server.requests] == [
        ("GET", "/"), ("GET", "/vm/config"), ("GET", "/machine-config"), ("GET", "/version"),
        ("PUT", "/actions"), ("PUT", "/actions"), ("PUT", "/actions"), ("PATCH", "/vm"), ("GET", "/"), ("PATCH", "/vm"),
        ("PATCH", "/drives/rootfs"), ("PATCH", "/drives/disk0"), ("PATCH", "/network-interfaces/eth0"),
        ("PUT", "/snapshot/create"), ("PUT", "/snapshot/load"),
    ]
    bodies = [b for _, _, b in server.requests]
    assert bodies[4:7] == [{"action_type": "InstanceStart"}, {"action_type": "SendCtrlAltDel"}, {"action_type": "FlushMetrics"}]
    assert bodies[7] == {"state": "Paused"} and bodies[9] == {"state": "Resumed"}
    assert bodies[13] == {"snapshot_type": "Full", "snapshot_path": "/snapshot/vmstate", "mem_file_path": "/snapshot/memory"}
    assert bodies[14]["mem_backend"] == {"backend_type": "File", "backend_path": "/snapshot/memory"}


def test_the_stand_in_rejects_requests_the_spec_forbids(server: StandInFirecrackerApi, client: FirecrackerClient) -> None:
    with pytest.raises(FirecrackerApiError, match=r"PUT /actions failed \(400\):.*action_type"):
        client._request("PUT", "/actions", {"action_type": "Reboot"})
    with pytest.raises(FirecrackerApiError, match="Invalid request method and/or path"):
        client._request("DELETE", "/vm")
    with pytest.raises(FirecrackerApiError, match="does not match the id from the body"):
        client._request("PATCH", "/drives/a", {"drive_id": "b"})
    assert len(server.violations) == 2


def test_fault_message_becomes_one_clear_line(server: StandInFirecrackerApi, client: FirecrackerClient) -> None:
    server.fail_next["PATCH /vm"] = (400, "The requested operation is not supported\nafter starting the microVM.")
    with pytest.raises(FirecrackerApiError) as e:
        client.pause()
    assert str(e.value) == ("Firecracker API PATCH /vm failed (400): The requested operation is not supported "
                            "after starting the microVM.")
    assert e.value.status == 400 and isinstance(e.value, SandboxError)
    server.fail_next["PUT /snapshot/create"] = (500, "Cannot create snapshot")
    with pytest.raises(FirecrackerApiError, match=r"\(500\): Cannot create snapshot"):
        client.create_snapshot("/a", "/b")


def test_no_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="cannot reach the API socket") as e:
        FirecrackerClient(tmp_path / "absent.sock", timeout=1).describe_instance()
    assert e.value.hint == "is the sandbox running?"


def test_a_silent_server_times_out_within_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    held: list[socket.socket] = []
    t = threading.Thread(target=lambda: held.append(srv.accept()[0]), daemon=True)
    t.start()
    import time

    start = time.monotonic()
    with pytest.raises(SandboxError, match=r"no answer within 0.3s"):
        FirecrackerClient(path, timeout=0.3).describe_instance()
    assert time.monotonic() - start < 3
    srv.close()
    for c in held:
        c.close()


def test_bad_device_ids_never_reach_the_wire(client: FirecrackerClient, server: StandInFirecrackerApi) -> None:
    for bad in ("", "a/b", "a b"):
        with pytest.raises(SandboxError, match="invalid Firecracker device id"):
            client.patch_drive(bad)
    assert server.requests == []


def test_an_answer_that_is_not_a_json_object_is_a_clear_error(tmp_path: Path) -> None:
    """The VMM is hostile: a GET that must describe an object and gets a list is refused, not handed on."""
    path = tmp_path / "odd.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def answer() -> None:
        conn = srv.accept()[0]
        with conn:
            conn.settimeout(2)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 6\r\nConnection: close\r\n\r\n[1, 2]")

    t = threading.Thread(target=answer, daemon=True)
    t.start()
    with pytest.raises(SandboxError, match=r"^Firecracker API GET /: answer is not a JSON object: \[1, 2\]$"):
        FirecrackerClient(path, timeout=2).describe_instance()
    t.join(3)
    srv.close()
