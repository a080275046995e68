#!/usr/bin/python3 -I
"""bob's attested first contact (guest side): a TDX quote that binds the SSH host key(s) to a client's nonce.

Installed as /usr/lib/sealbox/bob/bob-attest, in two parts so that the network-facing one holds no privilege:
  bob-attest serve PORT   HTTP on the attestation port ([bob] attestation_port; open in every mode), as an
                          unprivileged user: parses the request, relays the nonce to the quote side, passes its answer on
  bob-attest quote        the quote side, root (socket-activated per connection on QUOTE_SOCKET, stdin/stdout): reads
                          one line (the nonce in hex), reads the host keys, gets the quote, writes one JSON line
One request: `GET /?nonce=HEX`, the nonce 16..64 bytes the client chose (32..128 hex digits). The answer is JSON
(schema "sealbox.bob.hostkey-quote/v1"):
  200 {"status": "quote", "binding": "sealbox-bob-ssh-hostkeys-v1", "nonce": HEX, "host_keys": ["TYPE BASE64", ...],
       "quote": BASE64}   the quote's REPORTDATA (64 bytes) is binding(nonce, host key blobs), below
  501 {"status": "not-a-td", "detail": ...}      no TDX here: no quote, and no key either (nothing unattested)
  503 {"status": "no-quote" | "no-host-key" | "quote-failed", "detail": ...}
  400/404/405 {"status": "bad-request", "detail": ...}
The binding (docs/modules.md, bob; sealbox.attest.hostkey checks it on the host):
  REPORTDATA = SHA-512( "sealbox-bob-ssh-hostkeys-v1" NUL || u32be(len nonce) || nonce || u32be(count)
                        || for each host key blob, in ascending byte order: u32be(len blob) || blob )
where a blob is the key's SSH wire-format public key (the base64 field of its .pub line). The keys are every
/run/sealbox/ssh/ssh_host_*_key.pub, where sealbox's sshd keeps its host keys (made in RAM at every boot), read at
each request. Only public files are read. The quote comes from configfs-tsm (/sys/kernel/config/tsm/report; Linux
>= 6.7): make an entry, check its provider is tdx_guest, write REPORTDATA to inblob, read outblob, and refuse the
answer if the entry's generation changed meanwhile (someone else wrote to it). The quote side needs uid 0, as the
owner of that directory and of the host keys' (0700), but no capability. Its socket offers nothing the network port
does not. Requests are bounded in size and time and served one at a time. Stdlib only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import socket
import struct
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import BinaryIO

SCHEMA = "sealbox.bob.hostkey-quote/v1"
BINDING = "sealbox-bob-ssh-hostkeys-v1"
LABEL = BINDING.encode() + b"\x00"
KEY_DIR = "run/sealbox/ssh"
TSM_DIR = "sys/kernel/config/tsm/report"
MIN_NONCE, MAX_NONCE = 16, 64
MAX_KEYS = 8
MAX_BLOB = 4096  # an RSA-16384 public key is ~2 KiB
MAX_QUOTE = 32 * 1024  # the kernel's TSM_REPORT_OUTBLOB_MAX
MAX_SMALL = 4096
REQUEST_TIMEOUT = 10
QUOTE_TIMEOUT = 60  # a quote goes through the host's quote generation service
QUOTE_SOCKET = "/run/sealbox-bob/attest.sock"
MAX_ANSWER = 128 * 1024  # the quote side's JSON line: a base64 quote of MAX_QUOTE and the keys fit
NONCE_RE = re.compile(r"nonce=([^&]*)")
HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})+")
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa")
KEY_LINE_RE = re.compile(r"([a-z0-9-]+) ([A-Za-z0-9+/]+={0,2})(?: [\x20-\x7e]*)?")


class NotTd(Exception):
    """No TDX: there is no quote to give."""


class QuoteFailed(Exception):
    """configfs-tsm is there but gave no usable quote."""


def binding(nonce: bytes, blobs: list[bytes]) -> bytes:
    """The 64 bytes of REPORTDATA that bind these host key blobs (any order) to the nonce."""
    msg = [LABEL, struct.pack(">I", len(nonce)), nonce, struct.pack(">I", len(blobs))]
    for blob in sorted(blobs):
        msg += [struct.pack(">I", len(blob)), blob]
    return hashlib.sha512(b"".join(msg)).digest()


def key_blob(line: str) -> tuple[str, bytes]:
    """(type, wire-format blob) of a public key line "TYPE BASE64 [comment]"; ValueError with the reason."""
    m = KEY_LINE_RE.fullmatch(line.strip())
    if not m or m.group(1) not in KEY_TYPES:
        raise ValueError(f"not a public key line of a known type ({', '.join(KEY_TYPES)})")
    try:
        blob = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    kind = m.group(1).encode()
    if len(blob) > MAX_BLOB or not blob.startswith(struct.pack(">I", len(kind)) + kind):
        raise ValueError(f"the key's data does not start with its type {m.group(1)} (or is over {MAX_BLOB} bytes)")
    if kind == b"ssh-ed25519" and len(blob) != 4 + len(kind) + 4 + 32:
        raise ValueError("the key's data is not one ed25519 public key (type and 32 bytes)")
    return m.group(1), blob


def read_small(path: Path, limit: int = MAX_SMALL) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path.name} is larger than {limit} bytes")
    return data


def host_keys(root: Path) -> list[tuple[str, bytes]]:
    """Every host public key sshd uses, sorted by blob; ValueError naming the file that is not one."""
    keys: dict[bytes, str] = {}
    for pub in sorted((root / KEY_DIR).glob("ssh_host_*_key.pub")):
        try:
            text = read_small(pub).decode("ascii")
            kind, blob = key_blob(text.splitlines()[0] if text else "")
        except (OSError, UnicodeDecodeError, IndexError, ValueError) as e:
            raise ValueError(f"{pub.name}: {e}") from None
        keys[blob] = kind
    if len(keys) > MAX_KEYS:
        raise ValueError(f"more than {MAX_KEYS} host keys")
    return [(keys[b], b) for b in sorted(keys)]


def is_td(root: Path) -> bool:
    """The tdx_guest CPU flag (the kernel sets it in a TD)."""
    try:
        with open(root / "proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:  # every CPU lists the same flags: the first list answers
                if line.startswith("flags"):
                    return "tdx_guest" in line.partition(":")[2].split()
    except OSError:
        pass
    return False


class Tsm:
    """One quote from configfs-tsm. `make_entry`/`remove_entry` are the only calls tests replace (tests/faketsm.py)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def make_entry(self, entry: Path) -> None:
        os.mkdir(entry, 0o700)

    def remove_entry(self, entry: Path) -> None:
        os.rmdir(entry)  # configfs removes the entry with its attributes

    def quote(self, report_data: bytes) -> bytes:
        entry = self.base / f"bob-attest-{secrets.token_hex(8)}"
        try:
            self.make_entry(entry)
        except OSError as e:
            raise QuoteFailed(f"configfs-tsm: cannot make a report entry: {e.strerror}") from None
        try:
            provider = read_small(entry / "provider").decode(errors="replace").strip()
            if provider != "tdx_guest":
                raise NotTd(f"the attestation provider is {provider[:40]!r}, not tdx_guest: there is no TDX quote to give")
            fd = os.open(entry / "inblob", os.O_WRONLY)  # no O_TRUNC: configfs commits the write on close
            try:
                os.write(fd, report_data)
            finally:
                os.close(fd)
            generation = read_small(entry / "generation")
            out = read_small(entry / "outblob", MAX_QUOTE)
            if read_small(entry / "generation") != generation:
                raise QuoteFailed("the report entry changed while it was read (another writer): ask again")
        except OSError as e:
            raise QuoteFailed(f"configfs-tsm: {e.strerror or e} (is the host's quote generation service there?)") from None
        except ValueError as e:
            raise QuoteFailed(f"configfs-tsm: {e}") from None
        finally:
            try:
                self.remove_entry(entry)
            except OSError as e:
                sys.stderr.write(f"bob-attest: cannot remove {entry}: {e.strerror}\n")
        if not out:
            raise QuoteFailed("configfs-tsm gave an empty quote")
        return out


def parse_nonce(path: str) -> bytes:
    """The nonce of "/?nonce=HEX"; ValueError otherwise (the caller has checked the path part)."""
    query = path.partition("?")[2]
    m = NONCE_RE.fullmatch(query)
    if not m:
        raise ValueError("give ?nonce=HEX and nothing else: a nonce you chose, 16 to 64 bytes")
    text = m.group(1)
    if not HEX_RE.fullmatch(text) or not MIN_NONCE <= len(text) // 2 <= MAX_NONCE:
        raise ValueError(f"the nonce must be {MIN_NONCE} to {MAX_NONCE} bytes (32 to 128 hex digits)")
    return bytes.fromhex(text)


def answer(root: Path, line: bytes, tsm_cls: type[Tsm] = Tsm) -> tuple[int, dict[str, object]]:
    """The quote side: (HTTP status, JSON fields) for one nonce line. Root's part: reads keys, makes the quote."""
    try:
        nonce = parse_nonce("/?nonce=" + line.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError) as e:
        return 400, {"status": "bad-request", "detail": str(e) if isinstance(e, ValueError) else "not ASCII"}
    if not is_td(root):
        return 501, {"status": "not-a-td", "detail": "this guest is not a TDX TD (no tdx_guest CPU flag): there is no quote to give"}
    tsm = root / TSM_DIR
    if not tsm.is_dir():
        return 503, {"status": "no-quote", "detail": f"this TD has no configfs-tsm report interface (/{TSM_DIR}): no quote"}
    try:
        keys = host_keys(root)
    except ValueError as e:
        return 503, {"status": "no-host-key", "detail": str(e)}
    if not keys:
        return 503, {"status": "no-host-key", "detail": f"no SSH host key in /{KEY_DIR} (yet)"}
    try:
        quote = tsm_cls(tsm).quote(binding(nonce, [b for _, b in keys]))
    except NotTd as e:
        return 501, {"status": "not-a-td", "detail": str(e)}
    except QuoteFailed as e:
        return 503, {"status": "quote-failed", "detail": str(e)}
    return 200, {"status": "quote", "binding": BINDING, "nonce": nonce.hex(),
                 "host_keys": [f"{kind} {base64.b64encode(blob).decode()}" for kind, blob in keys],
                 "quote": base64.b64encode(quote).decode()}


def serve_quote(root: Path, rfile: BinaryIO, wfile: BinaryIO, tsm_cls: type[Tsm] = Tsm) -> None:
    """One connection of the quote side: one nonce line in, one JSON line {"code": N, ...} out."""
    code, fields = answer(root, rfile.readline(MAX_NONCE * 2 + 2), tsm_cls)
    wfile.write((json.dumps({"code": code, **fields}, sort_keys=True) + "\n").encode())
    wfile.flush()


def ask(sock_path: str, nonce: bytes) -> tuple[int, dict[str, object]]:
    """The HTTP side's call to the quote side; a dead or odd quote side is a 503, never a quote."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(QUOTE_TIMEOUT)
            s.connect(sock_path)
            s.sendall(nonce.hex().encode() + b"\n")
            with s.makefile("rb") as f:
                line = f.readline(MAX_ANSWER + 1)
        if len(line) > MAX_ANSWER:
            raise ValueError("too long")
        doc = json.loads(line)
        code = doc.pop("code")
        if not isinstance(code, int) or not isinstance(doc.get("status"), str):
            raise ValueError("malformed")
    except (OSError, ValueError, KeyError, AttributeError, RecursionError) as e:
        return 503, {"status": "quote-failed", "detail": f"the quote service gave no answer ({type(e).__name__})"}
    return code, doc


class Handler(BaseHTTPRequestHandler):
    quote_socket = QUOTE_SOCKET
    timeout = REQUEST_TIMEOUT
    server_version = "bob-attest"
    sys_version = ""

    def _answer(self, code: int, fields: dict[str, object]) -> None:
        body = (json.dumps({"schema": SCHEMA, **fields}, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.partition("?")[0] != "/":
            return self._answer(404, {"status": "bad-request", "detail": "GET /?nonce=HEX"})
        try:
            nonce = parse_nonce(self.path)
        except ValueError as e:
            return self._answer(400, {"status": "bad-request", "detail": str(e)})
        return self._answer(*ask(self.quote_socket, nonce))

    def do_POST(self) -> None:  # noqa: N802
        self._answer(405, {"status": "bad-request", "detail": "GET /?nonce=HEX"})

    do_PUT = do_DELETE = do_PATCH = do_POST  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"bob-attest: {self.address_string()} {format % args}\n")


def server(address: tuple[str, int], quote_socket: str = QUOTE_SOCKET) -> HTTPServer:
    handler = type("SocketHandler", (Handler,), {"quote_socket": quote_socket})
    return HTTPServer(address, handler)


def main(argv: list[str]) -> int:
    if argv == ["quote"]:
        serve_quote(Path("/"), sys.stdin.buffer, sys.stdout.buffer)
        return 0
    if len(argv) != 2 or argv[0] != "serve" or not argv[1].isdigit() or not 1 <= int(argv[1]) <= 65535:
        print("usage: bob-attest serve PORT | bob-attest quote", file=sys.stderr)
        return 2
    with server(("0.0.0.0", int(argv[1]))) as srv:
        srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
