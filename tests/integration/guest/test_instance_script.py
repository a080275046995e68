"""The real instance.sh, run by the default image's own shell and tools (guest_chroot.py), against instance disks
written by the host's encoder (guest/instance.py): what the guest applies, what it hashes, and when a TD refuses."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import shutil
import sys
from pathlib import Path

import pytest
from guest_chroot import Guest, run_instance_sh

from sealbox.guest.instance import InstanceData, canonical, mrconfigid, render

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "attest"))
from quotegen import Pki, build_quote  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount namespace, loop mount, chroot)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) not installed"),
]

KEY_ROOT = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom sealbox-demo"
KEY_ALICE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH6e1pP3UhX0sFqk0Yb5sH2o9bJ8Qd3jVYkqM1yK0oQx alice@laptop"
IP_ARG = "ip=10.9.9.2::10.9.9.1:255.255.255.252:fromcmdline:eth0:off"


@pytest.fixture(scope="module")
def image() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from imagecache import default_image

    return default_image()


def data(**kw) -> InstanceData:  # type: ignore[no-untyped-def]
    base = dict(hostname="demo", address=ipaddress.IPv4Interface("10.213.0.2/30"), gateway=ipaddress.IPv4Address("10.213.0.1"),
                dns=(ipaddress.IPv4Address("10.213.0.1"), ipaddress.IPv4Address("192.0.2.53")),
                authorized_keys={"root": (KEY_ROOT,), "alice": (KEY_ALICE, KEY_ROOT)})  # fmt: skip
    base.update(kw)
    return InstanceData(**base)


def test_instance_disk_wins_over_ip_argument(image: Path, tmp_path: Path) -> None:
    r = run_instance_sh(image, tmp_path, Guest(disk=render(data()), cmdline=f"console=ttyS0 {IP_ARG}"))
    assert (r.rc, r.stderr) == (0, "")
    assert r.addresses == ["10.213.0.2/30"]
    assert "default via 10.213.0.1 dev eth0" in r.routes
    assert r.files["hostname"] == "demo\n"


def test_ip_argument_alone_configures_the_link(image: Path, tmp_path: Path) -> None:
    r = run_instance_sh(image, tmp_path, Guest(disk=None, cmdline=f"console=ttyS0 {IP_ARG}"))
    assert (r.rc, r.stderr) == (0, "")
    assert r.addresses == ["10.9.9.2/30"] and "default via 10.9.9.1 dev eth0" in r.routes
    assert r.files["hostname"] == "fromcmdline\n"
    assert "authorized_keys/root" not in r.files


def test_per_user_keys_resolvers_and_the_hash_of_what_was_applied(image: Path, tmp_path: Path) -> None:
    d = data()
    r = run_instance_sh(image, tmp_path, Guest(disk=render(d)))
    assert (r.rc, r.stderr) == (0, "")
    assert r.files["authorized_keys/root"] == KEY_ROOT + "\n"
    assert r.files["authorized_keys/alice"] == f"{KEY_ALICE}\n{KEY_ROOT}\n"
    assert r.files["resolv.conf"] == "# sealbox: resolvers from the instance data\nnameserver 10.213.0.1\nnameserver 192.0.2.53\n"
    assert r.resolv_link == "/run/sealbox/resolv.conf"  # the image's /etc/resolv.conf points at the runtime file
    # the guest's canonical text is byte-identical to the host's, and so is its SHA-384 (the MRCONFIGID)
    assert r.files["instance"].encode() == canonical(d)
    assert r.files["instance.binding"] == f"not-a-td sha384={mrconfigid(d).hex()}\n"
    assert hashlib.sha384(r.files["instance"].encode()).digest() == mrconfigid(d)


@pytest.mark.parametrize("version", [4, 5])
def test_td_applies_data_that_matches_its_mrconfigid(image: Path, tmp_path: Path, version: int) -> None:
    """STAND-IN report device: a configfs-tsm entry whose outblob is a synthetic quote with this MRCONFIGID."""
    d = data()
    quote = build_quote(Pki(), version=version, body_type=3 if version == 5 else 2, mrconfigid=mrconfigid(d))
    r = run_instance_sh(image, tmp_path, Guest(disk=render(d), td=True, tsm_outblob=quote))
    assert (r.rc, r.stderr) == (0, "")
    assert r.files["instance.binding"] == f"td mrconfigid={mrconfigid(d).hex()}\n"
    assert r.files["authorized_keys/root"] == KEY_ROOT + "\n" and r.addresses == ["10.213.0.2/30"]


def test_td_refuses_data_that_does_not_match(image: Path, tmp_path: Path) -> None:
    d, other = data(), data(authorized_keys={"root": (KEY_ALICE,)})  # the host swapped in its own key
    quote = build_quote(Pki(), mrconfigid=mrconfigid(d))
    r = run_instance_sh(image, tmp_path, Guest(disk=render(other), td=True, tsm_outblob=quote))
    assert r.rc == 1
    assert r.stderr.strip() == (f"sealbox-instance: refusing the instance data: its SHA-384 {mrconfigid(other).hex()} "
                                f"is not this TD's MRCONFIGID {mrconfigid(d).hex()}")  # fmt: skip
    assert not any(k.startswith("authorized_keys") for k in r.files) and r.addresses == []
    assert r.files["hostname"] == "localhost\n"


def test_td_reads_the_sysfs_measurement_on_newer_kernels(image: Path, tmp_path: Path) -> None:
    d = data()
    ok = run_instance_sh(image, tmp_path / "good", Guest(disk=render(d), td=True, sysfs_mrconfigid=mrconfigid(d)))
    assert (ok.rc, ok.stderr) == (0, "")
    bad = run_instance_sh(image, tmp_path / "bad", Guest(disk=render(d), td=True, sysfs_mrconfigid=bytes(48)))
    assert bad.rc == 1 and f"is not this TD's MRCONFIGID {'00' * 48}" in bad.stderr


def test_td_without_a_readable_report_refuses(image: Path, tmp_path: Path) -> None:
    r = run_instance_sh(image, tmp_path, Guest(disk=render(data()), td=True))
    assert r.rc == 1 and "this TD's MRCONFIGID cannot be read" in r.stderr
    assert not any(k.startswith("authorized_keys") for k in r.files)


def test_invalid_user_name_on_a_forged_disk_is_refused(image: Path, tmp_path: Path) -> None:
    forged = render(data()).replace(b"authorized_key=alice ", b"authorized_key=../x  ")
    r = run_instance_sh(image, tmp_path, Guest(disk=forged))
    assert r.rc == 1 and "instance data names an invalid user '../x'" in r.stderr


# a SHA-512 crypt(3) hash as /etc/shadow holds it (any well-formed hash: nothing here logs in with it)
HASH = "$6$sealboxsalt12345$uG7hOzmHGc3f4vD6Aw0cO1tNLHfXz0w6wQ4eW6y5v8xQ1zJ5o3N2b1c0d9e8f7g6h5i4j3k2l1m0n9o8p7q6r5s"
USER = "nobody"  # a non-root account the default image has (the gui image's `desktop` is tested booted)


def _field(shadow: str, user: str) -> list[str]:
    return next(line.split(":") for line in shadow.splitlines() if line.startswith(f"{user}:"))


def test_a_password_goes_into_a_runtime_shadow_bound_over_the_image(image: Path, tmp_path: Path) -> None:
    d = data(password_hashes={USER: HASH})
    r = run_instance_sh(image, tmp_path, Guest(disk=render(d)))
    assert (r.rc, r.stderr) == (0, "")
    assert r.shadow_bound and _field(r.shadow, USER)[1] == HASH
    assert _field(r.image_shadow, USER)[1] != HASH and HASH not in r.image_shadow  # the image is untouched
    # every other line and every other field is the image's, byte for byte
    img = r.image_shadow.splitlines()
    assert [x for x in r.shadow.splitlines() if not x.startswith(f"{USER}:")] == [x for x in img if not x.startswith(f"{USER}:")]
    assert _field(r.shadow, USER)[2:] == _field(r.image_shadow, USER)[2:] and len(r.shadow.splitlines()) == len(img)
    assert r.shadow_modes[0] == r.shadow_modes[1]  # same mode and owner as the image's (root:shadow 0640)
    # the canonical text the guest hashed carries the secret only as its digest, like the host's
    assert r.files["instance"].encode() == canonical(d) and HASH not in r.files["instance"]
    assert r.files["instance.binding"] == f"not-a-td sha384={mrconfigid(d).hex()}\n"
    assert r.addresses == ["10.213.0.2/30"] and r.files["authorized_keys/root"] == KEY_ROOT + "\n"
    # the hashes were staged beside the keys: nothing of them is left, least of all among sshd's authorized keys
    assert "authorized_keys/passwords" not in r.files
    assert not [k for k, v in r.files.items() if HASH in v and k != "shadow"], sorted(r.files)


def test_a_restore_replaces_the_password_keys_and_address_of_the_snapshots_source(image: Path, tmp_path: Path) -> None:
    """The restore agent's run (SEALBOX_RESTORE=1) over a guest that applied its source's data: the sibling's hash,
    key and address replace the source's (a restored sibling never shares a password with its source)."""
    other_hash = HASH.replace("sealboxsalt12345", "siblingsalt67890")
    first = data(password_hashes={USER: HASH})
    sibling = data(password_hashes={USER: other_hash}, hostname="sibling", address=ipaddress.IPv4Interface("10.213.0.6/30"),
                   gateway=ipaddress.IPv4Address("10.213.0.5"))
    r = run_instance_sh(image, tmp_path, Guest(disk=render(first), restore_disk=render(sibling)))
    assert (r.rc, r.stderr) == (0, ""), r.stderr
    assert r.shadow_bound and _field(r.shadow, USER)[1] == other_hash and HASH not in r.shadow
    assert r.files["hostname"].strip() == "sibling" and r.addresses == ["10.213.0.6/30"]
    assert r.files["instance"].encode() == canonical(sibling) and "authorized_keys/passwords" not in r.files


def test_a_password_for_a_user_the_image_lacks_stops_the_instance(image: Path, tmp_path: Path) -> None:
    r = run_instance_sh(image, tmp_path, Guest(disk=render(data(password_hashes={"ghost": HASH}))))
    assert r.rc == 1 and "sets a password for 'ghost', who is not a user of this image" in r.stderr
    assert not r.shadow_bound and r.shadow == r.image_shadow
    assert not any(k.startswith("authorized_keys") for k in r.files) and r.addresses == []  # nothing else applied


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"!password_hash=root {HASH}", "sets a password for an invalid user 'root'"),
        (f"!password_hash=../x {HASH}", "sets a password for an invalid user '../x'"),
        ("!password_hash=nobody plain-text", "password for 'nobody' is not a crypt(3) hash"),
        (f"!password_hash=nobody {HASH}:0:99999:7:::\nroot::0", "password for 'nobody' is not a crypt(3) hash"),
        ("!password_hash=nobody $6$salt$x\\y", "password for 'nobody' is not a crypt(3) hash"),
    ],
)
def test_a_forged_password_line_is_refused(image: Path, tmp_path: Path, line: str, message: str) -> None:
    """The host's encoder refuses these (unit tests); a forged disk must not get them into the guest's shadow."""
    forged = render(data()).replace(b"\nEND\n", f"\n{line}\nEND\n".encode())
    r = run_instance_sh(image, tmp_path, Guest(disk=forged))
    assert r.rc == 1 and message in r.stderr
    assert not r.shadow_bound and r.shadow == r.image_shadow


def test_a_td_applies_no_password_from_data_it_is_not_bound_to(image: Path, tmp_path: Path) -> None:
    d = data(password_hashes={USER: HASH})
    quote = build_quote(Pki(), mrconfigid=mrconfigid(data()))  # the TD was started for the data without a password
    r = run_instance_sh(image, tmp_path, Guest(disk=render(d), td=True, tsm_outblob=quote))
    assert r.rc == 1 and "is not this TD's MRCONFIGID" in r.stderr
    assert not r.shadow_bound and HASH not in r.shadow
