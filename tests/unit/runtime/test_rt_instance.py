"""Instance disk format (docs/guest-protocol.md) and the instance-files step."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from sealbox.errors import SandboxError
from sealbox.guest.instance import BLOCK, InstanceData, parse, render
from sealbox.sandbox.instance import InstanceFilesStep

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom sealbox-demo"


def data(**kw) -> InstanceData:  # type: ignore[no-untyped-def]
    base = dict(hostname="demo", address=ipaddress.IPv4Interface("10.213.0.2/30"),
                gateway=ipaddress.IPv4Address("10.213.0.1"), authorized_keys=(KEY,))
    base.update(kw)
    return InstanceData(**base)


def test_exact_layout_and_padding() -> None:
    blob = render(data())
    text = (
        "SEALBOX-INSTANCE-V1\nhostname=demo\naddress=10.213.0.2/30\ngateway=10.213.0.1\n"
        f"ssh_user=root\nauthorized_key={KEY}\nEND\n"
    ).encode()
    assert blob[: len(text)] == text
    assert len(blob) == BLOCK and set(blob[len(text):]) == {0}


def test_guest_shell_parser_reads_it(tmp_path: Path) -> None:
    """The guest reads the disk with `head -c 19` + `IFS='=' read -r k v` up to END (instance.sh)."""
    if shutil.which("sh") is None:
        pytest.skip("no /bin/sh")
    disk = tmp_path / "disk.img"
    disk.write_bytes(render(data(authorized_keys=(KEY, KEY.replace("Fom", "Fxx")))))
    script = r"""
d=$1
[ "$(head -c 19 "$d")" = "SEALBOX-INSTANCE-V1" ] || exit 9
while IFS='=' read -r k v; do
  case $k in hostname) echo "H $v";; address) echo "A $v";; gateway) echo "G $v";; authorized_key) echo "K $v";; END) break;; esac
done < "$d"
"""
    out = subprocess.run(["sh", "-c", script, "sh", str(disk)], capture_output=True, text=True, check=True, timeout=10).stdout
    assert out.splitlines() == ["H demo", "A 10.213.0.2/30", "G 10.213.0.1", f"K {KEY}", f"K {KEY.replace('Fom', 'Fxx')}"]


@pytest.mark.parametrize("bad", ["two\nlines", "nul\0byte", "tab\there", "caf\u00e9", ""])
def test_rejects_values_the_guest_cannot_parse(bad: str) -> None:
    with pytest.raises(SandboxError, match="printable ASCII"):
        render(data(hostname=bad))


def test_too_many_keys_is_a_clear_error() -> None:
    with pytest.raises(SandboxError, match="at most"):
        render(data(authorized_keys=(KEY,) * 1000))


def test_grows_in_whole_blocks() -> None:
    assert len(render(data(authorized_keys=(KEY,) * 80))) == 3 * BLOCK


printable = hs.text(alphabet=hs.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=80)


@given(host=printable.filter(lambda s: s.strip() == s and "=" not in s[:0]), keys=hs.lists(printable.map(str.strip).filter(bool), max_size=5))
def test_roundtrip(host: str, keys: list[str]) -> None:
    blob = render(data(hostname=host, authorized_keys=tuple(keys)))
    assert len(blob) % BLOCK == 0
    got = parse(blob)
    assert got["hostname"] == [host]
    assert got.get("authorized_key", []) == keys


def test_parse_rejects_foreign_disks() -> None:
    with pytest.raises(SandboxError, match="magic"):
        parse(b"\0" * 4096)
    with pytest.raises(SandboxError, match="END"):
        parse(b"SEALBOX-INSTANCE-V1\nhostname=x\n")


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_step_writes_key_and_disk_and_undo_is_idempotent(tmp_path: Path) -> None:
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5")
    out = step.do()
    assert out["public_key"].startswith("ssh-ed25519 ") and out["public_key"].endswith(" sealbox-demo")
    assert (tmp_path / "id_ed25519").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "instance.img").stat().st_mode & 0o777 == 0o600
    got = parse((tmp_path / "instance.img").read_bytes())
    assert got["address"] == ["10.213.0.6/30"] and got["gateway"] == ["10.213.0.5"]
    assert got["authorized_key"] == [out["public_key"]]
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
    step = InstanceFilesStep(sandbox_dir=str(tmp_path), hostname="demo", address="10.213.0.6/30", gateway="10.213.0.5")
    out = step.do()
    assert out["public_key"] == (tmp_path / "id_ed25519.pub").read_text().strip()
    assert instance._PENDING == {}
    step.undo(out)


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) is not installed")
def test_prestarted_key_of_a_failed_run_is_reaped(tmp_path: Path) -> None:
    from sealbox.sandbox import instance

    instance.prestart_client_key(tmp_path / "id_ed25519", "sealbox-demo")
    instance.discard_prestarted(tmp_path)
    assert instance._PENDING == {}
