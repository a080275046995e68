"""The restore agent's exchange, host side (guest/files/agent.sh is the guest side; docs/guest-protocol.md the prose).

    host -> guest   SEALBOX-RESTORE-V1 <nonce: 64 hex>
                    time=<seconds since the epoch>
                    END
                    <512 random bytes: read by /usr/lib/sealbox/reseed straight from the port, no shell sees them>
    guest -> host   SEALBOX-RESTORED <nonce>
                    SEALBOX-HOSTKEY <type> <base64>          exactly one: the key the agent just generated
                    -----BEGIN SSH SIGNATURE----- ... -----END SSH SIGNATURE-----
                    SEALBOX-RESTORE-END <nonce>
             or     SEALBOX-RESTORE-FAILED <nonce> <step>

A restored guest has run user code before (in the snapshot's source), so the console's rule — trust what comes before
the ready marker — means nothing here; what it writes on the port is hostile too. What the host accepts: only the
answer to *this* request (the nonce is fresh, so output queued in the snapshot before it was taken, or written by
anything that has not seen the request, never matches); lines before `SEALBOX-RESTORED <nonce>` are skipped; after it,
every line must be exactly as above, within MAX_ANSWER bytes. The signature (SSHSIG, namespace restore@sealbox) over
the answer's first lines must be made with the reported key: the host checks it with `ssh-keygen -Y verify`
(sandbox/restore.py), so a guest cannot have the host pin a key it does not hold (another sandbox's, say).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

from sealbox.errors import SandboxError
from sealbox.guest.console import HostKey, parse_hostkey
from sealbox.guest.protocol import HOSTKEY, INSTANCE_END, RESTORE_END, RESTORE_FAILED, RESTORE_REQUEST, RESTORED

ENTROPY_BYTES = 512  # exactly what the reseed program reads (guest/reseed.py): it stops there, not at an end of file
MAX_ANSWER = 64 * 1024  # everything the host reads from the port for one restore
MAX_SIGNATURE_LINES = 32  # an ed25519 SSHSIG armours into 6
SIG_BEGIN, SIG_END = "-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----"
_NONCE_RE = re.compile(r"^[0-9a-f]{64}$")
_STEP_RE = re.compile(r"^[a-z-]{1,32}$")
_ARMOR_RE = re.compile(r"^[A-Za-z0-9+/]{1,76}={0,2}$")


class AgentError(SandboxError):
    """The restored guest's agent failed, or said something that is not an answer to this request."""


def new_nonce() -> str:
    return secrets.token_hex(32)


def request(nonce: str, entropy: bytes, now: float) -> bytes:
    if not _NONCE_RE.fullmatch(nonce) or len(entropy) != ENTROPY_BYTES:
        raise ValueError(f"a restore request needs a 64-hex nonce and {ENTROPY_BYTES} bytes of entropy")
    lines = [f"{RESTORE_REQUEST} {nonce}", f"time={now:.6f}", INSTANCE_END]
    return ("\n".join(lines) + "\n").encode("ascii") + entropy


@dataclass
class Answer:
    hostkey: HostKey
    message: bytes  # what the signature covers: the RESTORED line and the HOSTKEY line, each ending in a newline
    signature: str  # the armoured SSHSIG


@dataclass
class AnswerParser:
    """Feed the bytes read from the agent's port as they come; `done` once the answer is complete."""

    nonce: str
    state: str = "before"  # before -> keys -> signature -> end -> done
    keys: list[HostKey] = field(default_factory=list)
    sig: list[str] = field(default_factory=list)
    seen: int = 0
    _partial: bytes = b""

    @property
    def done(self) -> bool:
        return self.state == "done"

    def feed(self, data: bytes) -> Answer | None:
        self.seen += len(data)
        if self.seen > MAX_ANSWER:
            raise AgentError(f"the restored guest's agent wrote more than {MAX_ANSWER} bytes without a complete answer")
        *lines, self._partial = (self._partial + data).split(b"\n")
        for raw in lines:
            self._line(raw.decode("ascii", errors="replace").rstrip("\r"))
            if self.done:
                return self.answer()
        return None

    def _line(self, line: str) -> None:
        if self.state == "before":
            self._first(line)
        elif self.state == "keys":
            if line == SIG_BEGIN and len(self.keys) == 1:
                self.state = "signature"
            elif not self.keys and (key := parse_hostkey(line)) is not None:
                self.keys.append(key)
            else:
                raise AgentError(f"the restored guest's answer has an unexpected line where its one host key belongs: {_shown(line)}")
        elif self.state == "signature":
            if line == SIG_END and self.sig:
                self.state = "end"
            elif _ARMOR_RE.fullmatch(line) and len(self.sig) < MAX_SIGNATURE_LINES:
                self.sig.append(line)
            else:
                raise AgentError(f"the restored guest's answer has a malformed signature line: {_shown(line)}")
        elif self.state == "end":
            if line != f"{RESTORE_END} {self.nonce}":
                raise AgentError(f"the restored guest's answer does not end with its nonce: {_shown(line)}")
            self.state = "done"

    def _first(self, line: str) -> None:
        """Skip anything until this request's answer (or failure) begins."""
        head, _, rest = line.partition(" ")
        nonce, _, tail = rest.partition(" ")
        if nonce != self.nonce:
            return
        if head == RESTORED and not tail:
            self.state = "keys"
        elif head == RESTORED:
            raise AgentError(f"the restored guest's answer begins with an unexpected line: {_shown(line)}")
        elif head == RESTORE_FAILED:
            step = tail if _STEP_RE.fullmatch(tail) else "unknown"
            raise AgentError(f"the restored guest's agent failed at step {step!r}",
                             hint="see 'sealbox logs' of the sandbox; the snapshot's image may predate the agent")

    def answer(self) -> Answer:
        key = self.keys[0]
        message = f"{RESTORED} {self.nonce}\n{HOSTKEY} {key.line()}\n".encode("ascii")
        signature = "\n".join([SIG_BEGIN, *self.sig, SIG_END]) + "\n"
        return Answer(hostkey=key, message=message, signature=signature)


def _shown(text: str) -> str:
    return repr("".join(c if c.isprintable() else "?" for c in text[:80]))
