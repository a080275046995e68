"""Attested first contact with a bob guest: does a quote's REPORTDATA bind these SSH host keys to this nonce?

The binding (docs/modules.md, bob; the guest side is modules/bob/bob_attest.py, which cannot import this package):
    REPORTDATA = SHA-512( "sealbox-bob-ssh-hostkeys-v1" NUL || u32be(len nonce) || nonce || u32be(count)
                          || for each host key blob, in ascending byte order: u32be(len blob) || blob )
A blob is the key's SSH wire-format public key (the base64 field of its .pub line); the nonce (16..64 bytes) is the
client's. A quote that verifies and carries this REPORTDATA says: a TD with these measurements had exactly these
host keys when it was asked with this nonce. Only a client that chose the nonce itself, just before asking, knows the
quote is not replayed from an earlier boot.

The endpoint's answer is hostile input: it is size-capped, parsed strictly, and every defect is one line naming the
source (AttestInputError, exit 2). An answer that carries no quote ("not-a-td" and the like) is an AttestError
(exit 1) that says so: it is never rendered as anything that looks like a pass.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import http.client
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sealbox.attest import AttestInputError
from sealbox.attest.quote import Quote
from sealbox.attest.verify import Check
from sealbox.errors import AttestError

# The guest's endpoint script is the one definition of the binding: the guest runs it, the host checks with it.
from sealbox.modules.bob.bob_attest import (
    BINDING,
    MAX_ANSWER,
    MAX_BLOB,
    MAX_KEYS,
    MAX_NONCE,
    MAX_QUOTE,
    MIN_NONCE,
    SCHEMA,
    binding,
    key_blob,
)

FETCH_TIMEOUT = 20.0
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})+")


@dataclass(frozen=True)
class HostKey:
    kind: str
    blob: bytes

    @property
    def line(self) -> str:
        return f"{self.kind} {base64.b64encode(self.blob).decode()}"

    @property
    def fingerprint(self) -> str:
        """As `ssh-keygen -l` prints it."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")

    def describe(self) -> str:
        return f"{self.fingerprint} ({self.kind})"


def parse_hostkey(text: str) -> HostKey:
    """A public key line "TYPE BASE64 [comment]"; ValueError with the reason (the caller names where it came from)."""
    if len(text) > 3 * MAX_BLOB:
        raise ValueError(f"not a public key line: over {3 * MAX_BLOB} characters")
    return HostKey(*key_blob(text))


def parse_hostkeys(texts: list[str], what: Callable[[int, str], str], twice: Callable[[HostKey], str]) -> list[HostKey]:
    """Several keys; what(i, text) names one that is not a key, twice(key) is the error for a repeated key."""
    keys: list[HostKey] = []
    for i, text in enumerate(texts):
        try:
            key = parse_hostkey(text)
        except ValueError as e:
            raise AttestInputError(f"{what(i, shown(text))}: {e}") from None
        if key in keys:
            raise AttestInputError(twice(key))
        keys.append(key)
    return keys


def parse_nonce(text: object, what: str) -> bytes:
    if not isinstance(text, str) or not _HEX.fullmatch(text) or not MIN_NONCE <= len(text) // 2 <= MAX_NONCE:
        raise AttestInputError(f"{what}: {MIN_NONCE} to {MAX_NONCE} bytes as hex ({2 * MIN_NONCE} to {2 * MAX_NONCE} digits)")
    return bytes.fromhex(text)


def _keys_text(keys: list[HostKey]) -> str:
    return ", ".join(k.describe() for k in sorted(keys, key=lambda k: k.blob))


def check_binding(q: Quote, keys: list[HostKey], nonce: bytes) -> Check:
    """REPORTDATA against the binding of exactly `keys` and `nonce`."""
    want = binding(nonce, [k.blob for k in keys])
    what = f"the {BINDING} binding of nonce {nonce.hex()} and exactly these host keys: {_keys_text(keys)}"
    got = q.body.report_data
    if got == want:
        return Check("ssh_hostkey_binding", True, f"REPORTDATA is {what}")
    return Check("ssh_hostkey_binding", False, f"the quote's REPORTDATA {got.hex()} is not {what} ({want.hex()}): "
                                               "this quote was not made for these keys with this nonce")


def check_nonce(got: bytes, want: bytes, whose: str) -> Check:
    if got == want:
        return Check("nonce", True, f"the answer is for {whose} ({want.hex()})")
    return Check("nonce", False, f"the answer is for nonce {got.hex()}, not {whose} ({want.hex()}): a replayed or mixed-up answer")


def check_given(bound: list[HostKey], given: list[HostKey]) -> Check:
    missing = [k for k in given if k not in bound]
    if missing:
        return Check("ssh_hostkey", False, f"the key you gave ({missing[0].fingerprint}, {missing[0].kind}) is not among the "
                                           f"host keys the quote binds ({', '.join(k.fingerprint for k in bound)}): do not trust it")
    return Check("ssh_hostkey", True, f"{'; '.join(k.describe() for k in given)}, the key you gave, is one the quote binds")


@dataclass(frozen=True)
class Answer:
    nonce: bytes
    keys: list[HostKey]
    quote: bytes


def shown(text: object, limit: int = 160) -> str:
    """A hostile string made printable and short, for an error line."""
    s = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return s if len(s) <= limit else s[:limit] + "..."


def parse_answer(data: bytes, where: str) -> Answer:
    """The endpoint's JSON answer; AttestInputError naming `where` for a malformed one, AttestError if it has no quote."""
    if not data:
        raise AttestInputError(f"{where}: the answer is empty")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise AttestInputError(f"{where}: the answer is not JSON ({shown(e, 80)})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise AttestInputError(f"{where}: the answer is not a bob-attest answer (schema {SCHEMA})")
    status = doc.get("status")
    if status != "quote":
        detail = shown(doc.get("detail", ""))
        if status == "not-a-td":
            raise AttestError(f"no quote: the guest is not a TDX TD ({where} says: {detail})")
        raise AttestError(f"no quote: {where} answered {shown(status, 40)!r}: {detail}")
    if doc.get("binding") != BINDING:
        raise AttestInputError(f"{where}: binding {shown(doc.get('binding'), 60)!r} is not {BINDING} (a newer guest?)")
    nonce = parse_nonce(doc.get("nonce"), f"{where}: nonce")
    texts = doc.get("host_keys")
    if not isinstance(texts, list) or not 1 <= len(texts) <= MAX_KEYS or not all(isinstance(t, str) for t in texts):
        raise AttestInputError(f"{where}: host_keys: 1 to {MAX_KEYS} keys, each a 'TYPE BASE64' string")
    keys = parse_hostkeys(texts, lambda i, _t: f"{where}: host_keys[{i}]",
                          lambda k: f"{where}: host_keys: a key is listed twice ({k.fingerprint})")
    raw = doc.get("quote")
    try:
        quote = base64.b64decode(raw, validate=True) if isinstance(raw, str) and len(raw) <= 2 * MAX_QUOTE else None
    except (binascii.Error, ValueError):
        quote = None
    if not quote or len(quote) > MAX_QUOTE:
        raise AttestInputError(f"{where}: quote: not base64 of a quote of at most {MAX_QUOTE} bytes")
    return Answer(nonce, keys, quote)


def endpoint(url: str) -> tuple[str, int]:
    """http://ADDRESS:PORT[/] -> (host, port); AttestInputError otherwise."""
    bad = f"{shown(url, 80)!r} is not http://ADDRESS:PORT (the guest's attestation endpoint, [bob] attestation_port)"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise AttestInputError(bad) from None
    if parts.scheme != "http" or not parts.hostname:
        raise AttestInputError(bad)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None or parts.password is not None:
        raise AttestInputError(f"{shown(url, 80)!r}: nothing after the port (the nonce is sealbox's to add), and no user")
    if port is None or not 1 <= port <= 65535:
        raise AttestInputError(bad)
    return parts.hostname, port


def fetch(url: str, nonce: bytes, timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET /?nonce=HEX from the endpoint; the body, capped (whatever the HTTP status: the JSON says what happened)."""
    host, port = endpoint(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", f"/?nonce={nonce.hex()}", headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as e:
        raise AttestInputError(f"cannot fetch an answer from {url}: {shown(e, 120)}") from None
    finally:
        conn.close()
    if len(body) > MAX_ANSWER:
        raise AttestInputError(f"{url}: the answer is larger than {MAX_ANSWER} bytes")
    return body


def fresh_nonce() -> bytes:
    return secrets.token_bytes(32)
