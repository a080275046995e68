"""Per-sandbox passwords (users.<name>.instance_password): made by the instance-files step, kept root-only in the
sandbox dir, delivered to the guest only as a crypt(3) hash in a secret instance-data field.

Oracle for the hash: the C library's crypt(3) (libcrypt, loaded with ctypes), which is what the guest's PAM
checks a login with; sealbox makes the hash with `openssl passwd`, a different implementation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from sealbox.guest.instance import canonical_from_disk, parse
from sealbox.sandbox.instance import PASSWORDS_NAME, InstanceFilesStep, crypt_sha512, new_password, read_passwords

needs_tools = pytest.mark.skipif(shutil.which("ssh-keygen") is None or shutil.which("openssl") is None,
                                 reason="ssh-keygen (openssh-client) or openssl is not installed")


def libc_crypt(password: str, setting: str) -> str:
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    out = lib.crypt(password.encode(), setting.encode())
    return out.decode() if out else ""


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_the_hash_is_what_crypt3_computes_for_the_password() -> None:
    pw = new_password()
    h = crypt_sha512(pw)
    assert h.startswith("$6$") and libc_crypt(pw, h) == h
    assert libc_crypt(pw + "x", h) != h and libc_crypt(pw[:-1], h) != h
    assert crypt_sha512(pw) != h  # a fresh salt each time


def test_passwords_are_long_random_and_typeable() -> None:
    seen = {new_password() for _ in range(200)}
    assert len(seen) == 200
    assert all(len(p) == 24 and p.isascii() and all(c.isalnum() or c in "-_" for c in p) for p in seen)


@needs_tools
def test_the_step_keeps_the_password_root_only_and_sends_only_its_hash(tmp_path: Path) -> None:
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5",
                             users=("desktop",), password_users=("desktop",))
    out = step.do()
    pw = read_passwords(tmp_path)["desktop"]
    assert (tmp_path / PASSWORDS_NAME).stat().st_mode & 0o777 == 0o600
    disk = (tmp_path / "instance.img").read_bytes()
    user, h = parse(disk)["!password_hash"][0].split(" ")
    assert user == "desktop" and libc_crypt(pw, h) == h
    assert pw.encode() not in disk and h.encode() not in canonical_from_disk(disk)
    # the TD binding the step records is what the guest and `attest quote --instance` compute from the disk
    assert out["mrconfigid"] == hashlib.sha384(canonical_from_disk(disk)).hexdigest()
    # nothing the record keeps (step params, outputs) or `inspect` shows carries the password or its hash
    recorded = json.dumps([step.model_dump(mode="json"), out])
    assert pw not in recorded and h not in recorded
    assert "fresh password for desktop" in step.describe()
    step.undo(out)
    assert not any(tmp_path.iterdir())


@needs_tools
def test_no_password_file_without_password_users(tmp_path: Path) -> None:
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5",
                             users=("dev",))
    out = step.do()
    assert read_passwords(tmp_path) == {} and not (tmp_path / PASSWORDS_NAME).exists()
    assert "!password_hash" not in parse((tmp_path / "instance.img").read_bytes())
    step.undo(out)


def test_a_damaged_password_file_is_a_clear_error(tmp_path: Path) -> None:
    from sealbox.errors import SandboxError

    (tmp_path / PASSWORDS_NAME).write_text('["not", "a", "table"]')
    with pytest.raises(SandboxError, match="not a table of user -> password"):
        read_passwords(tmp_path)
    (tmp_path / PASSWORDS_NAME).write_text("{")
    with pytest.raises(SandboxError, match="unreadable"):
        read_passwords(tmp_path)


def test_image_password_users_come_from_its_manifest(make_image: Any) -> None:
    from sealbox.sandbox import image

    img = image.load(make_image("u", spec={"users": {"desktop": {"instance_password": True}, "dev": {}, "x": {"instance_password": False}}}))
    assert img.password_users() == ["desktop"] and img.declared_users() == ["desktop", "dev", "x"]
    assert image.load(make_image("none")).password_users() == []


def test_dry_run_plans_a_password_for_the_desktop_user(capsys: Any, make_image: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.cli.main import main
    from sealbox.sandbox import planning
    from sealbox.sandbox.host.kvm import KvmStatus

    monkeypatch.setattr(planning, "_kvm", lambda *a: KvmStatus(present=True, functional=False, detail="vCPUs never run"))
    img = make_image("g", spec={"users": {"desktop": {"instance_password": True}}})
    rc = main(["run", str(img), "--name", "g1", "--dry-run", "--json", "--state-dir", str(tmp_path / "s")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    inst = next(s for s in json.loads(out.out)["steps"] if s["kind"] == "instance-files")
    assert inst["params"]["password_users"] == ["desktop"] and "fresh password for desktop" in inst["describe"]
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").rglob(PASSWORDS_NAME))  # a dry run makes none
