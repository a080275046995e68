#!/usr/bin/python3 -I
"""bob's one-time key registration (guest side, root): one ed25519 public key for `searcher`, once.

Installed as /usr/lib/sealbox/bob/bob-keyreg. Serves HTTP on the key registration port ([bob]
key_registration_port; the mode rule sets open it in maintenance only):
  POST /   body: one OpenSSH public key line, "ssh-ed25519 BASE64 [comment]"
    201  the key is installed as searcher's only authorized key (written without its comment)
    409  a key is already registered: every later attempt, whatever it sends
    403  /persistent is mounted: registration is over once the disk is initialised
    400  not exactly one ed25519 public key (the reason in the body); 411/413/405/404 as HTTP says
The key file (/run/sealbox-bob/authorized_keys, root-owned, 0644: sshd reads it for searcher) is made with
link(2) from a finished temporary file, so of two requests at once exactly one wins and no half-written key is
ever read. Requests are small and bounded in size and time. Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import struct
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

KEY_FILE = "run/sealbox-bob/authorized_keys"
PERSISTENT = "/persistent"
MAX_BODY = 1024
REQUEST_TIMEOUT = 10
KEY_RE = re.compile(r"ssh-ed25519 ([A-Za-z0-9+/]+={0,2})( [\x20-\x7e]*)?")
ED25519 = b"ssh-ed25519"


class Invalid(Exception):
    """Why a body is not exactly one ed25519 public key."""


def parse_key(body: bytes) -> str:
    """The canonical authorized_keys line ("ssh-ed25519 BASE64\\n") of a body holding one ed25519 public key."""
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise Invalid("not ASCII text") from None
    line = text[:-1] if text.endswith("\n") else text
    if "\n" in line or "\r" in line:
        raise Invalid("more than one line: send exactly one public key")
    m = KEY_RE.fullmatch(line)
    if not m:
        raise Invalid("not an ssh-ed25519 public key line ('ssh-ed25519 BASE64 [comment]'; other key types are refused)")
    try:
        blob = base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the key is not valid base64") from None
    # the wire format: string "ssh-ed25519", then string of the 32-byte public key, and nothing after
    want = struct.pack(">I", len(ED25519)) + ED25519 + struct.pack(">I", 32)
    if len(blob) != len(want) + 32 or not blob.startswith(want):
        raise Invalid("the key's data is not one ed25519 public key (type and 32 bytes)")
    return f"ssh-ed25519 {base64.b64encode(blob).decode()}\n"


def mounted(root: Path, point: str = PERSISTENT) -> bool:
    """Whether `point` is a mount point, from <root>/proc/self/mountinfo (field 5; octal escapes as the kernel writes)."""
    try:
        text = (root / "proc/self/mountinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(len(f) > 4 and f[4].encode().decode("unicode_escape") == point for f in (ln.split(" ") for ln in text.splitlines()))


def install(root: Path, line: str) -> bool:
    """Create the key file with `line`, unless it exists: True if this call made it."""
    path = root / KEY_FILE
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".key.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # whatever the umask: sshd, as searcher's session, must read it
        try:
            os.link(tmp, path)  # fails if a key is there: the first registration wins
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


class Handler(BaseHTTPRequestHandler):
    root = Path("/")
    timeout = REQUEST_TIMEOUT
    server_version = "bob-keyreg"
    sys_version = ""

    def _answer(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=us-ascii")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != "/":
            return self._answer(404, "POST the key to /")
        if (self.root / KEY_FILE).exists():
            return self._answer(409, "a key is already registered; registration happens once")
        if mounted(self.root):
            return self._answer(403, "registration is closed: /persistent is initialised")
        if self.headers.get("Transfer-Encoding"):
            return self._answer(411, "send a Content-Length, not a chunked body")
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():
            return self._answer(411, "a Content-Length is required")
        if int(length) > MAX_BODY:
            return self._answer(413, f"the body is larger than {MAX_BODY} bytes: send one public key")
        body = self.rfile.read(int(length))
        try:
            line = parse_key(body)
        except Invalid as e:
            return self._answer(400, f"refused: {e}")
        if not install(self.root, line):
            return self._answer(409, "a key is already registered; registration happens once")
        return self._answer(201, "registered: the key is searcher's")

    def do_GET(self) -> None:  # noqa: N802
        self._answer(405, "POST one ssh-ed25519 public key to /")

    do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        sys.stderr.write(f"bob-keyreg: {self.address_string()} {format % args}\n")


def server(root: Path, address: tuple[str, int]) -> HTTPServer:
    handler = type("RootHandler", (Handler,), {"root": root})
    return HTTPServer(address, handler)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or not 1 <= int(argv[0]) <= 65535:
        print("usage: bob-keyreg PORT", file=sys.stderr)
        return 2
    with server(Path("/"), ("0.0.0.0", int(argv[0]))) as srv:
        srv.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
