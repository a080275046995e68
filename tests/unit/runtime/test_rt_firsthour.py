"""What a new user stumbled on with `run`, `ssh` and the sandbox verbs (issue 12), without root or boots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sealbox.cli.main import main
from sealbox.errors import UsageError
from sealbox.sandbox import planning
from sealbox.sandbox.host.kvm import KvmStatus
from sealbox.sandbox.ssh import SshTarget, shell_argv
from sealbox.util.names import check_sandbox_name


def sealbox(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every KVM probe; the probe reports KVM broken (so a real one would warn)."""
    calls: list[Path] = []

    def fake(state_root: Path, dry_run: bool) -> KvmStatus:
        calls.append(state_root)
        return KvmStatus(present=True, functional=False, detail="vCPUs never run")

    monkeypatch.setattr(planning, "_kvm", fake)
    return calls


# ---- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["-x", "-", "--", "-rf", "-1"])
def test_names_must_start_with_a_letter_or_digit(name: str) -> None:
    with pytest.raises(UsageError) as e:
        check_sandbox_name(name)
    assert "start with a letter or digit" in str(e.value)


@pytest.mark.parametrize("name", ["a", "1", "web-1", "A-b-", "x" * 64])
def test_good_names_still_pass(name: str) -> None:
    assert check_sandbox_name(name) == name


def test_run_refuses_a_name_that_later_verbs_would_take_for_an_option(capsys, image_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                      probes: list[Path]) -> None:
    sd = tmp_path / "state"
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "-x", "--dry-run", "--state-dir", str(sd))
    assert rc == 2 and err.strip().startswith("sealbox: error: invalid sandbox name '-x'"), err
    assert len(err.strip().splitlines()) == 1 and not sd.exists() and probes == []


# ---- flags that need no host work are checked before the KVM probe ---------------------------------

def test_allow_egress_without_nat_fails_before_the_kvm_probe_and_its_warning(capsys, image_dir: Path, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           probes: list[Path]) -> None:
    rc, _, err = sealbox(capsys, "run", str(image_dir), "--name", "e1", "--allow-egress", "10.0.0.0/8",
                         "--state-dir", str(tmp_path / "s"))
    assert rc == 2 and probes == [], err
    assert err.strip().splitlines() == ["sealbox: error: --allow-egress only applies to --net nat (add --net nat or drop --allow-egress)"]


def test_allow_egress_with_nat_is_accepted(image_dir: Path) -> None:
    planning.make_spec(name="ok", image_dir=image_dir, net="nat", allow_egress=["10.0.0.0/8"])


# ---- ssh NAME CMD... : the command goes after the host, as with ssh ----------------------------------

def _target() -> SshTarget:
    return SshTarget(name="box", netns="sealbox-box", guest_ip="10.37.0.2", key=Path("/k"), known_hosts=Path("/kh"),
                     state_root=Path("/s"))


def test_ssh_extra_arguments_follow_the_host() -> None:
    argv = shell_argv(_target(), extra=["uname", "-a"])
    assert argv[-3:] == ["10.37.0.2", "uname", "-a"]
    fwd = shell_argv(_target(), extra=["-L", "8080:localhost:80"])  # ssh takes options after the host too
    assert fwd[-3:] == ["10.37.0.2", "-L", "8080:localhost:80"]


def test_openssh_reads_options_that_follow_the_host() -> None:
    """The oracle: OpenSSH's own option parser (`ssh -G` prints the configuration it would use)."""
    import shutil
    import subprocess

    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client not installed")
    argv = shell_argv(_target(), extra=["-L", "8080:localhost:80", "uname", "-a"])
    out = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=10, check=True).stdout
    assert "hostname 10.37.0.2" in out.splitlines() and "localforward 8080 [localhost]:80" in out.splitlines()


def test_ssh_cli_passes_the_command_and_keeps_its_own_options(capsys, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    seen: dict[str, Any] = {}

    def fake(state: Any, name: str, *, user: str | None, extra: list[str]) -> None:
        seen.update(name=name, user=user, extra=extra)

    monkeypatch.setattr("sealbox.sandbox.control.interactive", fake)
    assert sealbox(capsys, "ssh", "box", "ps", "-u", "root")[0] == 0
    assert seen == {"name": "box", "user": None, "extra": ["ps", "-u", "root"]}  # -u belongs to the command
    assert sealbox(capsys, "ssh", "-u", "dev", "box", "uname", "-a")[0] == 0
    assert seen == {"name": "box", "user": "dev", "extra": ["uname", "-a"]}
    assert sealbox(capsys, "ssh", "box", "--user", "dev", "-L", "8080:localhost:80", "id")[0] == 0
    assert seen == {"name": "box", "user": "dev", "extra": ["-L", "8080:localhost:80", "id"]}
