"""`sealbox rdp`: the certificate fingerprint (oracle: `openssl x509 -fingerprint`), the tunnel's ssh options (oracle:
the real OpenSSH client's `ssh -G`), the listener check against real sockets, port choice, the desktop user, and the
tunnel's lifetime around a stand-in for ssh (the real tunnel to a booted gui guest: tests/integration/gui)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sealbox.errors import SandboxError, UsageError
from sealbox.sandbox import rdp
from sealbox.sandbox.instance import PASSWORDS_NAME
from sealbox.sandbox.ssh import SshTarget

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="openssh-client is not installed")


@pytest.fixture
def target(tmp_path: Path) -> SshTarget:
    return SshTarget(name="desk", netns="sealbox-desk", guest_ip="10.213.0.2", key=tmp_path / "id_ed25519",
                     known_hosts=tmp_path / "known_hosts", state_root=tmp_path / "state dir")


def self_signed(tmp_path: Path) -> bytes:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc",
                    "-days", "1", "-subj", "/CN=desk", "-keyout", str(tmp_path / "k.pem"), "-out", str(tmp_path / "c.pem")],
                   check=True, capture_output=True, timeout=30)
    return (tmp_path / "c.pem").read_bytes()


@needs_openssl
def test_fingerprint_is_what_openssl_prints(tmp_path: Path) -> None:
    pem = self_signed(tmp_path)
    out = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "c.pem"), "-noout", "-fingerprint", "-sha256"],
                         capture_output=True, text=True, check=True).stdout
    assert rdp.fingerprint(pem) == out.strip().split("=", 1)[1].lower()
    assert rdp.fingerprint(b"noise before\n" + pem + b"noise after\n") == rdp.fingerprint(pem)


@needs_openssl
@pytest.mark.parametrize("mutate", [
    lambda pem: b"",
    lambda pem: b"not a certificate at all",
    lambda pem: pem.replace(b"CERTIFICATE", b"PRIVATE KEY"),
    lambda pem: pem[:200] + b"\n-----END CERTIFICATE-----\n",
    lambda pem: pem + b"A" * rdp.MAX_CERT,
])
def test_what_the_guest_sends_is_parsed_as_hostile(tmp_path: Path, mutate: Any) -> None:
    with pytest.raises(SandboxError, match="RDP certificate"):
        rdp.fingerprint(mutate(self_signed(tmp_path)))


def test_tunnel_argv_binds_the_host_loopback_and_fails_rather_than_forward_nowhere(target: SshTarget) -> None:
    argv = rdp.tunnel_argv(target, 13389, "desktop")
    assert argv[:3] == ["ssh", "-F", "/dev/null"] and argv[-1] == "10.213.0.2"
    assert argv[argv.index("-L") + 1] == "127.0.0.1:13389:127.0.0.1:3389" and "-N" in argv
    o = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv[:-1]) if a == "-o")
    assert o["ExitOnForwardFailure"] == "yes" and o["StrictHostKeyChecking"] == "yes" and o["BatchMode"] == "yes"
    assert "_proxy desk --state-dir" in o["ProxyCommand"] and argv[argv.index("-l") + 1] == "desktop"


@needs_ssh
def test_real_ssh_reads_the_tunnel_as_meant(target: SshTarget) -> None:
    argv = rdp.tunnel_argv(target, 13389, "desktop")
    g = subprocess.run(["ssh", "-G", *argv[1:]], capture_output=True, text=True, timeout=10)
    assert g.returncode == 0, g.stderr
    conf: dict[str, list[str]] = {}
    for line in g.stdout.splitlines():
        k, _, v = line.partition(" ")
        conf.setdefault(k, []).append(v)
    assert conf["localforward"] == ["[127.0.0.1]:13389 [127.0.0.1]:3389"]  # the host's loopback only, never *:13389
    assert conf["exitonforwardfailure"] == ["yes"] and conf["user"] == ["desktop"]
    assert conf["stricthostkeychecking"] == ["true"] and conf["hostkeyalias"] == ["sealbox-desk"]
    assert conf["proxycommand"][0].endswith("_proxy desk --state-dir '" + str((target.state_root).resolve()) + "'")


def test_listening_sees_only_this_process_listener(tmp_path: Path) -> None:
    import os

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert not rdp.listening(os.getpid(), port)  # bound is not listening
        s.listen()
        assert rdp.listening(os.getpid(), port) and not rdp.listening(os.getpid(), port + 1 if port < 65535 else port - 1)
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert not rdp.listening(child.pid, port)  # someone else's listener is not the tunnel
        finally:
            child.kill()
            child.wait()
    assert not rdp.listening(os.getpid(), port)


def test_a_taken_port_is_refused_or_avoided() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UsageError, match=f"127.0.0.1:{port} is already in use"):
            rdp.pick_port(port)
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", rdp.DEFAULT_PORT))
            s.listen()
        except OSError:
            pass  # something on this host holds it already: just as taken
        got = rdp.pick_port(None)
        assert got != rdp.DEFAULT_PORT and rdp.port_free(got)


def test_the_desktop_user_is_the_one_with_a_password(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no desktop user") as e:
        rdp.desktop_login(tmp_path, "plain", None)
    assert "gui" in (e.value.hint or "")
    (tmp_path / PASSWORDS_NAME).write_text(json.dumps({"desktop": "pw1"}))
    assert rdp.desktop_login(tmp_path, "g", None) == ("desktop", "pw1")
    with pytest.raises(UsageError, match="gives 'dev' no password"):
        rdp.desktop_login(tmp_path, "g", "dev")
    (tmp_path / PASSWORDS_NAME).write_text(json.dumps({"desktop": "pw1", "ops": "pw2"}))
    with pytest.raises(UsageError, match="several desktop users"):
        rdp.desktop_login(tmp_path, "g", None)
    assert rdp.desktop_login(tmp_path, "g", "ops") == ("ops", "pw2")


class _Stand(rdp.Tunnel):
    """A Tunnel whose ssh is a STAND-IN (a Python process that listens like `ssh -L` does, or exits at once)."""

    def __init__(self, port: int, script: str) -> None:  # no sandbox: skips the guest-facing part of __init__
        self.info = rdp.RdpInfo(name="desk", port=port, user="desktop", password="pw", fingerprint="00")
        self.user, self.proc, self.script = "desktop", None, script
        self.target = None  # type: ignore[assignment]

    def open(self, timeout: float = 10.0) -> None:
        orig = rdp.tunnel_argv
        rdp.tunnel_argv = lambda *a: [sys.executable, "-c", self.script]  # type: ignore[assignment]
        try:
            super().open(timeout)
        finally:
            rdp.tunnel_argv = orig


LISTENER = ("import socket, sys, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            "s.bind(('127.0.0.1', {port})); time.sleep(0.5); s.listen(); time.sleep(60)")


def test_the_tunnel_is_ready_when_its_listener_is_and_gone_when_closed() -> None:
    port = rdp.pick_port(None)
    with _Stand(port, LISTENER.format(port=port)) as t:
        assert t.proc is not None and rdp.listening(t.proc.pid, port)
        pid = t.proc.pid
    assert t.proc is None and rdp.port_free(port)
    with pytest.raises(ProcessLookupError):
        import os

        os.kill(pid, 0)


def test_a_tunnel_whose_ssh_exits_is_a_clear_error() -> None:
    port = rdp.pick_port(None)
    with pytest.raises(SandboxError, match=r"ended \(ssh exit 255\) before it listened on 127.0.0.1"), _Stand(port, "import sys; sys.exit(255)"):
        pass


def test_rdp_of_a_sandbox_that_does_not_exist_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from sealbox.cli.main import main

    rc = main(["rdp", "nosuch", "--state-dir", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "nosuch" in err[0] and err[0].startswith("sealbox: error:")


@pytest.mark.parametrize(("script", "limit", "timeout", "want"), [
    ("import sys; sys.stdout.write('x' * 100)", 1000, 20, (0, b"x" * 100)),
    ("import sys; sys.stdout.write('x' * 5000); sys.exit(3)", 10000, 20, (3, b"x" * 5000)),
    ("import sys, time; sys.stdout.write('x' * 200000); sys.stdout.flush(); time.sleep(30)", 1000, 20, (None, b"x" * 1000)),
    ("import time; time.sleep(30)", 1000, 1, (None, b"")),
])
def test_what_the_guest_prints_is_bounded_in_size_and_time(target: SshTarget, monkeypatch: pytest.MonkeyPatch,
                                                          script: str, limit: int, timeout: float, want: tuple[Any, bytes]) -> None:
    """STAND-IN for ssh into a hostile guest: a local process run the way output_of_guest runs ssh (in a netns: here
    this process's own, /proc/self/ns/net)."""
    import time

    from sealbox.sandbox import ssh
    from sealbox.sandbox.host import netns

    monkeypatch.setattr(ssh, "exec_argv", lambda *a, **k: [sys.executable, "-c", script])
    monkeypatch.setattr(netns, "netns_path", lambda name: Path("/proc/self/ns/net"))
    monkeypatch.setattr("sealbox.sandbox.host.nsenter.enter_net", lambda fd: None)
    t0 = time.monotonic()
    assert ssh.output_of_guest(target, ["cat", "x"], timeout, limit) == want
    assert time.monotonic() - t0 < timeout + 5


class _OpenTunnel:
    """STAND-IN for rdp.Tunnel once open: the facts it prints, and a wait() that must not be reached in this test."""

    def __init__(self, *_a: Any, **_k: Any) -> None:
        self.info = rdp.RdpInfo(name="d", port=3390, user="u", password="p", fingerprint="ab")
        self.closed = False

    def __enter__(self) -> _OpenTunnel:
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.closed = True

    def wait(self) -> int:
        raise AssertionError("Ctrl-C came before wait(): it must not be reached")


@pytest.mark.parametrize("as_json", [True, False])
def test_ctrl_c_right_after_the_facts_are_printed_closes_the_tunnel(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    """A user (or a test) presses Ctrl-C as soon as the facts appear: the interrupt can land before wait() is
    reached. It still closes the tunnel cleanly (exit 0, 'closed'), not 'aborted' with 130."""
    import click

    from sealbox.cli import rdp as cli_rdp
    from sealbox.cli.main import main

    monkeypatch.setattr(rdp, "Tunnel", _OpenTunnel)
    monkeypatch.setattr(cli_rdp, "local_host", lambda _s: type("H", (), {"state": None})())
    echo = click.echo

    def echo_then_ctrl_c(message: Any = None, *a: Any, **k: Any) -> None:
        echo(message, *a, **k)
        if not k.get("err"):
            raise KeyboardInterrupt  # delivered just after the line left: before the next statement runs

    monkeypatch.setattr(click, "echo", echo_then_ctrl_c)
    rc = main(["rdp", "d", "--state-dir", str(tmp_path / "s")] + (["--json"] if as_json else []))
    err = capsys.readouterr().err
    assert rc == 0 and "RDP tunnel to d closed" in err and "aborted" not in err, err


@needs_openssl
def test_the_facts_wait_for_the_desktop_server_to_listen(target: SshTarget, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """xrdp starts after its certificate exists: facts printed in between sent the first client into a reset
    connection (CI: the tunnel's ssh found nothing on the guest's 3389). STAND-IN for the guest's answers: no
    certificate, then a certificate with nothing listening, then both."""
    from sealbox.sandbox import ssh

    pem = self_signed(tmp_path)
    answers = iter([(3, b""), (4, b""), (4, b""), (0, pem)])
    scripts: list[str] = []

    def guest(_t: SshTarget, argv: list[str], _timeout: float, limit: int) -> tuple[int, bytes]:
        scripts.append(argv[-1])
        return next(answers)

    monkeypatch.setattr(ssh, "output_of_guest", guest)
    monkeypatch.setattr(rdp.time, "sleep", lambda _s: None)
    assert rdp.guest_fingerprint(target) == rdp.fingerprint(pem) and len(scripts) == 4
    # the guest's check: the certificate, then a LISTEN socket on 127.0.0.1:3389 in /proc/net/tcp, then the certificate
    script = scripts[-1]
    assert "0100007F:0D3D 00000000:0000 0A" in script and "/proc/net/tcp" in script and rdp.CERT_PATH in script


def test_a_desktop_server_that_never_listens_is_named(target: SshTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox import ssh

    monkeypatch.setattr(ssh, "output_of_guest", lambda *_a, **_k: (4, b""))
    monkeypatch.setattr(rdp.time, "sleep", lambda _s: None)
    with pytest.raises(SandboxError, match=r"does not listen on 127\.0\.0\.1:3389"):
        rdp.guest_fingerprint(target, wait=0)
