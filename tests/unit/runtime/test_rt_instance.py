"""Instance disk format (docs/guest-protocol.md) and the instance-files step."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs
from pydantic import ValidationError

from sealbox.errors import SandboxError
from sealbox.guest.instance import (
    BLOCK,
    Field,
    InstanceData,
    canonical,
    canonical_from_disk,
    encode_lines,
    mrconfigid,
    mrconfigid_base64,
    parse,
    render,
)
from sealbox.sandbox.instance import InstanceFilesStep

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom sealbox-demo"
KEY2 = KEY.replace("Fom", "Fxx")


def data(**kw) -> InstanceData:  # type: ignore[no-untyped-def]
    base = dict(hostname="demo", address=ipaddress.IPv4Interface("10.213.0.2/30"),
                gateway=ipaddress.IPv4Address("10.213.0.1"), authorized_keys={"root": (KEY,)})
    base.update(kw)
    return InstanceData(**base)


# The V2 layout written out by hand: the oracle for the encoder (docs/guest-protocol.md shows the same).
EXPECTED = (
    "SEALBOX-INSTANCE-V2\nhostname=demo\naddress=10.213.0.2/30\ngateway=10.213.0.1\ndns=10.213.0.1\ndns=192.0.2.53\n"
    f"authorized_key=root {KEY}\nauthorized_key=alice {KEY}\nauthorized_key=alice {KEY2}\nauthorized_key=bob {KEY}\nEND\n"
)


def full() -> InstanceData:
    return data(dns=("10.213.0.1", "192.0.2.53"), authorized_keys={"bob": (KEY,), "alice": (KEY, KEY2), "root": (KEY,)})


def test_exact_layout_padding_and_canonical_order() -> None:
    blob = render(full())
    assert blob[: len(EXPECTED)] == EXPECTED.encode()  # root first, then users by name; keys and resolvers in order
    assert len(blob) == BLOCK and set(blob[len(EXPECTED):]) == {0}


def test_mrconfigid_is_sha384_of_the_canonical_text() -> None:
    d = full()
    assert canonical(d) == EXPECTED.encode()  # no secret field in V2: the canonical text is the disk's text
    assert mrconfigid(d) == hashlib.sha384(EXPECTED.encode()).digest()
    assert canonical_from_disk(render(d)) == EXPECTED.encode()  # what the guest recomputes from the disk
    assert mrconfigid_base64(mrconfigid(d)) == base64.b64encode(hashlib.sha384(EXPECTED.encode()).digest()).decode()
    # any change of any field changes it
    for other in (data(hostname="demo2"), data(dns=("10.213.0.1",)), data(authorized_keys={"root": (KEY2,)}),
                  data(authorized_keys={"root": (KEY,), "alice": (KEY,)})):  # fmt: skip
        assert mrconfigid(other) != mrconfigid(data())


def test_a_secret_is_never_hashed_in_clear() -> None:
    token = Field("token", "token", False, True, "a hypothetical secret field")
    host = Field("hostname", "hostname", False, False, "")
    entries = [(host, "demo"), (token, "s3cret-value")]
    disk, canon = encode_lines(entries, canonical=False), encode_lines(entries, canonical=True)
    assert b"!token=s3cret-value\n" in disk
    assert b"s3cret" not in canon and f"!token#sha384={hashlib.sha384(b's3cret-value').hexdigest()}\n".encode() in canon
    assert canonical_from_disk(disk) == canon


# a SHA-512 crypt(3) hash (of "correct horse", salt "sealboxsalt12345"), as /etc/shadow holds it
HASH = "$6$sealboxsalt12345$uG7hOzmHGc3f4vD6Aw0cO1tNLHfXz0w6wQ4eW6y5v8xQ1zJ5o3N2b1c0d9e8f7g6h5i4j3k2l1m0n9o8p7q6r5s"


def test_a_password_hash_is_a_secret_line_after_the_keys() -> None:
    d = data(authorized_keys={"root": (KEY,), "desktop": (KEY,)}, password_hashes={"desktop": HASH})
    disk, canon = render(d), canonical(d)
    tail = f"authorized_key=desktop {KEY}\n!password_hash=desktop {HASH}\nEND\n"
    assert tail.encode() in disk  # on the disk in clear, last before END
    digest = hashlib.sha384(f"desktop {HASH}".encode()).hexdigest()
    assert canon.endswith(f"authorized_key=desktop {KEY}\n!password_hash#sha384={digest}\nEND\n".encode())
    assert HASH.encode() not in canon and HASH[20:40].encode() not in canon  # never hashed (or shown) in clear
    assert canonical_from_disk(disk) == canon  # what the guest recomputes
    assert parse(disk)["!password_hash"] == [f"desktop {HASH}"]
    other = data(authorized_keys={"root": (KEY,), "desktop": (KEY,)}, password_hashes={"desktop": HASH.replace("5s", "5t")})
    assert mrconfigid(other) != mrconfigid(d)  # a TD is bound to the password it was given


@pytest.mark.parametrize(
    ("hashes", "message"),
    [
        ({"root": HASH}, "only a non-root user name"),
        ({"../x": HASH}, "only a non-root user name"),
        ({"desktop": "plain-text-password"}, "not a crypt"),
        ({"desktop": HASH + ":0:99999"}, "not a crypt"),  # would add fields to the guest's shadow line
        ({"desktop": HASH + "\nroot::0"}, "not a crypt"),
    ],
)
def test_password_hashes_the_guest_could_misapply_are_refused(hashes: dict[str, str], message: str) -> None:
    with pytest.raises(SandboxError, match=message) as err:
        render(data(password_hashes=hashes))
    assert "plain-text-password" not in str(err.value) and HASH not in str(err.value)  # a secret is never echoed


def test_a_secret_that_is_not_printable_is_not_echoed() -> None:
    token = Field("token", "token", False, True, "a hypothetical secret field")
    with pytest.raises(SandboxError, match="token=<secret> must be") as err:
        encode_lines([(token, "s3cret\nvalue")], canonical=False)
    assert "s3cret" not in str(err.value)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hostname": "two\nlines"}, "printable ASCII"),
        ({"hostname": "nul\0byte"}, "printable ASCII"),
        ({"hostname": ""}, "printable ASCII"),
        ({"hostname": "caf\u00e9"}, "printable ASCII"),
        ({"authorized_keys": {"root": ("tab\there\n",)}}, "printable ASCII"),
        ({"authorized_keys": {"../etc": (KEY,)}}, "not a valid user name"),
        ({"authorized_keys": {"Root": (KEY,)}}, "not a valid user name"),
    ],
)
def test_rejects_values_the_guest_cannot_parse(kw, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SandboxError, match=message):
        render(data(**kw))


def test_at_most_three_resolvers() -> None:
    with pytest.raises(ValidationError, match="at most 3 resolvers"):
        data(dns=("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"))


def test_too_many_keys_is_a_clear_error() -> None:
    with pytest.raises(SandboxError, match="at most"):
        render(data(authorized_keys={"root": (KEY,) * 1000}))


def test_grows_in_whole_blocks() -> None:
    assert len(render(data(authorized_keys={"root": (KEY,) * 80}))) == 3 * BLOCK


printable = hs.text(alphabet=hs.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=80)
hostnames = hs.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", fullmatch=True)


@given(host=hostnames, keys=hs.lists(printable.map(str.strip).filter(bool), max_size=5))
def test_roundtrip(host: str, keys: list[str]) -> None:
    blob = render(data(hostname=host, authorized_keys={"root": tuple(keys)}))
    assert len(blob) % BLOCK == 0
    got = parse(blob)
    assert got["hostname"] == [host]
    assert got.get("authorized_key", []) == [f"root {k}" for k in keys]
    assert canonical_from_disk(blob) == canonical(data(hostname=host, authorized_keys={"root": tuple(keys)}))


def test_parse_rejects_foreign_disks() -> None:
    with pytest.raises(SandboxError, match="magic"):
        parse(b"\0" * 4096)
    with pytest.raises(SandboxError, match="magic"):
        parse(b"SEALBOX-INSTANCE-V1\nhostname=x\nEND\n")  # the old schema is not silently read as the new one
    with pytest.raises(SandboxError, match="END"):
        parse(b"SEALBOX-INSTANCE-V2\nhostname=x\n")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_step_writes_key_and_disk_and_undo_is_idempotent(tmp_path: Path) -> None:
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5")
    out = step.do()
    assert out["public_key"].startswith("ssh-ed25519 ") and out["public_key"].endswith(" sealbox-demo")
    assert (tmp_path / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "instance.img").stat().st_mode & 0o777 == 0o600
    disk = (tmp_path / "instance.img").read_bytes()
    got = parse(disk)
    assert got["address"] == ["10.213.0.6/30"] and got["gateway"] == ["10.213.0.5"]
    assert got["authorized_key"] == [f"root {out['public_key']}"]
    assert out["mrconfigid"] == hashlib.sha384(canonical_from_disk(disk)).hexdigest()
    assert (tmp_path / "id_ed25519.pub").read_text().strip() == out["public_key"]
    step.undo(out)
    assert not any(tmp_path.iterdir())
    step.undo({})  # again, and without outputs: nothing to do, no error
    # rebuilt from the record alone
    from sealbox.sandbox.steps import step_from_record

    assert step_from_record(step.kind, step.model_dump(mode="json")) == step


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_prestarted_key_is_collected_by_the_step(tmp_path: Path) -> None:
    from sealbox.sandbox import instance

    instance.prestart_client_key(tmp_path / "id_ed25519", "sealbox-demo")
    assert str(tmp_path / "id_ed25519") in instance._PENDING
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5",
                             users=("dev",), dns=("10.213.0.5",))  # fmt: skip
    out = step.do()
    assert out["public_key"] == (tmp_path / "id_ed25519.pub").read_text().strip()
    got = parse((tmp_path / "instance.img").read_bytes())
    assert got["authorized_key"] == [f"root {out['public_key']}", f"dev {out['public_key']}"] and got["dns"] == ["10.213.0.5"]
    assert instance._PENDING == {}
    step.undo(out)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_prestarted_key_of_a_failed_run_is_reaped(tmp_path: Path) -> None:
    from sealbox.sandbox import instance

    instance.prestart_client_key(tmp_path / "id_ed25519", "sealbox-demo")
    instance.discard_prestarted(tmp_path)
    assert instance._PENDING == {}
