"""Attested first contact with a bob guest, host side: `attest quote QUOTE --ssh-hostkey KEY --nonce HEX` and
`attest hostkey ANSWER|URL` check that a quote's REPORTDATA binds the SSH host key(s) to the nonce (docs/modules.md,
bob). Synthetic quotes (quotegen.py) carry the right or a wrong REPORTDATA; the guest side's endpoint (bob_attest.py)
runs on the loopback in front of a stand-in configfs-tsm (tests/faketsm.py) that answers with such quotes."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from quotegen import T0, Pki, build_quote

from bobguest import load
from faketsm import AcceptSocket, fake_tsm_class
from sealbox.attest import verify
from sealbox.cli.main import main

AT = f"{T0 + timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
NONCE = bytes(range(100, 132))
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom"
OTHER = "ssh-ed25519 " + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))).decode()
SCHEMA = "sealbox.bob.hostkey-quote/v1"


def blob(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def fp(line: str) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob(line)).digest()).decode().rstrip("=")


def bind(nonce: bytes, *keys: str) -> bytes:
    """The binding as docs/modules.md defines it, written out here independently of the code under test."""
    msg = b"sealbox-bob-ssh-hostkeys-v1\x00" + struct.pack(">I", len(nonce)) + nonce + struct.pack(">I", len(keys))
    for b in sorted(blob(k) for k in keys):
        msg += struct.pack(">I", len(b)) + b
    return hashlib.sha512(msg).digest()


@pytest.fixture
def pki(monkeypatch: pytest.MonkeyPatch) -> Pki:
    p = Pki()
    monkeypatch.setattr(verify, "INTEL_ROOT", p.anchor())
    return p


def quote_file(pki: Pki, tmp_path: Path, report_data: bytes) -> Path:
    q = tmp_path / f"quote-{report_data.hex()[:8]}.dat"
    q.write_bytes(build_quote(pki, report_data=report_data))
    return q


def answer(pki: Pki, tmp_path: Path, *, keys: tuple[str, ...] = (KEY,), nonce: bytes = NONCE,
           report_data: bytes | None = None, **override: Any) -> Path:  # fmt: skip
    """An endpoint's answer as a client saved it."""
    rd = bind(nonce, *keys) if report_data is None else report_data
    doc: dict[str, Any] = {"schema": SCHEMA, "status": "quote", "binding": "sealbox-bob-ssh-hostkeys-v1",
                           "nonce": nonce.hex(), "host_keys": list(keys),
                           "quote": base64.b64encode(build_quote(pki, report_data=rd)).decode()}  # fmt: skip
    doc.update(override)
    path = tmp_path / "answer.json"
    path.write_text(json.dumps(doc))
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["attest", *args, "--at", AT, "--signatures-only"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("sealbox: error: "), err
    return err


# --- attest quote QUOTE --ssh-hostkey KEY --nonce HEX --------------------------------------------------------------

def test_quote_binding_the_key_and_nonce_passes(capsys, pki: Pki, tmp_path: Path) -> None:
    q = quote_file(pki, tmp_path, bind(NONCE, KEY))
    code, out, err = run(capsys, "quote", str(q), "--ssh-hostkey", KEY + " root@guest", "--nonce", NONCE.hex())
    assert (code, err) == (0, ""), out
    assert (f"  [ok] ssh_hostkey_binding: REPORTDATA is the sealbox-bob-ssh-hostkeys-v1 binding of nonce {NONCE.hex()} "
            f"and exactly these host keys: {fp(KEY)} (ssh-ed25519)") in out


def test_quote_for_another_key_or_nonce_fails_with_one_line(capsys, pki: Pki, tmp_path: Path) -> None:
    q = quote_file(pki, tmp_path, bind(NONCE, KEY))
    code, out, err = run(capsys, "quote", str(q), "--ssh-hostkey", OTHER, "--nonce", NONCE.hex())
    assert code == 1 and out.splitlines()[-1] == "result: FAILED"
    assert (f"ssh_hostkey_binding: the quote's REPORTDATA {bind(NONCE, KEY).hex()} is not the sealbox-bob-ssh-hostkeys-v1 "
            f"binding of nonce {NONCE.hex()} and exactly these host keys: {fp(OTHER)} (ssh-ed25519)") in one_line(err)
    code, _, err = run(capsys, "quote", str(q), "--ssh-hostkey", KEY, "--nonce", bytes(32).hex())
    assert code == 1 and "is not the sealbox-bob-ssh-hostkeys-v1 binding of nonce 0000" in one_line(err)
    code, _, err = run(capsys, "quote", str(q), "--ssh-hostkey", KEY, "--ssh-hostkey", OTHER, "--nonce", NONCE.hex())
    assert code == 1 and "ssh_hostkey_binding: the quote's REPORTDATA" in one_line(err)  # the set must be exact


@pytest.mark.parametrize("args,has", [
    (["--ssh-hostkey", KEY], "--ssh-hostkey needs --nonce HEX"),
    (["--nonce", NONCE.hex()], "--nonce needs --ssh-hostkey"),
    (["--ssh-hostkey", KEY, "--nonce", "abc"], "--nonce 'abc': 16 to 64 bytes as hex"),
    (["--ssh-hostkey", KEY, "--nonce", "ab" * 15], "16 to 64 bytes as hex"),
    (["--ssh-hostkey", "ssh-ed25519 AAAA!", "--nonce", NONCE.hex()], "--ssh-hostkey 'ssh-ed25519 AAAA!': not a public key"),
    (["--ssh-hostkey", "ssh-dss AAAAB3NzaC1kc3M=", "--nonce", NONCE.hex()], "not a public key line of a known type"),
    (["--ssh-hostkey", "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQAB", "--nonce", NONCE.hex()], "does not start with its type"),
    (["--ssh-hostkey", KEY, "--ssh-hostkey", KEY + " again", "--nonce", NONCE.hex()], "given twice"),
])  # fmt: skip
def test_bad_key_or_nonce_is_bad_input(capsys, pki: Pki, tmp_path: Path, args: list[str], has: str) -> None:
    q = quote_file(pki, tmp_path, bind(NONCE, KEY))
    code, out, err = run(capsys, "quote", str(q), *args)
    assert code == 2 and out == "" and has in one_line(err)


# --- attest hostkey ANSWER ----------------------------------------------------------------------------------------

def test_answer_binding_the_key_passes_and_lists_the_keys(capsys, pki: Pki, tmp_path: Path) -> None:
    a = answer(pki, tmp_path, keys=(KEY, OTHER))
    code, out, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex(), "--ssh-hostkey", KEY)
    assert (code, err) == (0, ""), out
    assert f"  [ok] nonce: the answer is for the nonce you gave ({NONCE.hex()})" in out
    assert "  [ok] ssh_hostkey_binding: REPORTDATA is the sealbox-bob-ssh-hostkeys-v1 binding of nonce" in out
    assert f"  [ok] ssh_hostkey: {fp(KEY)} (ssh-ed25519), the key you gave, is one the quote binds" in out
    assert f"  bound host key: {KEY} ({fp(KEY)})" in out and f"  bound host key: {OTHER} ({fp(OTHER)})" in out
    code, out, _ = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex(), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ssh_host_keys"] == sorted([KEY, OTHER], key=blob)
    assert [c["name"] for c in doc["checks"]][-2:] == ["nonce", "ssh_hostkey_binding"]


def test_answer_failures_are_one_line(capsys, pki: Pki, tmp_path: Path) -> None:
    a = answer(pki, tmp_path)
    code, out, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex(), "--ssh-hostkey", OTHER)
    assert code == 1 and out.splitlines()[-1] == "result: FAILED"
    assert (f"ssh_hostkey: the key you gave ({fp(OTHER)}, ssh-ed25519) is not among the host keys the quote binds "
            f"({fp(KEY)}): do not trust it") in one_line(err)
    code, _, err = run(capsys, "hostkey", str(a), "--nonce", bytes(16).hex())
    assert code == 1 and f"nonce: the answer is for nonce {NONCE.hex()}, not the nonce you gave ({bytes(16).hex()})" in one_line(err)
    a = answer(pki, tmp_path, report_data=bind(NONCE, OTHER))  # lists KEY, but the quote binds OTHER
    code, _, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex(), "--ssh-hostkey", KEY)
    assert code == 1 and "ssh_hostkey_binding: the quote's REPORTDATA" in one_line(err)


def test_answer_without_nonce_is_refused(capsys, pki: Pki, tmp_path: Path) -> None:
    code, out, err = run(capsys, "hostkey", str(answer(pki, tmp_path)))
    assert code == 2 and out == "" and "give --nonce HEX, the nonce you sent" in one_line(err)


def test_not_a_td_is_no_quote_not_a_pass(capsys, tmp_path: Path) -> None:
    a = tmp_path / "answer.json"
    a.write_text(json.dumps({"schema": SCHEMA, "status": "not-a-td", "detail": "this guest is not a TDX TD (no tdx_guest "
                                                                               "CPU flag): there is no quote to give"}))
    code, out, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex())
    assert code == 1 and out == ""
    assert (f"no quote: the guest is not a TDX TD ({a} says: this guest is not a TDX TD (no tdx_guest CPU flag): there is no "
            "quote to give)") in one_line(err)
    a.write_text(json.dumps({"schema": SCHEMA, "status": "quote-failed", "detail": "x\x1b[31m" + "y" * 500}))
    code, out, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex())
    assert code == 1 and out == "" and f"no quote: {a} answered 'quote-failed': x?[31myyy" in one_line(err)
    assert len(err) < 400  # a hostile detail is cut and made printable


def hostile(pki: Pki) -> list[tuple[str, bytes, str]]:
    good = {"schema": SCHEMA, "status": "quote", "binding": "sealbox-bob-ssh-hostkeys-v1", "nonce": NONCE.hex(),
            "host_keys": [KEY], "quote": base64.b64encode(build_quote(pki, report_data=bind(NONCE, KEY))).decode()}
    text = json.dumps(good).encode()

    def with_(**kw: Any) -> bytes:
        return json.dumps({**good, **kw}).encode()

    return [
        ("truncated", text[: len(text) // 2], "is not JSON"),
        ("empty", b"", "is empty"),
        ("not utf-8", b"\xff\xfe{}", "is not JSON"),
        ("deep", b"[" * 50000 + b"]" * 50000, "is not JSON"),
        ("list", b"[]", "is not a bob-attest answer"),
        ("schema", with_(schema="other/v9"), "is not a bob-attest answer"),
        ("binding", with_(binding="v0"), "binding 'v0' is not sealbox-bob-ssh-hostkeys-v1"),
        ("no keys", with_(host_keys=[]), "host_keys: 1 to 8 keys"),
        ("keys type", with_(host_keys="ssh-ed25519 AAAA"), "host_keys: 1 to 8 keys"),
        ("many keys", with_(host_keys=[KEY] * 9), "host_keys: 1 to 8 keys"),
        ("key", with_(host_keys=[KEY[:-4]]), "host_keys[0]:"),
        ("dup", with_(host_keys=[KEY, KEY]), "host_keys: a key is listed twice"),
        ("nonce", with_(nonce=12), "nonce: 16 to 64 bytes as hex"),
        ("quote b64", with_(quote="!!!"), "quote: not base64"),
        ("quote type", with_(quote=None), "quote: not base64"),
        ("quote cut", with_(quote=good["quote"][:400]), "truncated at offset"),
        ("huge", b" " * (300 * 1024), "larger than"),
    ]


def test_truncated_or_hostile_answers_are_one_line_errors(capsys, pki: Pki, tmp_path: Path) -> None:
    for name, body, has in hostile(pki):
        a = tmp_path / f"{name.replace(' ', '-')}.json"
        a.write_bytes(body)
        code, out, err = run(capsys, "hostkey", str(a), "--nonce", NONCE.hex())
        assert code == 2 and out == "", name
        assert has in one_line(err) and str(a) in err, (name, err)


# --- attest hostkey URL: the guest's endpoint in front of a stand-in configfs-tsm -----------------------------------

@pytest.fixture
def guest_endpoint(pki: Pki, tmp_path: Path) -> Iterator[Any]:
    ba = load("bob_attest")  # a fresh copy: quieting its request log here touches no other test
    ba.Handler.log_message = lambda *_args: None  # it writes to stderr, where only sealbox's one line may be
    servers: list[Any] = []

    def start(td: bool = True) -> tuple[str, str]:
        root = tmp_path / f"guest{len(servers)}"
        (root / ba.KEY_DIR).mkdir(parents=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(root / ba.KEY_DIR / "ssh_host_ed25519_key")],
                       check=True, timeout=60)  # fmt: skip
        (root / "proc").mkdir()
        (root / "proc/cpuinfo").write_text(f"flags\t\t: fpu msr{' tdx_guest' if td else ''}\n")
        (root / ba.TSM_DIR).mkdir(parents=True)
        tsm = fake_tsm_class(ba.Tsm, lambda inblob: build_quote(pki, report_data=inblob))
        side = AcceptSocket(lambda r, w: ba.serve_quote(root, r, w, tsm))
        srv = ba.server(("127.0.0.1", 0), side.path)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append((srv, side))
        key = " ".join((root / ba.KEY_DIR / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        return f"http://127.0.0.1:{srv.server_address[1]}", key

    yield start
    for srv, side in servers:
        srv.shutdown()
        srv.server_close()
        side.stop()


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs OpenSSH's ssh-keygen")
def test_fetch_from_the_endpoint_checks_the_binding_with_a_fresh_nonce(capsys, guest_endpoint: Any) -> None:
    url, key = guest_endpoint()
    code, out, err = run(capsys, "hostkey", url, "--ssh-hostkey", key)
    assert (code, err) == (0, ""), out
    assert "  [ok] nonce: the answer is for the nonce sealbox chose for this request (" in out
    assert f"  [ok] ssh_hostkey: {fp(key)} (ssh-ed25519), the key you gave, is one the quote binds" in out
    code, out, err = run(capsys, "hostkey", url, "--ssh-hostkey", OTHER)
    assert code == 1 and "ssh_hostkey: the key you gave" in one_line(err)
    code, out, _ = run(capsys, "hostkey", url + "/", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ssh_host_keys"] == [key]
    nonces = {c["detail"] for c in doc["checks"] if c["name"] == "nonce"}
    code, out, _ = run(capsys, "hostkey", url, "--json")
    assert nonces != {c["detail"] for c in json.loads(out)["checks"] if c["name"] == "nonce"}  # a new nonce each time


@pytest.mark.skipif(not shutil.which("ssh-keygen"), reason="needs OpenSSH's ssh-keygen")
def test_fetch_from_a_guest_that_is_not_a_td(capsys, guest_endpoint: Any) -> None:
    url, _ = guest_endpoint(td=False)
    code, out, err = run(capsys, "hostkey", url)
    assert code == 1 and out == ""
    assert f"no quote: the guest is not a TDX TD ({url} says: this guest is not a TDX TD" in one_line(err)


@pytest.mark.parametrize("url,has", [
    ("http://127.0.0.1", "ADDRESS:PORT"),
    ("https://127.0.0.1:8745", "http://ADDRESS:PORT"),
    ("http://127.0.0.1:8745/path", "nothing after the port"),
    ("http://user@127.0.0.1:8745", "nothing after the port"),
    ("http://127.0.0.1:99999", "ADDRESS:PORT"),
])  # fmt: skip
def test_bad_url_is_bad_input(capsys, url: str, has: str) -> None:
    code, out, err = run(capsys, "hostkey", url)
    assert code == 2 and out == "" and has in one_line(err)
