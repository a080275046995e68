"""bob-disk against the real cryptsetup, mkfs.ext4 and mount on a loop device this test makes (host side).

The guest program runs in-process with a fake guest root (its /proc is the host's, so the mount it makes is checked
in the real mount table) and the disk given directly (a loop device has no virtio serial; finding the disk by serial
is tests/unit/bob/test_bob_disk.py's). Two stand-ins, for what cannot run here:
- dm-crypt: this machine's kernel has no device-mapper (/proc/misc lists no device-mapper; `cryptsetup open` fails
  with "Cannot initialize device-mapper"). `cryptsetup open` is replaced by the real `cryptsetup open
  --test-passphrase` (the passphrase is checked against the real keyslot) and a loop device over the data segment
  at bob_disk.DATA_OFFSET: the filesystem is real but NOT encrypted. Real dm-crypt runs only in a guest.
- `bob-mode resume` (it would load the guest's firewall): recorded.
The argon2id and scrypt costs are the test knob (bob_disk.Cost), not the guest's: 8 MiB and 4 passes, scrypt 2^10.
Every loop device, dm mapping and mount is named with this test's prefix and removed even when a test fails.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bobguest import load

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("cryptsetup") or not shutil.which("losetup"),
                                 reason="needs root, cryptsetup and losetup")]

bd = load("bob_disk")
bs = load("bob_shell")
kr = load("bob_keyreg")
SIZE = 64 << 20
PASS = b"correct horse battery staple"
COST = bd.Cost(pbkdf_memory_kib=8192, pbkdf_iterations=4, scrypt_log2n=10)
OWNER = (4242, 4243)


def _sh(*argv: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # noqa: A002
    return subprocess.run(argv, input=input, capture_output=True, timeout=120, check=False)


def _ssh_key(tmp: Path) -> str:
    """A real ed25519 key from OpenSSH, in the canonical form bob-keyreg installs (no comment)."""
    _sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(tmp / "id"))
    return " ".join((tmp / "id.pub").read_text().split()[:2]) + "\n"


class Box:
    """A loop device over a sparse file, a fake guest root, and a stand-in runner recording bob-mode's calls."""

    def __init__(self, tmp: Path) -> None:
        self.tag = f"bobdisk-{secrets.token_hex(4)}"
        self.image = tmp / "disk.img"
        with open(self.image, "wb") as f:
            f.truncate(SIZE)
        self.root = tmp / "root"
        (self.root / "run/sealbox-bob").mkdir(parents=True)
        (self.root / "persistent").mkdir()
        (self.root / "proc").symlink_to("/proc")  # the real mount table: the mount is checked where the kernel keeps it
        self.keyfile = self.root / kr.KEY_FILE
        self.key = _ssh_key(tmp)
        self.keyfile.write_text(self.key)
        self.point = (self.root / "persistent").resolve()
        self.mapdir = tmp / "mapper"  # the dm-crypt stand-in's /dev/mapper
        self.mapdir.mkdir()
        self.resumed: list[list[str]] = []
        self.fail: str | None = None  # a tool name whose run fails (injected failure)
        out = _sh("losetup", "--find", "--show", str(self.image))
        assert out.returncode == 0, out.stderr
        self.dev = Path(out.stdout.decode().strip())

    def run(self, argv: list[str], data: bytes = b"") -> tuple[int, str]:
        if argv[0].endswith("bob-mode"):
            self.resumed.append(argv[1:])
            return 0, ""
        if argv[0] == self.fail:
            return 1, f"{argv[0]}: failing on purpose (test)"
        if argv[:2] == ["cryptsetup", "open"]:
            return self._open(argv[-2], argv[-1], data)
        if argv[:2] == ["cryptsetup", "close"]:
            return self._close(argv[2])
        return bd.run_tool(argv, data)

    def _open(self, dev: str, name: str, passphrase: bytes) -> tuple[int, str]:
        """The dm-crypt stand-in: the real passphrase check, then a plain loop device over the data segment."""
        assert name == self.tag, name
        rc, out = bd.run_tool(["cryptsetup", "open", "--test-passphrase", "--type", "luks2", "--disable-external-tokens",
                               "--key-file", "-", dev], passphrase)
        if rc:
            return rc, out
        if self.mapped():
            return 1, f"Cannot use device {name}, name is invalid or still in use."
        p = _sh("losetup", "--find", "--show", "--offset", str(bd.DATA_OFFSET), dev)
        if p.returncode:
            return p.returncode, p.stderr.decode()
        (self.mapdir / name).symlink_to(p.stdout.decode().strip())
        return 0, ""

    def _close(self, name: str) -> tuple[int, str]:
        link = self.mapdir / name
        if not link.is_symlink():
            return 4, f"Device {name} is not active."
        p = _sh("losetup", "-d", os.readlink(link))
        link.unlink()
        return p.returncode, p.stderr.decode()

    def disk(self) -> object:
        return bd.Disk(self.root, device=self.dev, run=self.run, mapper=self.tag, mapdir=self.mapdir, owner=OWNER, cost=COST)

    def initialize(self, passphrase: bytes = PASS) -> str:
        return str(self.disk().initialize(passphrase))  # type: ignore[attr-defined]

    def mounted(self) -> bool:
        return any(line.split(" ")[4] == str(self.point) for line in Path("/proc/self/mountinfo").read_text().splitlines())

    def mapped(self) -> bool:
        return (self.mapdir / self.tag).is_symlink()

    def lock(self) -> None:
        """What a reboot does to the guest: the mount and the mapping gone, /run empty."""
        if self.mounted():
            _sh("umount", str(self.point))
        if self.mapped():
            self._close(self.tag)
        self.keyfile.unlink(missing_ok=True)

    def digest(self) -> str:
        with open(self.dev, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def poke(self, offset: int, data: bytes) -> None:
        fd = os.open(self.dev, os.O_RDWR)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def peek(self, offset: int, n: int) -> bytes:
        fd = os.open(self.dev, os.O_RDONLY)
        try:
            return os.pread(fd, n, offset)
        finally:
            os.close(fd)

    def metadata(self) -> dict[str, object]:
        out = _sh("cryptsetup", "luksDump", "--dump-json-metadata", str(self.dev))
        assert out.returncode == 0, out.stderr
        data: dict[str, object] = json.loads(out.stdout)
        return data

    def close(self) -> None:
        self.lock()
        _sh("losetup", "-d", str(self.dev))


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    try:
        yield b
    finally:
        b.close()


def _refused(box: Box, passphrase: bytes = PASS) -> str:
    with pytest.raises(bd.Refused) as info:
        box.initialize(passphrase)
    return str(info.value)


def test_a_blank_disk_gets_luks2_ext4_mounted_nodev_nosuid_with_the_key_in_a_token(box: Box) -> None:
    msg = box.initialize()
    assert msg.startswith("initialize: a new encrypted /persistent") and box.mounted()
    opts = next(line.split(" ")[5] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if line.split(" ")[4] == str(box.point))
    assert "nodev" in opts.split(",") and "nosuid" in opts.split(",")
    fs = _sh("blkid", "-o", "value", "-s", "TYPE", str(box.mapdir / box.tag)).stdout.decode().strip()
    assert fs == "ext4"
    meta = box.metadata()
    slots = list(meta["keyslots"].values())  # type: ignore[attr-defined]
    assert [s["kdf"]["type"] for s in slots] == ["argon2id"] and slots[0]["kdf"]["memory"] == 8192
    tokens = [t for t in meta["tokens"].values() if t["type"] == bd.TOKEN_TYPE]  # type: ignore[attr-defined]
    assert [t["key"] for t in tokens] == [box.key.strip()]
    assert int(meta["segments"]["0"]["offset"]) == bd.DATA_OFFSET  # type: ignore[index]
    assert box.peek(bd.RECORD_AT, len(bd.MAGIC)) == bd.MAGIC  # the HMAC record: after the header, before the data
    st = os.stat(box.point / "searcher")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*OWNER, 0o700)
    assert box.resumed == [["resume"]]


def test_a_disk_with_data_is_unlocked_never_reformatted_and_the_key_comes_back_from_the_token(box: Box) -> None:
    box.initialize()
    (box.point / "searcher/kept").write_text("still here\n")
    uuid = box.metadata()["keyslots"]
    box.lock()  # a reboot: /run (the key) is gone
    msg = box.initialize()
    assert msg.startswith("initialize: /persistent unlocked") and box.mounted()
    assert (box.point / "searcher/kept").read_text() == "still here\n"
    assert box.metadata()["keyslots"] == uuid  # the same keyslot, salt included: not formatted again
    assert box.keyfile.read_text() == box.key and oct(box.keyfile.stat().st_mode & 0o777) == "0o644"


def test_at_boot_the_key_is_installed_from_the_token_before_any_passphrase(box: Box) -> None:
    box.initialize()
    box.lock()
    assert "key" in box.disk().boot()  # type: ignore[attr-defined]
    assert box.keyfile.read_text() == box.key and not box.mounted()


def test_a_wrong_passphrase_is_refused_and_nothing_changes(box: Box) -> None:
    box.initialize()
    box.lock()
    before = box.digest()
    msg = _refused(box, b"correct horse battery stapler")
    assert msg == "initialize: wrong passphrase: nothing was unlocked or changed"
    assert box.digest() == before and not box.mounted() and not box.mapped() and not box.keyfile.exists()
    assert box.initialize().startswith("initialize: /persistent unlocked")  # the right one still works


def _tampered(box: Box) -> None:
    before = box.digest()
    msg = _refused(box)
    assert msg.startswith("initialize: header tampered:")
    assert box.digest() == before and not box.mounted() and not box.mapped() and not box.keyfile.exists()


def test_a_flipped_byte_in_the_json_area_is_refused_as_tampering(box: Box) -> None:
    box.initialize()
    box.lock()
    json_at = 4096  # the primary header's JSON area follows its 4 KiB binary header
    text = box.peek(json_at, 12288)
    i = text.index(b'"memory":8192')
    box.poke(json_at + i + len(b'"memory":'), b"9")  # argon2 memory 9192: a header cryptsetup may still read
    _tampered(box)


def test_a_changed_keyslot_is_refused_as_tampering(box: Box) -> None:
    box.initialize()
    box.lock()
    slot = box.metadata()["keyslots"]["0"]["area"]  # type: ignore[index]
    at = int(slot["offset"]) + 100
    box.poke(at, bytes([box.peek(at, 1)[0] ^ 0xFF]))
    _tampered(box)


def test_a_token_swapped_with_cryptsetup_itself_is_refused_as_tampering(box: Box, tmp_path: Path) -> None:
    """The attacker's own key put in the token the way cryptsetup does it: a header whose checksums are all right."""
    box.initialize()
    box.lock()
    meta = box.metadata()
    tid = next(k for k, t in meta["tokens"].items() if t["type"] == bd.TOKEN_TYPE)  # type: ignore[attr-defined]
    (tmp_path / "evil").mkdir()
    evil = {"type": bd.TOKEN_TYPE, "keyslots": [], "key": _ssh_key(tmp_path / "evil").strip()}
    out = _sh("cryptsetup", "token", "import", "--token-replace", "--token-id", tid, "--json-file", "-", str(box.dev),
              input=json.dumps(evil).encode())
    assert out.returncode == 0, out.stderr
    _tampered(box)


def test_a_failure_after_formatting_leaves_the_disk_blank_again(box: Box) -> None:
    box.fail = "mkfs.ext4"
    msg = _refused(box)
    assert "mkfs.ext4" in msg and not box.mounted() and not box.mapped()
    assert box.peek(0, bd.DATA_OFFSET) == bytes(bd.DATA_OFFSET) and box.peek(SIZE - (1 << 20), 1 << 20) == bytes(1 << 20)
    box.fail = None
    assert box.initialize().startswith("initialize: a new encrypted /persistent")  # and it can be made again


def test_a_disk_with_other_data_is_left_alone(box: Box) -> None:
    assert _sh("mkfs.ext4", "-q", "-F", str(box.dev)).returncode == 0
    before = box.digest()
    msg = _refused(box)
    assert "not a bob disk" in msg and box.digest() == before and not box.mounted()


def test_a_second_initialize_is_refused_while_mounted(box: Box) -> None:
    box.initialize()
    assert _refused(box) == "initialize: /persistent is already unlocked and mounted"


def test_after_initialize_key_registration_refuses(box: Box, tmp_path: Path) -> None:
    box.initialize()
    (tmp_path / "other").mkdir()
    srv = kr.server(box.root, ("127.0.0.1", 0))
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=20)
        conn.request("POST", "/", body=_ssh_key(tmp_path / "other").encode())
        status = conn.getresponse().status
        conn.close()
    finally:
        srv.shutdown()
        srv.server_close()
    assert status in (403, 409) and box.keyfile.read_text() == box.key


def test_the_searchers_shell_initializes_through_the_socket(box: Box) -> None:
    """bob-shell initialize -> the socket -> bob-disk serve -> the disk: the passphrase arrives without its line end."""
    short = Path(tempfile.mkdtemp(prefix="bd"))  # a unix socket path must stay under 108 bytes
    try:
        (short / "run").symlink_to(box.root / "run")
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(short / bs.DISK_SOCKET))
        srv.listen(1)
        srv.settimeout(60)

        def once() -> None:
            with srv:
                conn, _ = srv.accept()
                with conn, conn.makefile("rb") as rf, conn.makefile("w") as wf:
                    bd.serve(box.disk(), rf, wf)  # type: ignore[arg-type]

        t = threading.Thread(target=once, daemon=True)
        t.start()
        out, err = io.BytesIO(), io.StringIO()
        rc = bs.Shell(short, out=out, err=err).run(["-c", "initialize"], io.BytesIO(PASS + b"\r\n"))
        t.join(60)
    finally:
        shutil.rmtree(short)
    assert (rc, err.getvalue()) == (0, "") and out.getvalue().startswith(b"initialize: a new encrypted /persistent")
    assert box.mounted()
    check = _sh("cryptsetup", "open", "--test-passphrase", "--key-file", "-", str(box.dev), input=PASS)
    assert check.returncode == 0, check.stderr  # the LUKS passphrase is the line, not the line and its end
