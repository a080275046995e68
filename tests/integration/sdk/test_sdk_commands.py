"""sb.commands on a real guest (the shared sandbox): what the guest's programs receive, exit codes, streams,
stdin, timeouts and kill (checked in the guest's process table), output caps, concurrency beyond the
master connection's sessions, and SSH master connections that end with the sandbox handle."""

from __future__ import annotations

import hashlib
import io
import threading
import time

import pytest
from sdk_integ import ssh_masters

from sealbox.errors import SandboxError, SandboxTimeout, UsageError
from sealbox.sdk import CommandFailed, CommandTimeout, Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.boot]
HOSTILE = ["", " ", "a b", "'", '"', "\\", "$(touch /tmp/PWNED)", "`touch /tmp/PWNED`", "$HOME", "${IFS}", "; touch /tmp/PWNED",
           "| touch /tmp/PWNED", "\n touch /tmp/PWNED", "-n", "--", "-e", "*", "?", "~", "!!", "a\tb", "é ü 中", "\x1b[31m", "%s%n"]


def nul_split(data: bytes) -> list[str]:
    assert data.endswith(b"\0"), data
    return data[:-1].decode().split("\0")


def test_hostile_argv_env_and_cwd_reach_the_guest_unchanged(box: Sandbox) -> None:
    cwd = "/tmp/-dir 'q' $(touch /tmp/PWNED) `x` ;|&\nnl"
    box.files.make_dir(cwd)
    env = {f"SBT_{i}": v for i, v in enumerate(HOSTILE)}
    r = box.commands.run(["printf", "%s\\0", *HOSTILE], env=env, cwd=cwd).check()
    assert nul_split(r.stdout_bytes) == HOSTILE
    r = box.commands.run(["env", "-0"], env=env, cwd=cwd).check()
    seen = dict(item.split("=", 1) for item in nul_split(r.stdout_bytes) if item.startswith("SBT_"))
    assert seen == env
    assert box.commands.run(["pwd"], cwd=cwd).stdout == cwd + "\n"
    assert not box.files.exists("/tmp/PWNED")


def test_exit_code_streams_and_duration(box: Sandbox) -> None:
    r = box.commands.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert 0 < r.duration_s < 60
    with pytest.raises(CommandFailed, match="exited 7: err") as e:
        box.commands.run("echo err >&2; exit 7", check=True)
    assert e.value.result.exit_code == 7
    r = box.commands.run(["sh", "-c", "exit 255"])  # the command's own 255 is not ssh failing
    assert r.exit_code == 255


def test_a_string_runs_in_the_login_shell_and_argv_is_exact(box: Sandbox) -> None:
    assert box.commands.run("echo $((6*7)) | tr 4 x").stdout == "x2\n"
    assert box.commands.run(["echo", "$((6*7))", "|", "tr"]).stdout == "$((6*7)) | tr\n"
    assert box.commands.run(["no-such-program"]).exit_code == 127


def test_stdin_bytes_text_file_and_chunks(box: Sandbox) -> None:
    data = bytes(range(256)) * 4000
    digest = hashlib.sha256(data).hexdigest()
    for given in (data, io.BytesIO(data), (data[i:i + 1000] for i in range(0, len(data), 1000))):
        assert box.commands.run(["sha256sum"], stdin=given).stdout.split()[0] == digest
    assert box.commands.run(["cat"], stdin="héllo\n").stdout == "héllo\n"
    assert box.commands.run(["cat"]).stdout == ""  # no stdin: empty, never the caller's


def test_streaming_callbacks_arrive_while_it_runs(box: Sandbox) -> None:
    seen: list[tuple[float, str]] = []
    done = box.commands.run("for i in 1 2 3; do echo $i; echo e$i >&2; sleep 1; done",
                            on_stdout=lambda s: seen.append((time.monotonic(), s)), on_stderr=lambda s: seen.append((time.monotonic(), s)))
    end = time.monotonic()
    assert "".join(s for _, s in seen if not s.startswith("e")) == "1\n2\n3\n" == done.stdout
    first = min(t for t, s in seen if s.startswith("1"))
    assert end - first > 1.5  # the first line came while the command still ran


def guest_running(box: Sandbox, marker: str) -> bool:
    return box.commands.run(["pgrep", "-f", marker]).exit_code == 0


def test_background_wait_and_kill_end_the_guest_process_group(box: Sandbox) -> None:
    h = box.commands.run_background(["sh", "-c", "sleep 1000 & sleep 1001; echo never"])
    assert h.pid and h.pid > 1 and h.poll() is None
    assert guest_running(box, "sleep 100[01]")
    assert h.kill() is True
    r = h.wait()
    assert r.exit_code == -9 and "never" not in r.stdout
    assert not guest_running(box, "sleep 100[01]")  # the child in the background went too
    assert h.kill() is False  # already ended
    quick = box.commands.run(["echo", "hi"], background=True)
    assert quick.wait().stdout == "hi\n"
    with pytest.raises(SandboxTimeout, match="still running"):
        box.commands.run_background(["sleep", "30"], timeout=60).wait(timeout=0.5)


def test_timeout_kills_and_keeps_partial_output(box: Sandbox) -> None:
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        box.commands.run("echo started; sleep 1002", timeout=3)
    assert isinstance(e.value, TimeoutError) and 3 <= time.monotonic() - t0 < 30
    assert e.value.result.stdout == "started\n" and e.value.result.exit_code == -9
    assert not guest_running(box, "sleep 1002")


def test_output_beyond_max_output_is_cut_and_said(box: Sandbox) -> None:
    got: list[int] = []
    r = box.commands.run(["head", "-c", "3000000", "/dev/zero"], max_output=1 << 20, on_stdout=lambda s: got.append(len(s)))
    assert r.exit_code == 0 and r.truncated and len(r.stdout_bytes) == 1 << 20
    assert sum(got) == 3_000_000  # the callback saw everything


def test_users_cwd_and_bad_values(box: Sandbox) -> None:
    assert box.commands.run(["id", "-un"], user="root").stdout == "root\n"
    with pytest.raises(UsageError, match="not a valid user"):
        box.commands.run(["id"], user="-oProxyCommand=touch /tmp/x")
    with pytest.raises(SandboxError, match="could not run the command"):
        box.commands.run(["id"], user="nobody")  # no key of ours: ssh cannot log in
    with pytest.raises(SandboxError, match="working directory.*No such file"):
        box.commands.run(["true"], cwd="/no/such/dir")
    with pytest.raises(UsageError, match="NUL"):
        box.commands.run(["echo", "a\0b"])


def test_more_concurrent_commands_than_master_sessions(box: Sandbox) -> None:
    results: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            results.append(box.commands.run(["sh", "-c", f"sleep 2; echo {i}"], timeout=120).check().stdout)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and sorted(results) == sorted(f"{i}\n" for i in range(12))


def test_master_connection_serves_commands_and_ends_with_close(box: Sandbox, sdk_env) -> None:  # type: ignore[no-untyped-def]
    box.commands.run(["true"])
    before = ssh_masters(sdk_env.state_dir)
    assert before, "no master connection after a command"
    box.commands.run(["true"])
    assert ssh_masters(sdk_env.state_dir) == before  # reused, not a new one per command
    box.close()
    assert not ssh_masters(sdk_env.state_dir)
    assert box.commands.run(["echo", "again"]).stdout == "again\n"  # a new one on demand
