"""Reading the guest's serial console: host-key and ready markers, and log tails.

The guest prints, before any user code runs (docs/guest-protocol.md):

    SEALBOX-HOSTKEY <type> <base64>      one per host key
    SEALBOX-READY <boot-id>

Only lines before the *first* READY are trusted: after it, user code runs and may print anything,
including spoofed markers. So the parser freezes at READY and never looks at later bytes. Lines may
end in CRLF (serial) and kernel messages may be interleaved mid-line; a marker line that does not
parse exactly is ignored rather than guessed at. A host key must be a well-formed OpenSSH public key
blob whose embedded type matches the announced one.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from sealbox.guest.protocol import HOSTKEY as HOSTKEY  # re-exported: sandbox/lifecycle names the markers in its errors
from sealbox.guest.protocol import READY as READY

KEY_TYPES = frozenset({
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
MAX_KEYS = 16  # a sane guest announces 1-4; more is noise we do not pin
MAX_LINE = 16 * 1024  # a longer partial line is console noise: drop it instead of buffering forever
_HOSTKEY_RE = re.compile(rf"^{HOSTKEY} ([a-z0-9@.-]+) ([A-Za-z0-9+/]+={{0,2}})$")
_READY_RE = re.compile(rf"^{READY} ([A-Za-z0-9-]{{1,64}})$")


class HostKey(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: str
    blob: str  # base64, as in an OpenSSH public key line

    def line(self) -> str:
        return f"{self.type} {self.blob}"


def _blob_type(blob: str) -> str | None:
    """The key type embedded in an SSH wire-format public key (string type, then key material)."""
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 4:
        return None
    (n,) = struct.unpack(">I", raw[:4])
    if n == 0 or n > 64 or len(raw) < 4 + n + 1:
        return None
    try:
        return raw[4 : 4 + n].decode("ascii")
    except UnicodeDecodeError:
        return None


def parse_hostkey(line: str) -> HostKey | None:
    m = _HOSTKEY_RE.match(line)
    if not m or m.group(1) not in KEY_TYPES or _blob_type(m.group(2)) != m.group(1):
        return None
    return HostKey(type=m.group(1), blob=m.group(2))


# Kernel lines that mean this boot cannot reach READY (the kernel reboots on panic: panic=-1, so the VMM
# itself does not exit): an initramfs that did not fit the guest's RAM leaves an incomplete root behind.
_FATAL_RE = re.compile(r"(Initramfs unpacking failed: .*|Kernel panic - not syncing: .*|reboot: Restarting system.*)")
MAX_FATAL = 4
MAX_FATAL_LEN = 160


class ConsoleScan(BaseModel):
    """What the trusted part of the console said so far."""

    hostkeys: list[HostKey] = []
    boot_id: str | None = None  # set once READY was seen; nothing after it is read
    ignored: int = 0  # marker-looking lines that did not parse (for diagnostics)
    fatal: list[str] = []  # kernel lines before READY saying the boot failed (panic, broken initramfs, restart)

    @property
    def ready(self) -> bool:
        return self.boot_id is not None


class ConsoleParser:
    """Incremental: feed raw console bytes as they arrive; stops consuming at the first READY."""

    def __init__(self) -> None:
        self.scan = ConsoleScan()
        self._partial = b""

    def feed(self, data: bytes) -> ConsoleScan:
        if self.scan.ready or not data:
            return self.scan
        buf = self._partial + data
        *lines, self._partial = buf.split(b"\n")
        if len(self._partial) > MAX_LINE:
            self._partial = b""
        for raw in lines:
            if self._line(raw.decode("ascii", errors="replace").strip("\r").strip()):
                self._partial = b""  # READY: nothing after it is read
                break
        return self.scan

    def _line(self, line: str) -> bool:
        """Take one console line; True once it was the READY marker."""
        fatal = _FATAL_RE.search(line)
        if fatal and len(self.scan.fatal) < MAX_FATAL:
            text = "".join(c for c in fatal.group(1) if c.isprintable())[:MAX_FATAL_LEN].strip()
            if text not in self.scan.fatal:
                self.scan.fatal.append(text)
        if line.startswith(HOSTKEY):
            key = parse_hostkey(line)
            if key is None:
                self.scan.ignored += 1
            elif key not in self.scan.hostkeys and len(self.scan.hostkeys) < MAX_KEYS:
                self.scan.hostkeys.append(key)
        elif line.startswith(READY):
            m = _READY_RE.match(line)
            if m:
                self.scan.boot_id = m.group(1)
                return True
            self.scan.ignored += 1
        return False


def scan_text(data: bytes) -> ConsoleScan:
    """Parse a whole console log at once (an unterminated last line is not a marker yet)."""
    return ConsoleParser().feed(data)


class ConsoleFollower:
    """Reads a growing console log from where it left off (the file may not exist yet)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.parser = ConsoleParser()

    def poll(self, max_bytes: int = 1 << 20) -> ConsoleScan:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(max_bytes)
        except FileNotFoundError:
            return self.parser.scan
        self.offset += len(data)
        return self.parser.feed(data)


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def tail(path: Path, lines: int = 12, max_bytes: int = 64 * 1024) -> list[str]:
    """The last non-empty lines of a log, with terminal escapes and control characters removed."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    text = _ANSI_RE.sub("", data.decode("utf-8", errors="replace"))
    clean = ["".join(c for c in ln if c.isprintable()).strip() for ln in text.splitlines()]
    return [ln for ln in clean if ln][-lines:]
