"""bob-attest, the guest's attested-first-contact endpoint: a TDX quote whose REPORTDATA binds the SSH host key(s) and
the client's nonce, from configfs-tsm; a guest that is not a TD says so. configfs-tsm is a stand-in (tests/faketsm.py:
only a TD has one); the host keys are made by OpenSSH's ssh-keygen and their blobs checked by its fingerprints."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bobguest import load
from faketsm import AcceptSocket, fake_tsm_class

ba = load("bob_attest")
NONCE = bytes(range(32))
CPUINFO_TD = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor tdx_guest lahf_lm\n"
CPUINFO_VM = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n"

pytestmark = pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs OpenSSH's ssh-keygen")


def fake_quote(inblob: bytes) -> bytes:
    """Not a quote: the guest never parses what configfs-tsm hands it, so any bytes show they are passed on as-is."""
    return b"QUOTE" + inblob + bytes(100)


def keygen(path: Path, kind: str = "ed25519") -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "root@guest", "-f", str(path)], check=True, timeout=60)
    return Path(f"{path}.pub").read_text()


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()[1]


def guest(base: Path, *, td: bool = True, tsm: bool = True, keys: tuple[str, ...] = ("ed25519",)) -> Path:
    """A fake guest root: host keys where sealbox's sshd keeps them, /proc/cpuinfo, and configfs-tsm's directory."""
    (base / ba.KEY_DIR).mkdir(parents=True)
    for kind in keys:
        keygen(base / ba.KEY_DIR / f"ssh_host_{kind}_key", kind)
    (base / "proc").mkdir()
    (base / "proc/cpuinfo").write_text(CPUINFO_TD if td else CPUINFO_VM)
    if tsm:
        (base / ba.TSM_DIR).mkdir(parents=True)
    return base


class Endpoint:
    """Both parts as the image runs them: the HTTP side, and the quote side behind its (stand-in) activation socket."""

    def __init__(self, root: Path, tsm_cls: Any) -> None:
        self.root, self.tsm_cls = root, tsm_cls
        self.quote_side = AcceptSocket(lambda r, w: ba.serve_quote(root, r, w, tsm_cls))
        self.srv = ba.server(("127.0.0.1", 0), self.quote_side.path)
        self.port = self.srv.server_address[1]
        self.thread = threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def get(self, path: str, method: str = "GET") -> tuple[int, dict[str, Any] | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            body = resp.read().decode()
            ctype = resp.getheader("Content-Type", "")
            return resp.status, json.loads(body) if ctype.startswith("application/json") else body
        finally:
            conn.close()

    def stop(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()
        self.thread.join(10)
        self.quote_side.stop()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Callable[..., Endpoint]]:
    made: list[Endpoint] = []

    def make(*, provider: str = "tdx_guest", bump: bool = False, quote: Callable[[bytes], bytes] = fake_quote,
             **kw: Any) -> Endpoint:  # fmt: skip
        cls = fake_tsm_class(ba.Tsm, quote, provider=provider, bump_generation=bump)
        cls.inblobs, cls.entries = [], []
        e = Endpoint(guest(tmp_path / f"root{len(made)}", **kw), cls)
        made.append(e)
        return e

    yield make
    for e in made:
        e.stop()


def blob_of(pub_line: str) -> bytes:
    return base64.b64decode(pub_line.split()[1])


def test_the_binding_is_sha512_over_label_nonce_and_the_sorted_key_blobs(tmp_path: Path) -> None:
    """Written out from the definition (docs/modules.md, bob), against the script's own function."""
    lines = [keygen(tmp_path / "a"), keygen(tmp_path / "b", "ecdsa")]
    blobs = [blob_of(x) for x in lines]
    for line, pub in zip(lines, ("a.pub", "b.pub"), strict=True):  # the blob is OpenSSH's: its SHA-256 is the fingerprint
        fp = "SHA256:" + base64.b64encode(hashlib.sha256(blob_of(line)).digest()).decode().rstrip("=")
        assert fp == fingerprint(tmp_path / pub)
    msg = b"sealbox-bob-ssh-hostkeys-v1\x00" + struct.pack(">I", 32) + NONCE + struct.pack(">I", 2)
    for b in sorted(blobs):
        msg += struct.pack(">I", len(b)) + b
    want = hashlib.sha512(msg).digest()
    assert ba.binding(NONCE, blobs) == want == ba.binding(NONCE, blobs[::-1])  # order-free: sorted before hashing
    assert ba.binding(bytes(32), blobs) != want and ba.binding(NONCE, blobs[:1]) != want


def test_a_td_serves_a_quote_over_its_host_key_and_the_nonce(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint()
    pub = e.root / ba.KEY_DIR / "ssh_host_ed25519_key.pub"
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 200, doc
    assert isinstance(doc, dict)
    assert doc["schema"] == "sealbox.bob.hostkey-quote/v1" and doc["status"] == "quote"
    assert doc["nonce"] == NONCE.hex() and doc["binding"] == "sealbox-bob-ssh-hostkeys-v1"
    assert doc["host_keys"] == [" ".join(pub.read_text().split()[:2])]  # without the comment
    want = ba.binding(NONCE, [blob_of(pub.read_text())])
    assert e.tsm_cls.inblobs == [want]  # what configfs-tsm was asked to put in REPORTDATA
    assert base64.b64decode(doc["quote"]) == fake_quote(want)  # and its answer, passed on unchanged
    assert list((e.root / ba.TSM_DIR).iterdir()) == []  # the report entry is removed again


def test_upper_case_nonce_and_every_host_key(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint(keys=("ed25519", "ecdsa", "rsa"))
    code, doc = e.get(f"/?nonce={NONCE.hex().upper()}")
    assert code == 200 and isinstance(doc, dict) and doc["nonce"] == NONCE.hex()
    pubs = [(e.root / ba.KEY_DIR / f"ssh_host_{k}_key.pub").read_text() for k in ("ed25519", "ecdsa", "rsa")]
    assert sorted(doc["host_keys"]) == sorted(" ".join(p.split()[:2]) for p in pubs)
    assert [blob_of(k) for k in doc["host_keys"]] == sorted(blob_of(p) for p in pubs)  # listed in binding order
    assert e.tsm_cls.inblobs == [ba.binding(NONCE, [blob_of(p) for p in pubs])]


def test_not_a_td_says_so_and_serves_no_key(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint(td=False, tsm=False)
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 501 and isinstance(doc, dict)
    assert doc == {"schema": "sealbox.bob.hostkey-quote/v1", "status": "not-a-td",
                   "detail": "this guest is not a TDX TD (no tdx_guest CPU flag): there is no quote to give"}  # fmt: skip
    assert e.tsm_cls.entries == []


def test_a_td_without_configfs_tsm_or_with_another_provider(endpoint: Callable[..., Endpoint]) -> None:
    code, doc = endpoint(tsm=False).get(f"/?nonce={NONCE.hex()}")
    assert code == 503 and isinstance(doc, dict) and doc["status"] == "no-quote"
    assert "no configfs-tsm report interface" in doc["detail"] and "quote" not in doc
    e = endpoint(provider="sev_guest")
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 501 and isinstance(doc, dict) and doc["status"] == "not-a-td"
    assert doc["detail"] == "the attestation provider is 'sev_guest', not tdx_guest: there is no TDX quote to give"
    assert e.tsm_cls.inblobs == [] and list((e.root / ba.TSM_DIR).iterdir()) == []


def test_a_report_changed_while_read_is_not_served(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint(bump=True)
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 503 and isinstance(doc, dict) and doc["status"] == "quote-failed" and "quote" not in doc
    assert "changed while it was read" in doc["detail"]
    assert list((e.root / ba.TSM_DIR).iterdir()) == []


@pytest.mark.parametrize("answer,why", [(b"", "configfs-tsm gave an empty quote"),
                                        (bytes(32 * 1024 + 1), "larger than 32768 bytes")])  # fmt: skip
def test_an_empty_or_oversized_answer_is_not_served(endpoint: Callable[..., Endpoint], answer: bytes, why: str) -> None:
    code, doc = endpoint(quote=lambda _inblob: answer).get(f"/?nonce={NONCE.hex()}")
    assert code == 503 and isinstance(doc, dict) and doc["status"] == "quote-failed" and why in doc["detail"]


def test_no_host_key_no_quote(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint(keys=())
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 503 and isinstance(doc, dict) and doc["status"] == "no-host-key"
    assert e.tsm_cls.entries == []


def test_a_broken_host_key_file_is_named(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint()
    (e.root / ba.KEY_DIR / "ssh_host_ed25519_key.pub").write_text("ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n")
    code, doc = e.get(f"/?nonce={NONCE.hex()}")
    assert code == 503 and isinstance(doc, dict) and doc["status"] == "no-host-key"
    assert doc["detail"].startswith("ssh_host_ed25519_key.pub: ") and e.tsm_cls.entries == []


@pytest.mark.parametrize("path,code,has", [
    ("/", 400, "give ?nonce=HEX"),
    ("/?nonce=" + "ab" * 15, 400, "16 to 64 bytes"),
    ("/?nonce=" + "ab" * 65, 400, "16 to 64 bytes"),
    ("/?nonce=" + "a" * 33, 400, "16 to 64 bytes (32 to 128 hex digits)"),
    ("/?nonce=" + "zz" * 16, 400, "16 to 64 bytes (32 to 128 hex digits)"),
    ("/?nonce=" + "%20" + "ab" * 16, 400, "16 to 64 bytes"),
    (f"/?nonce={NONCE.hex()}&nonce={NONCE.hex()}", 400, "give ?nonce=HEX"),
    (f"/?nonce={NONCE.hex()}&x=1", 400, "give ?nonce=HEX"),
    (f"/quote?nonce={NONCE.hex()}", 404, "GET /?nonce=HEX"),
])  # fmt: skip
def test_a_bad_request_is_refused_before_any_quote(endpoint: Callable[..., Endpoint], path: str, code: int, has: str) -> None:
    e = endpoint()
    got, doc = e.get(path)
    assert got == code and isinstance(doc, dict) and doc["status"] == "bad-request" and has in doc["detail"], doc
    assert e.tsm_cls.entries == []


def test_other_methods(endpoint: Callable[..., Endpoint]) -> None:
    e = endpoint()
    for method in ("POST", "PUT", "DELETE"):
        code, doc = e.get(f"/?nonce={NONCE.hex()}", method)
        assert code == 405 and isinstance(doc, dict) and doc["status"] == "bad-request"
    assert e.tsm_cls.entries == []


def test_main_refuses_a_bad_port(capsys: pytest.CaptureFixture[str]) -> None:
    argvs = ([], ["8745"], ["serve"], ["serve", "0"], ["serve", "65536"], ["serve", "x"], ["serve", "80", "81"], ["quote", "x"])
    for argv in argvs:
        assert ba.main(argv) == 2
    assert capsys.readouterr().err.count("usage: bob-attest serve PORT | bob-attest quote") == len(argvs)


def test_a_dead_or_garbled_quote_side_is_no_quote(tmp_path: Path) -> None:
    for reply in (None, b"{\"code\": 200}\n", b"[" * 5000 + b"\n", b"x" * (200 * 1024), b"{\"code\": \"200\", \"status\": 1}\n"):
        side = AcceptSocket(lambda r, w, reply=reply: (r.readline(), w.write(reply))) if reply else None
        srv = ba.server(("127.0.0.1", 0), side.path if side else str(tmp_path / "none.sock"))
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=20)
            conn.request("GET", f"/?nonce={NONCE.hex()}")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            conn.close()
        finally:
            srv.shutdown()
            srv.server_close()
            if side:
                side.stop()
        assert resp.status == 503 and doc["status"] == "quote-failed" and "quote" not in doc
        assert doc["detail"].startswith("the quote service gave no answer")


def test_the_quote_side_checks_its_line_itself(tmp_path: Path) -> None:
    root = guest(tmp_path / "root")
    for line in (b"", b"zz\n", b"ab" * 15 + b"\n", b"\xff" * 40 + b"\n"):
        code, fields = ba.answer(root, line, fake_tsm_class(ba.Tsm, fake_quote))
        assert code == 400 and fields["status"] == "bad-request", line


UNITS = ("sealbox-bob-attest.service", "sealbox-bob-attest-quote.socket", "sealbox-bob-attest-quote@.service")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_the_units_are_ones_systemd_accepts(tmp_path: Path) -> None:
    """systemd's own parser reads every directive; the one thing it may miss here is the program, not installed."""
    from sealbox.spec.load import modules_dir

    texts = {name: (modules_dir() / "bob" / name).read_text() for name in UNITS}
    assert "ExecStart=/usr/lib/sealbox/bob/bob-attest serve @PORT@\n" in texts[UNITS[0]]
    assert f"ListenStream={ba.QUOTE_SOCKET}\n" in texts[UNITS[1]] and "Accept=yes\n" in texts[UNITS[1]]
    assert "ExecStart=/usr/lib/sealbox/bob/bob-attest quote\n" in texts[UNITS[2]]
    for name, text in texts.items():
        (tmp_path / name).write_text(text.replace("@PORT@", "8745"))
    out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in UNITS)], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    complaints = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    assert complaints and all("/usr/lib/sealbox/bob/bob-attest is not executable" in ln for ln in complaints), complaints
