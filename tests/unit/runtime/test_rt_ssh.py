"""ssh argv, ssh_config stanza and known_hosts, checked with the real OpenSSH client where possible
(`ssh -G` prints the configuration ssh would use, without connecting)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sealbox.errors import SandboxError
from sealbox.guest.console import HostKey
from sealbox.sandbox.ssh import SshTarget, config_stanza, exec_argv, known_hosts_text, proxy_argv, shell_argv, write_known_hosts

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh-client is not installed")
ED = "AAAAC3NzaC1lZDI1NTE5AAAAIOXKT8izYDJcWsJLMiQBka11FKFeQPWIGFG9N1yu1Fom"


@pytest.fixture
def target(tmp_path: Path) -> SshTarget:
    return SshTarget(name="demo", netns="sealbox-demo", guest_ip="10.213.0.2", key=tmp_path / "id_ed25519",
                     known_hosts=tmp_path / "known_hosts", state_root=tmp_path / "state dir")


def opts(argv: list[str]) -> dict[str, str]:
    return dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "-o")


def test_exec_argv_pins_keys_and_never_prompts(target: SshTarget) -> None:
    argv = exec_argv(target, ["sh", "-c", "exit 7"])
    o = opts(argv)
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    assert o["StrictHostKeyChecking"] == "yes" and o["BatchMode"] == "yes"
    assert o["UserKnownHostsFile"] == str(target.known_hosts) and o["GlobalKnownHostsFile"] == "/dev/null"
    assert o["IdentityFile"] == str(target.key) and o["IdentitiesOnly"] == "yes"
    assert o["HostKeyAlias"] == "sealbox-demo" and o["UpdateHostKeys"] == "no"
    assert argv[-3:] == ["10.213.0.2", "--", "sh -c 'exit 7'"]  # one string, quoted for the remote shell
    assert shlex.split(argv[-1]) == ["sh", "-c", "exit 7"]
    assert "-T" in argv and "-n" not in argv and argv[argv.index("-l") + 1] == "root"


def test_exec_argv_tty_and_stdin_handling(target: SshTarget) -> None:
    assert "-n" in exec_argv(target, ["ls"], stdin_is_tty=True)  # don't read the user's terminal
    assert "-t" in exec_argv(target, ["top"], tty=True, stdin_is_tty=True)
    assert "-tt" in exec_argv(target, ["top"], tty=True, stdin_is_tty=False)
    assert exec_argv(target, ["id"], user="alice")[exec_argv(target, ["id"], user="alice").index("-l") + 1] == "alice"
    with pytest.raises(SandboxError, match="no command"):
        exec_argv(target, [])


@needs_ssh
def test_real_ssh_accepts_the_exec_options(target: SshTarget) -> None:
    argv = exec_argv(target, ["true"])
    g = subprocess.run(["ssh", "-G", *argv[1:argv.index("10.213.0.2") + 1]], capture_output=True, text=True, timeout=10)
    assert g.returncode == 0, g.stderr
    conf = dict(line.split(" ", 1) for line in g.stdout.splitlines() if " " in line)
    assert conf["stricthostkeychecking"] == "true" and conf["batchmode"] == "yes"
    assert conf["hostkeyalias"] == "sealbox-demo" and conf["hostname"] == "10.213.0.2"


@needs_ssh
def test_ssh_config_stanza_resolves_as_intended(target: SshTarget, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.write_text(config_stanza(target))
    g = subprocess.run(["ssh", "-G", "-F", str(cfg), "sealbox-demo"], capture_output=True, text=True, timeout=10)
    assert g.returncode == 0, g.stderr
    conf: dict[str, list[str]] = {}
    for line in g.stdout.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k, []).append(v)
    assert conf["hostname"] == ["10.213.0.2"] and conf["user"] == ["root"] and conf["port"] == ["22"]
    assert conf["stricthostkeychecking"] == ["true"]
    assert conf["identityfile"] == [str(target.key)]
    assert conf["userknownhostsfile"] == [str(target.known_hosts)]
    assert conf["hostkeyalias"] == ["sealbox-demo"]
    proxy = shlex.split(conf["proxycommand"][0])
    assert proxy == proxy_argv("demo", target.state_root)  # the state dir with a space survives quoting
    assert proxy[:3] == [sys.executable, "-m", "sealbox.cli.main"] and proxy[3:5] == ["_proxy", "demo"]


def test_config_alias_override(target: SshTarget) -> None:
    assert config_stanza(target, "box").splitlines()[0] == "Host box"


def test_shell_argv_passes_extra_args_after_the_host(target: SshTarget) -> None:
    argv = shell_argv(target, extra=["-L", "3389:localhost:3389"])  # ssh reads options after the host too
    assert argv[-3:] == ["10.213.0.2", "-L", "3389:localhost:3389"]


def test_known_hosts_lines_use_the_alias(tmp_path: Path) -> None:
    keys = [HostKey(type="ssh-ed25519", blob=ED)]
    assert known_hosts_text("sealbox-demo", keys) == f"sealbox-demo ssh-ed25519 {ED}\n"
    path = tmp_path / "known_hosts"
    write_known_hosts(path, "sealbox-demo", keys)
    assert path.stat().st_mode & 0o777 == 0o600
    if shutil.which("ssh-keygen"):
        found = subprocess.run(["ssh-keygen", "-F", "sealbox-demo", "-f", str(path)], capture_output=True, text=True, timeout=10)
        assert found.returncode == 0 and ED in found.stdout
        other = subprocess.run(["ssh-keygen", "-F", "10.213.0.2", "-f", str(path)], capture_output=True, text=True, timeout=10)
        assert other.returncode != 0  # pinned to the alias, not to an address another sandbox may reuse
    with pytest.raises(SandboxError, match="no guest host keys"):
        write_known_hosts(path, "sealbox-demo", [])
