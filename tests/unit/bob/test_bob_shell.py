"""bob-shell, the searcher's login shell: what it accepts, every refusal, the logs, and the relay to bob-mode."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bobguest import guest_root, load

bs = load("bob_shell")
bm = load("bob_mode")


class Run:
    def __init__(self, root: Path, polls: int | None = None, sleep: Any = None) -> None:
        self.out, self.err = io.BytesIO(), io.StringIO()
        self.shell = bs.Shell(root, out=self.out, err=self.err, sleep=sleep or (lambda s: None), polls=polls)

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        rc = self.shell.run(list(argv), io.BytesIO(b""))
        return rc, self.out.getvalue().decode(), self.err.getvalue()


@pytest.fixture
def root() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="bob"))  # short: a unix socket path lives under it
    try:
        yield guest_root(base)
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("command", ["initialize", "toggle", "status", "tail-the-logs", "logs 1", "logs 10000000",
                                     "  status ", "logs  42"])
def test_the_five_commands_parse(command: str) -> None:
    assert bs.parse(["-c", command])[0] in ("initialize", "toggle", "status", "tail-the-logs", "logs")


@pytest.mark.parametrize("argv, has", [
    ([], "runs commands only"),  # an interactive login
    (["-l"], "runs commands only"),
    (["-c", "status", "extra"], "runs commands only"),
    (["-c", ""], "'' is not a command"),
    (["-c", "sh"], "'sh' is not a command"),
    (["-c", "/usr/lib/openssh/sftp-server"], "is not a command"),  # the sftp subsystem comes as a command
    (["-c", "status; id"], "'status; id' is not a command"),
    (["-c", "status && sh"], "is not a command"),
    (["-c", "toggle now"], "is not a command"),
    (["-c", "STATUS"], "is not a command"),
    (["-c", "logs"], "is not a command"),
    (["-c", "logs 1 2"], "is not a command"),
    (["-c", "status\nid"], "not a command here"),
    (["-c", "logs\t42"], "not a command here"),
    (["-c", "st\u0430tus"], "not a command here"),  # a Cyrillic a
    (["-c", "logs " + "9" * 60], "not a command here"),  # longer than any command
    (["-c", "scp -t /tmp"], "is not a command"),
])
def test_everything_else_is_refused(argv: list[str], has: str) -> None:
    with pytest.raises(bs.Refused) as info:
        bs.parse(argv)
    assert has in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("n", ["0", "-1", "+5", "01", "1e3", "10000001", "99999999", "\u0661", "0x10", "5.0"])
def test_logs_n_is_1_to_10_million(n: str) -> None:
    with pytest.raises(bs.Refused) as info:
        bs.parse(["-c", f"logs {n}"])
    assert info.value.rc == 2


def test_a_refusal_is_one_line_and_a_nonzero_exit(root: Path) -> None:
    rc, out, err = Run(root)("-c", "bash")
    assert rc == 2 and out == "" and err.count("\n") == 1 and "initialize, toggle, status, logs N" in err


@pytest.mark.parametrize("command", ["toggle", "status", "logs 5", "tail-the-logs"])
def test_only_initialize_before_persistent_is_mounted(command: str, tmp_path: Path) -> None:
    root = guest_root(tmp_path, mounted=False)
    rc, out, err = Run(root)("-c", command)
    assert rc == 1 and out == "" and err == f"{command.split()[0]}: refused until /persistent is mounted: run initialize first\n"


def _disk_service(root: Path, answer: dict[str, Any], got: list[bytes]) -> threading.Thread:
    """A stand-in for bob-disk serve behind its socket (one connection): records what arrives, answers `answer`."""
    path = root / bs.DISK_SOCKET
    path.parent.mkdir(parents=True, exist_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(30)

    def once() -> None:
        with srv:
            conn, _ = srv.accept()
            with conn, conn.makefile("rb") as rf:
                got.extend([rf.readline(), rf.readline()])
                conn.sendall(json.dumps(answer).encode() + b"\n")

    t = threading.Thread(target=once, daemon=True)
    t.start()
    return t


def _initialize(root: Path, stdin: bytes) -> tuple[int, str, str]:
    run = Run(root)
    rc = run.shell.run(["-c", "initialize"], io.BytesIO(stdin))
    return rc, run.out.getvalue().decode(), run.err.getvalue()


@pytest.mark.parametrize("stdin, has", [
    (b"", "no passphrase"),
    (b"\n", "no passphrase"),
    (b"\r\n", "no passphrase"),
    (b"x" * 513 + b"\n", "longer than 512 bytes"),
    (b"x" * 4096, "longer than 512 bytes"),
    (b"pass\x00word\n", "control character"),
    (b"pass\tword\n", "control character"),
    (b"pass\x1b[2Jword\n", "control character"),
])
def test_initialize_refuses_an_empty_or_overlong_passphrase_before_asking_the_root_side(tmp_path: Path, stdin: bytes,
                                                                                       has: str) -> None:
    root = guest_root(tmp_path, mounted=False)  # no disk service listening: a refusal must come before the relay
    rc, out, err = _initialize(root, stdin)
    assert rc == 2 and out == "" and has in err and err.startswith("initialize: ") and err.count("\n") == 1


@pytest.mark.parametrize("stdin, sent", [
    (b"correct horse\n", b"correct horse\n"),
    (b"correct horse", b"correct horse\n"),  # no final newline: the whole input is the passphrase
    (b"x" * 512 + b"\r\n", b"x" * 512 + b"\n"),
    ("p\u00e4ss".encode() + b"\nsecond line is not read\n", "p\u00e4ss".encode() + b"\n"),
])
def test_initialize_relays_one_passphrase_line_to_the_disk_service(tmp_path: Path, stdin: bytes, sent: bytes) -> None:
    root = guest_root(tmp_path, mounted=False)
    got: list[bytes] = []
    service = _disk_service(root, {"rc": 0, "out": "initialize: /persistent unlocked and mounted"}, got)
    assert _initialize(root, stdin) == (0, "initialize: /persistent unlocked and mounted\n", "")
    service.join(10)
    assert got == [b"initialize\n", sent]


def test_initialize_passes_the_disk_services_refusal_on(tmp_path: Path) -> None:
    root = guest_root(tmp_path, mounted=False)
    got: list[bytes] = []
    _disk_service(root, {"rc": 1, "out": "initialize: wrong passphrase: nothing was changed"}, got).join(0)
    rc, out, err = _initialize(root, b"nope\n")
    assert (rc, out, err) == (1, "", "initialize: wrong passphrase: nothing was changed\n")


def test_initialize_without_the_disk_service_is_a_clear_refusal(tmp_path: Path) -> None:
    rc, out, err = _initialize(guest_root(tmp_path, mounted=False), b"pw\n")
    assert rc == 1 and out == "" and err.startswith("initialize: the disk service is not answering")


def _logs(root: Path, data: bytes) -> None:
    (root / "persistent/delayed_logs").write_bytes(data)


@pytest.mark.parametrize("data, n, want", [
    (b"a\nb\nc\n", 1, b"c\n"),
    (b"a\nb\nc\n", 2, b"b\nc\n"),
    (b"a\nb\nc\n", 3, b"a\nb\nc\n"),
    (b"a\nb\nc\n", 10, b"a\nb\nc\n"),
    (b"a\nb\nc", 1, b"c"),  # a last line without its newline yet
    (b"a\nb\nc", 2, b"b\nc"),
    (b"\n\n", 1, b"\n"),
    (b"", 5, b""),
])
def test_logs_prints_the_last_n_lines(root: Path, data: bytes, n: int, want: bytes) -> None:
    _logs(root, data)
    assert Run(root)("-c", f"logs {n}") == (0, want.decode(), "")


def test_logs_across_read_blocks(root: Path) -> None:
    lines = [b"line %06d %s\n" % (i, b"x" * (i % 97)) for i in range(40_000)]  # ~2.3 MB: many 64 KiB blocks
    _logs(root, b"".join(lines))
    for n in (1, 999, 12_345, 40_000, 10_000_000):
        assert Run(root)("-c", f"logs {n}")[1].encode() == b"".join(lines[-n:])


def test_logs_without_a_log_file(root: Path) -> None:
    assert Run(root)("-c", "logs 3") == (0, "", "logs: no delayed log lines yet\n")


def test_logs_refuses_a_symlink_and_a_fifo(root: Path) -> None:
    (root / "secret").write_text("root only\n")
    (root / "persistent/delayed_logs").symlink_to(root / "secret")
    rc, out, err = Run(root)("-c", "logs 1")
    assert rc == 1 and out == "" and "cannot read" in err
    (root / "persistent/delayed_logs").unlink()
    os.mkfifo(root / "persistent/delayed_logs")
    rc, out, err = Run(root)("-c", "logs 1")
    assert rc == 1 and "not a regular file" in err


def test_tail_the_logs_prints_the_last_ten_then_follows(root: Path) -> None:
    _logs(root, b"".join(b"%d\n" % i for i in range(20)))
    script = iter([b"20\n21\n", b"", b"22\n"])

    def sleep(_: float) -> None:  # each poll: the delayed-log writer appends its next lines
        with open(root / "persistent/delayed_logs", "ab") as f:
            f.write(next(script))

    rc, out, _ = Run(root, polls=3, sleep=sleep)("-c", "tail-the-logs")
    assert rc == 0 and out.split() == [str(i) for i in range(10, 23)]


def test_tail_the_logs_waits_for_the_file_and_restarts_after_truncation(root: Path) -> None:
    steps = iter([lambda: None, lambda: _logs(root, b"first\n"), lambda: _logs(root, b"x\n"), lambda: None])
    rc, out, _ = Run(root, polls=4, sleep=lambda _: next(steps)())("-c", "tail-the-logs")
    assert rc == 0 and out == "first\nx\n"


def _mode_service(root: Path, modes: Any, connections: int) -> threading.Thread:
    """bob-mode serve behind the socket for `connections` connections, one at a time (as the systemd socket runs one
    service per connection)."""
    path = root / bs.MODE_SOCKET
    path.parent.mkdir(parents=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    srv.settimeout(30)

    def loop() -> None:
        with srv:
            for _ in range(connections):
                conn, _ = srv.accept()
                with conn, conn.makefile("rb") as rf, conn.makefile("w") as wf:
                    bm.serve(modes, rf, wf)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return t


def test_toggle_and_status_go_through_the_root_side(root: Path) -> None:
    now = [1_800_000_000.0]
    calls: list[list[str]] = []
    service = _mode_service(root, bm.Modes(root, clock=lambda: now[0], run=lambda argv: calls.append(argv) or 0), 4)
    assert Run(root)("-c", "status") == (0, "mode maintenance since 0 s\n", "")
    rc, out, _ = Run(root)("-c", "toggle")
    assert rc == 0 and out.startswith("mode production (was maintenance")
    assert [Path(c[0]).name for c in calls] == ["bob-netguard", "nft", "conntrack", "conntrack"]
    Run(root)("-c", "toggle")
    rc, out, err = Run(root)("-c", "toggle")  # back to maintenance before the dwell time: refused, the message relayed
    assert rc == 1 and out == "" and err.startswith("toggle: maintenance is refused for 300 more s")
    service.join(10)
    assert not service.is_alive()


def test_a_missing_mode_service_is_a_clear_refusal(root: Path) -> None:
    rc, out, err = Run(root)("-c", "status")
    assert rc == 1 and out == "" and err.startswith("status: the mode service is not answering")


@pytest.mark.parametrize("conn, argv, entered", [
    ("192.0.2.9 40000 10.0.0.2 10022", ["-c", "/usr/lib/sealbox/bob/bob-workload enter"], True),
    ("192.0.2.9 40000 10.0.0.2 22", ["-c", "/usr/lib/sealbox/bob/bob-workload enter"], False),  # the control port
    ("", ["-c", "/usr/lib/sealbox/bob/bob-workload enter"], False),
    ("192.0.2.9 40000 10.0.0.2 10022 x", ["-c", "/usr/lib/sealbox/bob/bob-workload enter"], False),
    ("192.0.2.9 40000 10.0.0.2 10022", ["-c", "/usr/lib/sealbox/bob/bob-workload enter; sh"], False),
    ("192.0.2.9 40000 10.0.0.2 10022", ["-c", "/usr/lib/sealbox/bob/bob-workload run"], False),
])
def test_the_container_is_entered_only_through_the_data_plane_port(root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   conn: str, argv: list[str], entered: bool) -> None:
    execs: list[list[str]] = []

    def fake_execv(path: str, args: list[str]) -> None:
        execs.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(bs.os, "execv", fake_execv)
    shell = bs.Shell(root, out=io.BytesIO(), err=io.StringIO())
    if entered:
        with pytest.raises(SystemExit):
            shell.run(argv, io.BytesIO(b""), {"SSH_CONNECTION": conn})
        assert execs == [["/usr/lib/sealbox/bob/bob-workload", "enter"]]
    else:
        assert shell.run(argv, io.BytesIO(b""), {"SSH_CONNECTION": conn}) == 2
        assert execs == []


def test_a_missing_workload_program_is_one_line(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: str, args: list[str]) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(bs.os, "execv", fail)
    err = io.StringIO()
    shell = bs.Shell(root, out=io.BytesIO(), err=err)
    rc = shell.run(["-c", "/usr/lib/sealbox/bob/bob-workload enter"], io.BytesIO(b""),
                   {"SSH_CONNECTION": "192.0.2.9 40000 10.0.0.2 10022"})
    assert rc == 1 and err.getvalue() == "the container cannot be entered: No such file or directory\n"
