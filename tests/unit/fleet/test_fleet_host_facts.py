"""A joining host's labels: sealbox.kvm and sealbox.tdx are what `doctor` found (kvm: vCPUs really ran in the
functional probe, not /dev/kvm merely opening); a user's --label adds labels and may lower a fact (keep KVM
work off a host) but never raise one, and sealbox.host is the --name. Doctor's checks are given here; the real
probe on this machine is in tests/integration/fleet/test_fleet_cli_verbs.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from sealbox import doctor
from sealbox.doctor import Check
from sealbox.errors import UsageError
from sealbox.fleet.join import host_labels


def fake_doctor(monkeypatch: pytest.MonkeyPatch, kvm: str, tdx: str) -> None:
    checks = [Check(name="kvm", status=kvm, detail="given"), Check(name="cgroups", status="ok", detail="given"),
              Check(name="tdx", status=tdx, detail="given")]
    monkeypatch.setattr(doctor, "run_checks", lambda state_dir, **kw: checks)


@pytest.mark.parametrize(("kvm", "tdx", "want"), [("ok", "ok", ("true", "true")), ("warn", "skip", ("false", "false")),
                                                  ("fail", "ok", ("false", "true")), ("ok", "fail", ("true", "false"))])
def test_facts_from_doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kvm: str, tdx: str, want: tuple[str, str]) -> None:
    fake_doctor(monkeypatch, kvm, tdx)
    labels = host_labels(tmp_path, "h1", {"zone": "b"})
    assert labels == {"sealbox.host": "h1", "sealbox.kvm": want[0], "sealbox.tdx": want[1], "sealbox.zone": "b"}


@pytest.mark.parametrize("claim", [{"kvm": "true"}, {"sealbox.kvm": "true"}, {"tdx": "true"}, {"sealbox.tdx": "yes"},
                                   {"kvm": ""}])
def test_a_user_label_cannot_claim_what_doctor_did_not_find(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            claim: dict[str, str]) -> None:
    fake_doctor(monkeypatch, "warn", "skip")
    with pytest.raises(UsageError) as e:
        host_labels(tmp_path, "h1", claim)
    assert "doctor" in e.value.message and "false" in e.value.message, e.value.message


def test_a_user_label_may_lower_a_fact(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_doctor(monkeypatch, "ok", "ok")
    assert host_labels(tmp_path, "h1", {"kvm": "false"})["sealbox.kvm"] == "false"
    assert host_labels(tmp_path, "h1", {"sealbox.tdx": "false", "tdx": "false"})["sealbox.tdx"] == "false"
    assert host_labels(tmp_path, "h1", {"kvm": "true"})["sealbox.kvm"] == "true"  # agreeing is no claim


@pytest.mark.parametrize("key", ["host", "sealbox.host"])
def test_the_host_name_is_not_a_label(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str) -> None:
    fake_doctor(monkeypatch, "ok", "ok")
    with pytest.raises(UsageError) as e:
        host_labels(tmp_path, "h1", {key: "other"})
    assert "--name" in str(e.value.hint)


def test_without_the_probe_no_fact_can_be_claimed(tmp_path: Path) -> None:
    assert host_labels(tmp_path, "h1", {"zone": "a"}, probe=False) == {"sealbox.host": "h1", "sealbox.zone": "a"}
    with pytest.raises(UsageError):
        host_labels(tmp_path, "h1", {"kvm": "true"}, probe=False)
