"""bob-keyreg, the one-time key registration endpoint: one ed25519 key, once; checked against OpenSSH's ssh-keygen."""

from __future__ import annotations

import base64
import http.client
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bobguest import guest_root, load, mount

kr = load("bob_keyreg")
KEY = "ssh-ed25519 " + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))).decode()


class Endpoint:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.srv = kr.server(root, ("127.0.0.1", 0))
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def request(self, body: bytes | None, method: str = "POST", path: str = "/",
                headers: dict[str, str] | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(10)


@pytest.fixture
def ep(tmp_path: Path) -> Iterator[Endpoint]:
    e = Endpoint(guest_root(tmp_path, mounted=False))
    yield e
    e.stop()


def key_file(e: Endpoint) -> Path:
    return e.root / kr.KEY_FILE


def test_one_key_once(ep: Endpoint) -> None:
    assert ep.request((KEY + " laptop\n").encode()) == (201, "registered: the key is searcher's\n")
    assert key_file(ep).read_text() == KEY + "\n"  # canonical, without the comment
    assert oct(key_file(ep).stat().st_mode & 0o777) == "0o644"
    other = KEY[:-8] + "AAAAAAA="
    for body in (KEY.encode(), other.encode(), b"junk"):  # every later attempt, good or bad, is refused alike
        assert ep.request(body)[0] == 409
    assert key_file(ep).read_text() == KEY + "\n"


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs OpenSSH's ssh-keygen")
def test_a_key_made_by_ssh_keygen_is_installed_as_openssh_reads_it(ep: Endpoint, tmp_path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "searcher@laptop", "-f", str(tmp_path / "k")],
                   check=True, timeout=30)
    pub = (tmp_path / "k.pub").read_bytes()
    assert ep.request(pub)[0] == 201

    def fingerprint(path: Path) -> str:
        out = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True, timeout=30)
        return out.stdout.split()[1]

    assert fingerprint(key_file(ep)) == fingerprint(tmp_path / "k.pub")


def _blob(prefix: bytes, key: bytes) -> str:
    return base64.b64encode(prefix + key).decode()


ED_PREFIX = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32)


@pytest.mark.parametrize("body, has", [
    (b"", "not an ssh-ed25519 public key line"),
    (b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 x\n", "other key types are refused"),
    (b"ecdsa-sha2-nistp256 AAAA\n", "other key types"),
    ((KEY + "\n" + KEY + "\n").encode(), "more than one line"),
    ((KEY + "\r\n").encode(), "more than one line"),
    (b"ssh-ed25519 !!!!\n", "not an ssh-ed25519 public key line"),
    (b"ssh-ed25519 AAAA=A==\n", "not an ssh-ed25519 public key line"),
    (b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n", "not one ed25519 public key"),  # the type alone
    (("ssh-ed25519 " + _blob(ED_PREFIX, bytes(31))).encode(), "not one ed25519 public key"),  # 31 bytes
    (("ssh-ed25519 " + _blob(ED_PREFIX, bytes(33))).encode(), "not one ed25519 public key"),  # one too many
    (("ssh-ed25519 " + _blob(struct.pack(">I", 7) + b"ssh-rsa" + struct.pack(">I", 32), bytes(32))).encode(),
     "not one ed25519 public key"),  # the line says ed25519, the data does not
    (("ssh-ed25519 " + KEY.split()[1] + " caf\u00e9").encode(), "not ASCII"),
    ((" " + KEY).encode(), "not an ssh-ed25519 public key line"),
    (b"command=\"sh\" " + KEY.encode(), "not an ssh-ed25519 public key line"),  # no authorized_keys options
])
def test_anything_but_one_ed25519_key_is_refused_and_the_door_stays_open(ep: Endpoint, body: bytes, has: str) -> None:
    code, text = ep.request(body)
    assert code == 400 and text.startswith("refused: ") and has in text and text.count("\n") == 1
    assert not key_file(ep).exists()
    assert ep.request(KEY.encode())[0] == 201  # a bad attempt does not use up the registration


def test_http_framing(ep: Endpoint) -> None:
    assert ep.request(None, "GET")[0] == 405
    assert ep.request(KEY.encode(), path="/register")[0] == 404
    assert ep.request(b"x" * 2000)[0] == 413
    conn = http.client.HTTPConnection("127.0.0.1", ep.port, timeout=20)
    conn.putrequest("POST", "/")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 411
    conn.close()
    assert not key_file(ep).exists()


def test_registration_is_closed_once_persistent_is_mounted(ep: Endpoint) -> None:
    mount(ep.root)
    assert ep.request(KEY.encode()) == (403, "registration is closed: /persistent is initialised\n")
    assert not key_file(ep).exists()


def test_of_many_registrations_at_once_exactly_one_wins(ep: Endpoint) -> None:
    keys = ["ssh-ed25519 " + _blob(ED_PREFIX, bytes([i]) * 32) for i in range(8)]
    results: dict[str, int] = {}
    threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, kr.install(ep.root, k + "\n"))) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    winners = [k for k, won in results.items() if won]
    assert len(winners) == 1 and key_file(ep).read_text() == winners[0] + "\n"
    assert sorted(p.name for p in key_file(ep).parent.iterdir()) == ["authorized_keys"]  # no temporary file left
