"""ip_forward reference count, against a stand-in sysctl file (the real one is covered by integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.sandbox.host import forward


@pytest.fixture(autouse=True)
def guard(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """STAND-IN for the nft guard table (the real one is tested in tests/integration/net/test_net_hostwide.py):
    records each load (interface list) or removal (None)."""
    calls: list[object] = []
    monkeypatch.setattr(forward, "nft_guard", lambda ifaces: calls.append(None if ifaces is None else list(ifaces)))
    return calls


@pytest.fixture
def sysctl(tmp_path: Path) -> Path:
    p = tmp_path / "ip_forward"  # stand-in for /proc/sys/net/ipv4/ip_forward
    p.write_text("0\n")
    return p


def test_restored_only_after_last_user(tmp_path: Path, sysctl: Path) -> None:
    run = tmp_path / "run"
    forward.acquire(run, "s:a", sysctl)
    assert sysctl.read_text().strip() == "1"
    forward.acquire(run, "s:b", sysctl)
    forward.acquire(run, "s:b", sysctl)  # idempotent: counted once
    assert forward.users(run) == ["s:a", "s:b"]
    assert forward.release(run, "s:a", sysctl) is False
    assert sysctl.read_text().strip() == "1"
    assert forward.release(run, "s:a", sysctl) is False  # idempotent
    assert forward.release(run, "s:b", sysctl) is True
    assert sysctl.read_text().strip() == "0"
    assert not (run / "net" / "ip_forward.json").exists()
    assert forward.release(run, "s:b", sysctl) is False


def test_previous_one_stays_one(tmp_path: Path, sysctl: Path) -> None:
    sysctl.write_text("1\n")
    forward.acquire(tmp_path, "s:a", sysctl)
    assert forward.release(tmp_path, "s:a", sysctl) is True
    assert sysctl.read_text().strip() == "1"


def test_reasserts_when_reset_meanwhile_and_restores_original(tmp_path: Path, sysctl: Path) -> None:
    forward.acquire(tmp_path, "s:a", sysctl)
    sysctl.write_text("0\n")  # someone turned it off while a nat sandbox runs
    forward.acquire(tmp_path, "s:b", sysctl)
    assert sysctl.read_text().strip() == "1"
    forward.release(tmp_path, "s:a", sysctl)
    forward.release(tmp_path, "s:b", sysctl)
    assert sysctl.read_text().strip() == "0"


def test_after_reboot_release_changes_nothing(tmp_path: Path, sysctl: Path) -> None:
    forward.acquire(tmp_path, "s:a", sysctl)
    (tmp_path / "net" / "ip_forward.json").unlink()  # /run is a tmpfs: gone after a reboot
    sysctl.write_text("1\n")  # boot-time configuration
    assert forward.release(tmp_path, "s:a", sysctl) is False
    assert sysctl.read_text().strip() == "1"


def test_file_written_before_sysctl(tmp_path: Path, sysctl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(path: Path, value: str) -> None:
        raise SandboxError(f"cannot write {path}")

    monkeypatch.setattr(forward, "_write_sysctl", refuse)
    with pytest.raises(SandboxError, match="cannot write"):
        forward.acquire(tmp_path, "s:a", sysctl)
    # the previous value was recorded first, so the undo path can still restore it
    assert forward.users(tmp_path) == ["s:a"]
    monkeypatch.undo()
    sysctl.write_text("1\n")  # as if the write had happened after all
    assert forward.release(tmp_path, "s:a", sysctl) is True
    assert sysctl.read_text().strip() == "0"


def test_corrupt_state_is_clear_error(tmp_path: Path, sysctl: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "ip_forward.json").write_text("[")
    with pytest.raises(SandboxError, match="corrupt"):
        forward.acquire(tmp_path, "s:a", sysctl)


def test_guard_when_sealbox_turns_forwarding_on(tmp_path: Path, sysctl: Path, guard: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_write = forward._write_sysctl
    monkeypatch.setattr(forward, "_write_sysctl", lambda p, v: (order.append(f"sysctl={v}"), real_write(p, v)))
    monkeypatch.setattr(forward, "nft_guard", lambda ifaces: order.append(f"guard={ifaces if ifaces is None else list(ifaces)}"))
    forward.acquire(tmp_path, "s:a", sysctl, iface="sbaaa")
    forward.acquire(tmp_path, "s:b", sysctl, iface="sbbbb")
    assert order == ["guard=['sbaaa']", "sysctl=1", "guard=['sbaaa', 'sbbbb']"]  # guard loaded before forwarding is on
    order.clear()
    forward.release(tmp_path, "s:a", sysctl)
    forward.release(tmp_path, "s:b", sysctl)
    assert order == ["guard=['sbbbb']", "sysctl=0", "guard=None"]  # forwarding off again before the guard goes
    assert sysctl.read_text().strip() == "0"


def test_no_guard_when_forwarding_was_already_on(tmp_path: Path, sysctl: Path, guard: list[object]) -> None:
    sysctl.write_text("1\n")
    forward.acquire(tmp_path, "s:a", sysctl, iface="sbaaa")
    forward.release(tmp_path, "s:a", sysctl)
    assert guard == [] and sysctl.read_text().strip() == "1"


def test_guard_from_the_moment_someone_turned_it_off(tmp_path: Path, sysctl: Path, guard: list[object]) -> None:
    sysctl.write_text("1\n")
    forward.acquire(tmp_path, "s:a", sysctl, iface="sbaaa")
    sysctl.write_text("0\n")  # switched off meanwhile: sealbox turns it on again, so it guards from now on
    forward.acquire(tmp_path, "s:b", sysctl, iface="sbbbb")
    assert guard == [["sbaaa", "sbbbb"]]
    forward.release(tmp_path, "s:a", sysctl)
    forward.release(tmp_path, "s:b", sysctl)
    assert guard[-1] is None and sysctl.read_text().strip() == "1"  # the value found before the first user


def test_crash_after_restore_before_guard_removal_is_replayable(tmp_path: Path, sysctl: Path, guard: list[object],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    forward.acquire(tmp_path, "s:a", sysctl, iface="sbaaa")

    def die(ifaces: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(forward, "nft_guard", die)
    with pytest.raises(OSError):
        forward.release(tmp_path, "s:a", sysctl)
    assert sysctl.read_text().strip() == "0" and forward.users(tmp_path) == ["s:a"]  # still listed: gc replays
    monkeypatch.setattr(forward, "nft_guard", lambda ifaces: guard.append(ifaces))
    assert forward.release(tmp_path, "s:a", sysctl) is True
    assert guard[-1] is None and forward.users(tmp_path) == []


def test_guard_covers_users_without_a_recorded_interface(tmp_path: Path, sysctl: Path, guard: list[object]) -> None:
    from sealbox.sandbox.host.netnames import veth_name

    forward.acquire(tmp_path, "/var/lib/other:web-1", sysctl)  # counted without an interface (an older sealbox)
    forward.acquire(tmp_path, "/var/lib/sealbox:db", sysctl, iface="sbaaa")
    assert guard[-1] == sorted(["sbaaa", veth_name("web-1")])
