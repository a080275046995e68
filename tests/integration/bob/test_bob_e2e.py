"""The bob image booted for real (QEMU/TCG, --rootfs disk, no data disk): one boot shared by the module, driven only
through the network and the searcher's commands, as a searcher would (sealbox's root management path is off).

The workload is a tiny OCI archive sealbox builds from a second spec here. The builder endpoints in the spec are
TEST-NET-1 addresses (192.0.2.0/24, never routed): nothing in maintenance mode connects to them, and the guest's
sandbox network is the test's own namespace. Oracles: a real OpenSSH client (authentication, the pinned host key,
refused forwards), a raw HTTP client for the key registration, raw sockets for the port table, which is asserted
against builder/bob_firewall.py's openings (the same table docs/modules.md shows).
`initialize` and the other modes, which take minutes under TCG: test_bob_e2e_modes.py (slow).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from bob_e2e_lib import Guest, answers, booted, check_table, cmd, connect_in_netns, http_post, port_table, wait_for
from rt_integ import end_process

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def _sequence(g: Guest) -> None:
    g.steps["status_before"] = cmd(g, "status")
    g.steps["logs_before"] = cmd(g, "logs", "5")
    g.steps["initialize_no_disk"] = cmd(g, "initialize", stdin="a passphrase that has no disk to open\n")
    g.steps["table_maintenance"] = port_table(g)


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    yield from booted(tmp_path_factory, "e2e", with_disk=False, sequence=_sequence)


def test_the_first_key_registration_is_accepted_and_a_second_is_refused(guest: Guest) -> None:
    assert guest.registered[0] == 201, guest.registered
    again = http_post(guest.netns, guest.ip, 8080, (guest.other_key.parent / "other.pub").read_bytes())
    assert again[0] == 409, again
    same = http_post(guest.netns, guest.ip, 8080, (guest.key.parent / "searcher.pub").read_bytes())
    assert same[0] == 409, same  # even the same key: registration happens once
    assert http_post(guest.netns, guest.ip, 8080, b"", method="GET")[0] == 405


def test_searcher_logs_in_with_the_registered_key_and_gets_the_command_shell(guest: Guest) -> None:
    # before initialize, status is refused by the shell itself (so the login and the host key pinning worked)
    st = guest.steps
    assert st["status_before"]["rc"] == 1, st["status_before"]
    assert "status: refused until /persistent is mounted: run initialize first" in st["status_before"]["err"]
    assert st["logs_before"]["rc"] == 1 and "refused until /persistent is mounted" in st["logs_before"]["err"]
    # initialize without a data disk: refused by the disk service, in one line
    init = st["initialize_no_disk"]
    assert init["rc"] == 1 and init["err"].startswith("initialize:") and "\n" not in init["err"], init


@pytest.mark.parametrize("command", [["ls", "/"], ["sh", "-c", "id"], ["logs", "0"], ["toggle;", "id"], ["cat", "/etc/shadow"]])
def test_any_other_command_is_refused(guest: Guest, command: list[str]) -> None:
    p = guest.ssh(*command)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "refused" in p.stderr or "logs: N must be" in p.stderr
    assert p.stdout == ""


def test_no_interactive_shell_no_tty_no_subsystem(guest: Guest) -> None:
    p = guest.ssh(opts=("-tt",))  # insist on a terminal: sshd refuses it (PermitTTY no) and ssh gives up
    assert p.returncode == 255 and "PTY allocation request failed" in p.stderr, p.stderr
    p = guest.ssh(opts=("-T",))  # a login shell without a terminal: bob-shell without -c refuses
    assert p.returncode == 1 and "this account runs commands only" in p.stderr, p.stderr
    p = guest.ssh("sftp", opts=("-s",))
    assert p.returncode != 0 and "this account runs commands only" not in p.stdout


def test_only_the_registered_key_and_only_searcher_get_in(guest: Guest) -> None:
    for key, user in ((guest.other_key, "searcher"), (guest.sandbox_key, "searcher"), (guest.sandbox_key, "root"),
                      (guest.key, "root")):
        p = guest.ssh("status", key=key, user=user)
        assert p.returncode == 255 and "Permission denied" in p.stderr, (user, key.name, p.stderr)


def test_port_forwarding_is_refused(guest: Guest, tmp_path: Path) -> None:
    # remote forward: the server says no and ExitOnForwardFailure makes ssh fail
    p = guest.ssh(opts=("-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:4022:127.0.0.1:22", "-N"), timeout=60)
    assert p.returncode == 255 and "forwarding failed" in p.stderr, p.stderr
    # local forward to the guest's own key registration service: the channel is refused, no byte comes back
    lport = 40000 + os.getpid() % 10000
    log = tmp_path / "ssh-L.log"
    argv = guest.ssh_argv("-v", "-N", "-L", f"127.0.0.1:{lport}:127.0.0.1:8080")
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: answers(guest.netns, "127.0.0.1", lport), 60, "ssh -L to listen")
        s = connect_in_netns(guest.netns, "127.0.0.1", lport, 10)
        with s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            s.settimeout(20)
            try:
                got = s.recv(100)
            except ConnectionResetError:
                got = b""
        assert got == b"", got  # the key registration service would have answered "HTTP/1.0 405"
        wait_for(lambda: b"administratively prohibited" in log.read_bytes(), 20, "ssh to report the refused channel")
    finally:
        end_process(proc)


def test_sealbox_exec_and_ssh_are_refused_up_front(guest: Guest) -> None:
    for verb in (["exec", guest.name, "--", "true"], ["ssh", guest.name]):
        p = guest.sealbox(*verb, timeout=60)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert lines and "no exec/ssh" in lines[0] and "root management path is off" in lines[0], p.stderr
        assert "Traceback" not in p.stderr



def test_maintenance_port_table_as_seen_from_the_host(guest: Guest) -> None:
    check_table(guest.steps.get("table_maintenance"), "maintenance")
