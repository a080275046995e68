"""QmpClient against a STAND-IN QMP server (a thread speaking QMP's line protocol on a unix socket)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from sealbox.sandbox.vmm.qmp import QmpClient, QmpError

Handler = Callable[[dict], list[dict]]


def stand_in_qmp_server(path: Path, handler: Handler, greet: bool = True) -> threading.Thread:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn, conn.makefile("rwb") as f:
            if greet:
                f.write(b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\n')
                f.flush()
            for line in f:
                for reply in handler(json.loads(line)):
                    f.write(json.dumps(reply).encode() + b"\n")
                f.flush()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_commands_events_and_errors(tmp_path: Path) -> None:
    seen: list[dict] = []

    def handler(req: dict) -> list[dict]:
        seen.append(req)
        cmd = req["execute"]
        if cmd == "query-status":
            return [{"event": "RESUME", "data": {}}, {"return": {"status": "running", "running": True}}]
        if cmd == "nope":
            return [{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}}]
        return [{"return": {}}]

    sock = tmp_path / "qmp.sock"
    stand_in_qmp_server(sock, handler)
    with QmpClient(sock, timeout=5) as q:
        assert q.greeting["QMP"]["version"]["qemu"]["major"] == 7
        assert q.execute("query-status")["status"] == "running"
        assert [e["event"] for e in q.events] == ["RESUME"]
        with pytest.raises(QmpError, match="CommandNotFound"):
            q.execute("nope")
        q.execute("system_powerdown", {"x": 1})
    assert [r["execute"] for r in seen] == ["qmp_capabilities", "query-status", "nope", "system_powerdown"]
    assert seen[-1]["arguments"] == {"x": 1}


def test_silent_server_times_out(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    stand_in_qmp_server(sock, lambda req: [], greet=False)
    with pytest.raises(QmpError, match="did not answer within 0.3s"):
        QmpClient(sock, timeout=0.3).connect()


def test_no_socket(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match="cannot connect"):
        QmpClient(tmp_path / "absent.sock", timeout=1).connect()


def test_a_qmp_socket_beyond_sun_path_is_bound_and_reached(tmp_path: Path) -> None:
    """A state dir deep enough that run_dir/qmp.sock exceeds sun_path's 108 bytes: the launcher binds the socket and
    the client connects to it all the same (both through an O_PATH fd of the directory)."""
    from sealbox.sandbox.vmm.qemu import FdFile
    from sealbox.sandbox.vmm.qemu_launch import _open_fd

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    sock = deep / "qmp.sock"
    assert len(str(sock).encode()) > 108
    fd = _open_fd(FdFile(fd=3, kind="qmp", path=str(sock)))
    srv = socket.socket(fileno=fd)
    try:
        assert sock.is_socket() and (sock.stat().st_mode & 0o777) == 0o600

        def serve() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\n')
                conn.recv(1000)
                conn.sendall(b'{"return": {}}\n')
                conn.recv(1000)

        threading.Thread(target=serve, daemon=True).start()
        with QmpClient(sock, timeout=5) as q:
            assert "QMP" in q.greeting
    finally:
        srv.close()
