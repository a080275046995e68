"""KVM probe outcomes that do not need a real /dev/kvm, the per-boot cache, and accelerator choice."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.host import kvm


def test_missing_device(tmp_path: Path) -> None:
    st = kvm.probe_kvm(dev=tmp_path / "kvm")
    assert (st.present, st.functional, st.accel) == (False, False, "tcg")
    assert "TCG will be used" in st.summary


def test_non_kvm_device_fails_in_child(tmp_path: Path) -> None:
    """A regular file stands in for /dev/kvm: the forked child's first ioctl fails and is reported."""
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    st = kvm.probe_kvm(dev=fake, timeout=5)
    assert st.present and not st.functional
    assert "during KVM setup" in st.detail
    assert st.elapsed_s < 5


def test_cache_is_per_boot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boot = tmp_path / "boot_id"
    boot.write_text("boot-a\n")
    monkeypatch.setattr(kvm, "BOOT_ID", boot)
    dev = tmp_path / "kvm"
    first = kvm.probe_kvm(dev=dev, cache_dir=tmp_path / "cache")
    assert not first.cached
    saved = json.loads((tmp_path / "cache" / kvm.CACHE_NAME).read_text())
    assert saved["key"] == "boot-a:nokvm"
    assert kvm.probe_kvm(dev=dev, cache_dir=tmp_path / "cache").cached
    dev.write_bytes(b"")  # /dev/kvm appeared: the key changes, so the probe runs again
    again = kvm.probe_kvm(dev=dev, cache_dir=tmp_path / "cache")
    assert not again.cached and again.present
    boot.write_text("boot-b\n")
    assert not kvm.probe_kvm(dev=dev, cache_dir=tmp_path / "cache").cached
    assert kvm.probe_kvm(dev=dev, cache_dir=tmp_path / "cache", refresh=True).cached is False


def test_guest_code_encodings() -> None:
    # mov al, 0x5a ; out 0xe9, al ; hlt
    assert kvm.GUEST_CODE == bytes([0xB0, kvm.PROBE_VALUE, 0xE6, kvm.PROBE_PORT, 0xF4])
    loop = kvm.loop_code(1234)
    assert loop[0] == 0xB9 and struct.unpack("<I", loop[1:5])[0] == 1234
    assert loop[5:9] == b"\xff\xc9\x75\xfc" and loop.endswith(kvm.GUEST_CODE)  # dec ecx; jnz -4


def test_choose_accel() -> None:
    good = kvm.KvmStatus(present=True, functional=True, detail="ok")
    bad = kvm.KvmStatus(present=True, functional=False, detail="slow")
    assert kvm.choose_accel("auto", good) == ("kvm", None)
    accel, warning = kvm.choose_accel("auto", bad)
    assert accel == "tcg" and warning and "KVM not functional, TCG will be used" in warning
    assert kvm.choose_accel("tcg", good) == ("tcg", None)
    with pytest.raises(SandboxError, match="--accel kvm"):
        kvm.choose_accel("kvm", bad)
