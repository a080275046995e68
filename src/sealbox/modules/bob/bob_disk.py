#!/usr/bin/python3 -I
"""bob's encrypted /persistent (guest side, runs as root): LUKS2 with ext4 inside, the searcher's key in a token.

Installed as /usr/lib/sealbox/bob/bob-disk. The searcher never runs it: their shell (bob-shell `initialize`) sends
"initialize" and one passphrase line over a root-owned socket (/run/sealbox-bob/disk.sock) whose service runs
`bob-disk serve` with the connection as stdin/stdout, and relays the one JSON line it answers ({"rc": N, "out": TEXT}).
`bob-disk boot` (a boot unit, before key registration listens) installs the key kept in the disk's header.

The data disk is the one whose serial is "persistent" (`sealbox run --disk FILE:rw,serial=persistent`; a virtio-blk,
SCSI or NVMe serial, read from sysfs as guest/files/diskid.sh reads it), never "the first disk". Its layout:
  [0, 16 MiB)            the LUKS2 header area: both header copies (16 KiB each) and the keyslots area
  [16 MiB, +4 KiB)       the HMAC record (below): outside the area it covers, inside the gap LUKS2 leaves unused
  [17 MiB, end)          the encrypted data segment (ext4)
- blank disk (blkid finds nothing; first and last MiB all zeros): luksFormat (argon2id, memory at most a quarter of
  MemTotal), the searcher's registered key as a LUKS2 token, the HMAC record, open, mkfs.ext4, mount nodev,nosuid,
  the searcher's directory. Any failure after the format zeroes the header area and the last MiB again: blank.
- a disk with the record: passphrase check (the record's verifier), HMAC of the header area, and only then
  cryptsetup; e2fsck -p, mount, the key from the token installed as searcher's; never formatted.
- anything else: left exactly as it is.
The record: scrypt (salted, n=2^17, r=8, p=1 by default) of the passphrase gives a key; HMAC-SHA256 under it of
a fixed label gives the verifier (so a wrong passphrase is told from a tampered header), and of the record's own
fields plus the whole header area gives the MAC. Stdlib only: the guest has no sealbox package.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, TextIO

SERIAL = "persistent"
MAPPER = "bob-persistent"
LIB = "usr/lib/sealbox/bob"
KEY_FILE = "run/sealbox-bob/authorized_keys"
LOCK_FILE = "run/sealbox-bob/disk.lock"
SEARCHER = "searcher"
MiB = 1 << 20
METADATA_SIZE = 16 * 1024  # each LUKS2 header copy (binary header + JSON area)
HEADER_AREA = 16 * MiB  # both copies and the keyslots area: what the HMAC covers
RECORD_AT = HEADER_AREA
RECORD_SIZE = 4096
DATA_OFFSET = 17 * MiB
MIN_DISK = 64 * MiB
MAX_PASSPHRASE = 512
MAX_REQUEST = 64
TOKEN_TYPE = "sealbox-bob-searcher-key"
MAGIC = b"sealbox-bob-hmac"
VERSION, KDF_SCRYPT = 1, 1
LOG2N_AT = 19
HEAD = struct.Struct(">16sHBBBB2xQ32s")  # magic, version, kdf, log2n, r, p, covered, salt: the MAC'd fields (64 bytes)
ARGON2_CAP_KIB = 1024 * 1024  # cryptsetup's own ceiling for --pbkdf-memory
SCRYPT_LOG2N, SCRYPT_R, SCRYPT_P = 17, 8, 1
TOOL_TIMEOUT = 600
MAX_OUTPUT = 1 << 20
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
KEY_RE = re.compile(r"ssh-ed25519 ([A-Za-z0-9+/]+={0,2})")
SERIAL_RE = re.compile(r"[A-Za-z0-9._-]+")
DISK_RE = re.compile(r"vd[a-z]+|sd[a-z]+|nvme[0-9]+n[0-9]+")

Runner = Callable[[list[str], bytes], "tuple[int, str]"]


class Refused(Exception):
    """What the searcher is told, one line; nothing on the disk changed unless the message says so."""


def run_tool(argv: list[str], data: bytes = b"") -> tuple[int, str]:
    """Run a tool with `data` on stdin: (0, what it printed) or (exit status, the last line of its complaint)."""
    try:
        p = subprocess.run(argv, input=data, capture_output=True, timeout=TOOL_TIMEOUT, env=PATH_ENV, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return 127, str(e)
    if p.returncode == 0:
        return 0, p.stdout[:MAX_OUTPUT].decode(errors="replace")
    lines = (p.stderr or p.stdout).decode(errors="replace").strip().splitlines()
    return p.returncode, lines[-1][:200] if lines else ""


# --- finding the disk ---------------------------------------------------------------------------------------------

def disk_serial(sysfs: Path, name: str) -> str | None:
    """A disk's serial as sysfs shows it (virtio-blk, SCSI VPD page 0x80, NVMe), trimmed; None if unusable."""
    if name.startswith("vd"):
        f, skip = sysfs / "block" / name / "serial", 0
    elif name.startswith("sd"):
        f, skip = sysfs / "block" / name / "device/vpd_pg80", 4  # a 4-byte page header, then the serial
    else:
        f, skip = sysfs / "block" / name / "device/serial", 0
    try:
        with open(f, "rb") as fh:
            raw = fh.read(skip + 64)[skip:]
    except OSError:
        return None
    text = raw.replace(b"\x00", b"").replace(b"\n", b"").strip(b" ")
    try:
        value = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return value if SERIAL_RE.fullmatch(value) else None


def find_disk(sysfs: Path = Path("/sys"), serial: str = SERIAL) -> Path:
    """/dev/NAME of the one whole disk carrying `serial`; refused if there is none or more than one."""
    try:
        names = sorted(d.name for d in (sysfs / "block").iterdir())
    except OSError:
        names = []
    found = [n for n in names if DISK_RE.fullmatch(n) and disk_serial(sysfs, n) == serial]
    if not found:
        raise Refused(f"initialize: no data disk with serial '{serial}' (the host attaches it: "
                      f"sealbox run --disk FILE:rw,serial={serial})")
    if len(found) > 1:
        raise Refused(f"initialize: two disks carry serial '{serial}' ({', '.join(found)}): neither is touched")
    return Path("/dev", found[0])


# --- cost ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cost:
    pbkdf_memory_kib: int  # argon2id memory
    pbkdf_iterations: int | None  # None: cryptsetup benchmarks for its default 2 s unlock time
    scrypt_log2n: int  # the HMAC key's scrypt cost (r=8, p=1): 2^n KiB of memory

    @classmethod
    def for_guest(cls, root: Path) -> Cost:
        """argon2id memory = min(1 GiB, MemTotal / 4); scrypt the largest 2^n KiB (n <= 17) within the same bound."""
        try:
            text = (root / "proc/meminfo").read_text()
            total = int(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("MemTotal:")))
        except (OSError, StopIteration, IndexError, ValueError):
            raise Refused("initialize: cannot read MemTotal from /proc/meminfo: the KDF cost cannot be set") from None
        memory = min(ARGON2_CAP_KIB, total // 4)
        if memory < 16 * 1024:
            raise Refused(f"initialize: the guest has {total // 1024} MiB of memory: at least 64 MiB is needed")
        log2n = SCRYPT_LOG2N
        while 2**log2n > memory:  # scrypt needs 128 * r * 2^n bytes = 2^n KiB at r = 8
            log2n -= 1
        return cls(memory, None, log2n)


# --- the HMAC record ---------------------------------------------------------------------------------------------

@dataclass
class Record:
    log2n: int
    salt: bytes
    verifier: bytes = bytes(32)
    mac: bytes = bytes(32)

    @classmethod
    def new(cls, log2n: int) -> Record:
        return cls(log2n, secrets.token_bytes(32))

    def head(self) -> bytes:
        return HEAD.pack(MAGIC, VERSION, KDF_SCRYPT, self.log2n, SCRYPT_R, SCRYPT_P, HEADER_AREA, self.salt)

    def pack(self) -> bytes:
        return (self.head() + self.verifier + self.mac).ljust(RECORD_SIZE, b"\x00")

    @classmethod
    def parse(cls, raw: bytes) -> Record | None:
        """None: no record (not a bob disk). A record with the magic but fields no bob-disk writes: refused."""
        if not raw.startswith(MAGIC):
            return None
        try:
            magic, version, kdf, log2n, r, p, covered, salt = HEAD.unpack_from(raw)
        except struct.error:
            magic = None
        # the only values written: anything else (a cost that would exhaust memory, above all) is not tried
        if magic is None or (version, kdf, r, p, covered) != (VERSION, KDF_SCRYPT, SCRYPT_R, SCRYPT_P, HEADER_AREA) \
                or not 10 <= log2n <= 20 or len(raw) < HEAD.size + 64:
            raise Refused("initialize: header tampered: the HMAC record after the LUKS2 header is damaged; nothing was unlocked")
        return cls(log2n, salt, raw[HEAD.size:HEAD.size + 32], raw[HEAD.size + 32:HEAD.size + 64])

    def _derive(self, passphrase: bytes) -> bytes:
        n = 2**self.log2n
        return hashlib.scrypt(passphrase, salt=self.salt, n=n, r=SCRYPT_R, p=SCRYPT_P, maxmem=256 * SCRYPT_R * n + MiB, dklen=32)

    def _verifier(self, key: bytes) -> bytes:
        return hmac.digest(key, b"sealbox-bob passphrase verifier\x00" + self.head(), "sha256")

    def _mac(self, key: bytes, area: bytes) -> bytes:
        return hmac.digest(key, b"sealbox-bob luks2 header\x00" + self.head() + area, "sha256")

    def seal(self, passphrase: bytes, area: bytes) -> None:
        key = self._derive(passphrase)
        self.verifier, self.mac = self._verifier(key), self._mac(key, area)

    def key(self, passphrase: bytes) -> bytes | None:
        """The HMAC key if `passphrase` is the one the record was sealed with, else None."""
        key = self._derive(passphrase)
        return key if hmac.compare_digest(self._verifier(key), self.verifier) else None

    def mac_ok(self, key: bytes, area: bytes) -> bool:
        return hmac.compare_digest(self._mac(key, area), self.mac)


# --- the searcher's key --------------------------------------------------------------------------------------------

def ed25519_line(text: str) -> str | None:
    """"ssh-ed25519 BASE64" if `text` (one line, no comment) is exactly one ed25519 public key, else None."""
    m = KEY_RE.fullmatch(text.strip())
    if not m:
        return None
    try:
        blob = base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        return None
    want = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32)
    return f"ssh-ed25519 {m.group(1)}" if len(blob) == len(want) + 32 and blob.startswith(want) else None


def install_key(root: Path, line: str) -> None:
    """searcher's only authorized key, replaced atomically (root-owned 0644: sshd reads it for searcher)."""
    path = root / KEY_FILE
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = path.with_name(f".key.{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- the disk ------------------------------------------------------------------------------------------------------

def _pread(dev: Path, offset: int, n: int) -> bytes:
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        out = bytearray()
        while len(out) < n and (chunk := os.pread(fd, min(n - len(out), 4 * MiB), offset + len(out))):
            out += chunk
        return bytes(out)
    finally:
        os.close(fd)


def _pwrite(dev: Path, offset: int, data: bytes) -> None:
    fd = os.open(dev, os.O_WRONLY | os.O_CLOEXEC)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:done + 4 * MiB], offset + done)
        os.fsync(fd)
    finally:
        os.close(fd)


def _size(dev: Path) -> int:
    fd = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def check_passphrase(line: bytes) -> bytes:
    if len(line) > MAX_PASSPHRASE:
        raise Refused(f"initialize: the passphrase is longer than {MAX_PASSPHRASE} bytes")
    if not line:
        raise Refused("initialize: no passphrase: send it as one line on stdin")
    if any(b < 0x20 or b == 0x7F for b in line):
        raise Refused("initialize: the passphrase holds a control character (tab, escape, NUL...): use printable text")
    return line


class Disk:
    """The data disk behind /persistent. The keyword arguments are for tests: a loop device, a test uid, small KDF
    costs, a runner that can fail on purpose or stand in for dm-crypt, a mapping name and directory of the test's own."""

    def __init__(self, root: Path = Path("/"), *, device: Path | None = None, sysfs: Path | None = None,
                 run: Runner = run_tool, mapper: str = MAPPER, mapdir: Path = Path("/dev/mapper"),
                 owner: tuple[int, int] | None = None, cost: Cost | None = None) -> None:
        self.root, self.device, self.run, self.mapper, self.owner, self.cost = root, device, run, mapper, owner, cost
        self.sysfs = sysfs or root / "sys"
        self.point = Path(os.path.realpath(root / "persistent"))
        self.mapped = mapdir / mapper

    def mounted(self) -> bool:
        try:
            text = (self.root / "proc/self/mountinfo").read_text(errors="replace")
        except OSError:
            return False
        return any(len(f) > 4 and f[4].encode().decode("unicode_escape") == str(self.point)
                   for f in (ln.split(" ") for ln in text.splitlines()))

    def _tool(self, argv: list[str], what: str, data: bytes = b"") -> str:
        rc, out = self.run(argv, data)
        if rc:
            raise Refused(f"initialize: {what} failed ({argv[0]} exit {rc}: {out})")
        return out

    def initialize(self, passphrase: bytes) -> str:
        passphrase = check_passphrase(passphrase)
        lock = self.root / LOCK_FILE
        lock.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise Refused("initialize: another initialize is running") from None
            if self.mounted():
                raise Refused("initialize: /persistent is already unlocked and mounted")
            dev = self.device or find_disk(self.sysfs)
            if (size := _size(dev)) < MIN_DISK:
                raise Refused(f"initialize: the data disk {dev} has {size // MiB} MiB: at least {MIN_DISK // MiB} MiB is needed")
            record = Record.parse(_pread(dev, RECORD_AT, RECORD_SIZE))
            if record is not None:
                return self._unlock(dev, record, passphrase)
            if self._blank(dev, size):
                return self._format(dev, passphrase, size)
            raise Refused(f"initialize: the data disk {dev} holds data but is not a bob disk (no HMAC record after a "
                          "LUKS2 header): it is left exactly as it is")
        finally:
            os.close(fd)

    def _blank(self, dev: Path, size: int) -> bool:
        """No signature blkid knows, and the first and last MiB all zeros (what `sealbox disk create` makes)."""
        if any(_pread(dev, at, MiB).strip(b"\x00") for at in (0, size - MiB)):
            return False
        rc, _ = self.run(["blkid", "-p", str(dev)], b"")
        return rc == 2  # blkid: 2 = nothing found

    def _searcher(self) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        try:
            pw = pwd.getpwnam(SEARCHER)
        except KeyError:
            raise Refused(f"initialize: the image has no '{SEARCHER}' account") from None
        return pw.pw_uid, pw.pw_gid

    def _format(self, dev: Path, passphrase: bytes, size: int) -> str:
        try:
            key = ed25519_line((self.root / KEY_FILE).read_text()[:200])
        except OSError:
            key = None
        if key is None:
            raise Refused("initialize: no key is registered yet: register searcher's ed25519 key first "
                          "(it is kept in the disk's header)")
        cost, owner = self.cost or Cost.for_guest(self.root), self._searcher()
        iterations = [] if cost.pbkdf_iterations is None else ["--pbkdf-force-iterations", str(cost.pbkdf_iterations)]
        try:
            self._tool(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2", "--pbkdf", "argon2id",
                        "--pbkdf-memory", str(cost.pbkdf_memory_kib), *iterations,
                        "--luks2-metadata-size", f"{METADATA_SIZE // 1024}k",
                        "--luks2-keyslots-size", f"{(HEADER_AREA - 2 * METADATA_SIZE) // 1024}k",
                        "--offset", str(DATA_OFFSET // 512), "--label", "sealbox-bob", "--key-file", "-", str(dev)],
                       "formatting the disk (cryptsetup luksFormat)", passphrase)
            token = json.dumps({"type": TOKEN_TYPE, "keyslots": [], "key": key})
            self._tool(["cryptsetup", "token", "import", "--json-file", "-", str(dev)], "storing the key in a token",
                       token.encode())
            record = Record.new(cost.scrypt_log2n)
            record.seal(passphrase, _pread(dev, 0, HEADER_AREA))
            _pwrite(dev, RECORD_AT, record.pack())
            self._open(dev, passphrase)
            self._tool(["mkfs.ext4", "-q", "-L", "persistent", "-m", "0", str(self.mapped)], "making the filesystem")
            self._mount(owner)
        except Refused as e:
            self._close()
            _pwrite(dev, 0, bytes(DATA_OFFSET))
            _pwrite(dev, size - MiB, bytes(MiB))
            raise Refused(f"{e}; the disk was made blank again") from None
        return (f"initialize: a new encrypted /persistent was made (LUKS2, argon2id {cost.pbkdf_memory_kib // 1024} MiB) "
                f"and mounted; your key is kept in its header{self._resume()}")

    def _unlock(self, dev: Path, record: Record, passphrase: bytes) -> str:
        hkey = record.key(passphrase)
        if hkey is None:
            raise Refused("initialize: wrong passphrase: nothing was unlocked or changed")
        if not record.mac_ok(hkey, _pread(dev, 0, HEADER_AREA)):
            raise Refused("initialize: header tampered: the disk's LUKS2 header does not match the HMAC made under "
                          "this passphrase; nothing was unlocked or changed")
        key, owner = self.token_key(dev), self._searcher()
        if key is None:
            raise Refused("initialize: the disk's header holds no searcher key token; nothing was unlocked")
        self._open(dev, passphrase)
        try:
            rc, out = self.run(["e2fsck", "-p", str(self.mapped)], b"")
            if rc >= 4:  # 1: errors corrected; 2: corrected, reboot advised; 4 and up: errors left
                raise Refused(f"initialize: the filesystem has errors e2fsck -p cannot fix ({out}); it was not mounted")
            self._mount(owner)
        except Refused:
            self._close()
            raise
        install_key(self.root, key)
        return f"initialize: /persistent unlocked and mounted; your key was restored from the disk's header{self._resume()}"

    def _open(self, dev: Path, passphrase: bytes) -> None:
        if self.mapped.exists():  # left by an attempt that failed after opening: ours, by its name
            self.run(["cryptsetup", "close", self.mapper], b"")
        rc, out = self.run(["cryptsetup", "open", "--type", "luks2", "--disable-external-tokens", "--key-file", "-",
                            str(dev), self.mapper], passphrase)
        if rc == 2:  # cryptsetup: no key available with this passphrase
            raise Refused("initialize: cryptsetup refused the passphrase; nothing was unlocked")
        if rc:
            raise Refused(f"initialize: unlocking failed (cryptsetup exit {rc}: {out})")

    def _mount(self, owner: tuple[int, int]) -> None:
        self.point.mkdir(exist_ok=True)
        self._tool(["mount", "-t", "ext4", "-o", "nodev,nosuid", str(self.mapped), str(self.point)], "mounting /persistent")
        os.chmod(self.point, 0o755)  # the searcher's shell reads /persistent/delayed_logs; only root writes here
        home = self.point / SEARCHER
        try:
            os.mkdir(home, 0o700)
            os.chown(home, *owner)
        except FileExistsError:
            pass  # the searcher's own, from an earlier boot: left as it is

    def _close(self) -> None:
        if self.mounted():
            self.run(["umount", str(self.point)], b"")
        if self.mapped.exists():
            self.run(["cryptsetup", "close", self.mapper], b"")

    def _resume(self) -> str:
        rc, out = self.run([str(self.root / LIB / "bob-mode"), "resume"], b"")
        return "" if rc == 0 else f" (but restoring the mode failed: {out})"

    def token_key(self, dev: Path) -> str | None:
        """The key in the header's one token of TOKEN_TYPE (read without unlocking; trusted only after the HMAC)."""
        rc, out = self.run(["cryptsetup", "luksDump", "--dump-json-metadata", "--disable-external-tokens", str(dev)], b"")
        try:
            tokens = json.loads(out)["tokens"] if rc == 0 else {}
            keys = [t.get("key") for t in tokens.values() if isinstance(t, dict) and t.get("type") == TOKEN_TYPE]
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            return None
        return ed25519_line(keys[0]) if len(keys) == 1 and isinstance(keys[0], str) else None

    def boot(self, wait: float = 5.0) -> str:
        """At boot, before key registration listens: the header's key becomes searcher's, so the searcher can log in
        to run initialize. Unverified until then (the HMAC needs the passphrase); initialize installs it again.
        The disk may take `wait` seconds to appear (SCSI and NVMe scan asynchronously)."""
        deadline = time.monotonic() + wait
        while self.device is None and time.monotonic() < deadline:
            try:
                find_disk(self.sysfs)
                break
            except Refused:
                time.sleep(0.25)
        try:
            dev = self.device or find_disk(self.sysfs)
            record = Record.parse(_pread(dev, RECORD_AT, RECORD_SIZE))
        except Refused as e:
            return f"boot: {str(e).removeprefix('initialize: ')}: key registration stays open"
        if record is None:
            return f"boot: {dev} is not a bob disk yet: key registration stays open"
        key = self.token_key(dev)
        if key is None:
            return f"boot: {dev} holds no searcher key token: key registration stays open"
        install_key(self.root, key)
        return "boot: searcher's key installed from the disk's header (verified at initialize)"


class Initializer(Protocol):
    def initialize(self, passphrase: bytes) -> str: ...


def serve(disk: Initializer, stdin: BinaryIO, stdout: TextIO) -> int:
    """Read "initialize" and one passphrase line (both bounded), answer one JSON line."""
    rc, out = 2, ""
    request = stdin.readline(MAX_REQUEST + 1)
    if len(request) > MAX_REQUEST or not request.endswith(b"\n"):
        out = "bob-disk: request too long or not one line"
    elif request != b"initialize\n":
        out = f"bob-disk: unknown request {request[:32].decode(errors='replace').strip()!r} (initialize)"
    else:
        raw = stdin.readline(MAX_PASSPHRASE + 3)
        line = raw[:-1] if raw.endswith(b"\n") else raw
        try:
            if line and len(line) <= MAX_PASSPHRASE and not raw.endswith(b"\n"):
                raise Refused("initialize: the passphrase is not one line (no line end)")
            passphrase = check_passphrase(line)
        except Refused as e:
            out = str(e)
        else:
            try:
                rc, out = 0, disk.initialize(passphrase)
            except Refused as e:
                rc, out = 1, str(e)
            except OSError as e:  # the disk or /run refused an open or a write: say which, never a traceback
                rc, out = 1, f"initialize: failed: {e.strerror or e} ({e.filename or 'the disk'})"
    stdout.write(json.dumps({"rc": rc, "out": out}) + "\n")
    stdout.flush()
    return 0


def main(argv: list[str]) -> int:
    if argv == ["serve"]:
        return serve(Disk(), sys.stdin.buffer, sys.stdout)
    if argv != ["boot"]:
        print("usage: bob-disk serve|boot", file=sys.stderr)
        return 2
    try:
        print(Disk().boot())
        return 0
    except (Refused, OSError) as e:
        print(f"bob-disk boot: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
