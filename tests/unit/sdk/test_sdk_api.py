"""The SDK's own logic against a stand-in host (tests/unit/sdk/fakehost.py): commands and files run as real
shell lines locally, lifecycle and pools against in-memory records. No root, no VM."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import pytest
from fakehost import FakeHost

from sealbox.errors import NotFound, SandboxError, SandboxTimeout, UsageError
from sealbox.sdk import AsyncSandbox, CommandTimeout, Pool, Sandbox
from sealbox.sdk.files import parse_listing


def box(tmp_path: Path | None = None, **kw: object) -> Sandbox:
    return Sandbox.create("img", name="b", host=FakeHost(home=str(tmp_path) if tmp_path else None, **kw))  # type: ignore[arg-type]


def gone(pid: int, within: float = 5.0) -> bool:
    """The process ended (SIGKILL takes effect when it is next scheduled: poll a little)."""
    deadline = time.monotonic() + within
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_with_block_removes_on_exception_and_on_normal_exit() -> None:
    host = FakeHost()
    with pytest.raises(RuntimeError), Sandbox.create("img", name="a", host=host):  # type: ignore[arg-type]
        raise RuntimeError("user code failed")
    with Sandbox.create("img", name="b", host=host) as sb:  # type: ignore[arg-type]
        sb.kill()  # removed inside: leaving the block is still fine
    assert host.removed == ["a", "b"] and not host.boxes


def test_create_arguments_are_checked_before_anything_runs() -> None:
    host = FakeHost()
    with pytest.raises(UsageError, match="network='internet'"):
        Sandbox.create("img", network="internet", host=host)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="list of str"):
        Sandbox.create("img", allow_egress="10.0.0.0/8", host=host)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="host= or state_dir="):
        Sandbox.create("img", host=host, state_dir="/x")  # type: ignore[arg-type]
    assert not host.boxes
    assert Sandbox.create("img", host=host).name.startswith("sb-")  # type: ignore[arg-type]


def test_publish_and_newer_run_flags_pass_through(image_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox import planning
    from sealbox.sandbox.model import SandboxSpec
    from sealbox.sdk.host import LocalHost

    host = LocalHost(tmp_path / "state")
    with pytest.raises(UsageError, match="cpu.count=3: Extra inputs"):
        Sandbox.plan(image_dir, name="p", cpu_count=3, host=host)  # an unknown argument: the runtime names it
    if "publish" not in SandboxSpec.model_fields:
        with pytest.raises(UsageError, match="publish= is not supported"):
            Sandbox.plan(image_dir, name="p", publish=["8080:80"], host=host)
        return
    seen: dict[str, object] = {}
    real = planning.make_spec
    monkeypatch.setattr(planning, "make_spec", lambda **flags: seen.update(flags) or real(**flags))
    Sandbox.plan(image_dir, name="p", publish=["8080:80"], host=host)
    assert seen["publish"] == ["8080:80"]


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    sb = box(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout) as e:
        sb.commands.run("sleep 300 & echo $! > child; echo out; sleep 301", timeout=1)
    assert 1 <= time.monotonic() - t0 < 20 and e.value.result.stdout == "out\n" and e.value.result.exit_code == -9
    assert gone(int((tmp_path / "child").read_text()))


def test_background_handle_pid_poll_kill(tmp_path: Path) -> None:
    sb = box(tmp_path)
    h = sb.commands.run_background(["sleep", "300"])
    pid = h.pid
    assert pid and alive(pid) and h.poll() is None
    assert h.kill() and h.wait().exit_code == -9 and gone(pid)
    assert h.poll() == -9


def test_callback_errors_reach_the_caller_and_output_still_drains(tmp_path: Path) -> None:
    sb = box(tmp_path)

    def boom(text: str) -> None:
        raise ValueError("callback broke")

    with pytest.raises(ValueError, match="callback broke"):
        sb.commands.run(["sh", "-c", "head -c 1000000 /dev/zero"], on_stdout=boom)


def test_ctrl_c_while_waiting_kills_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sb = box(tmp_path)
    h = sb.commands.run_background(["sleep", "300"])
    pid = h.pid
    real_wait = h._exec.wait

    def interrupted(timeout: float | None = None) -> int | None:
        raise KeyboardInterrupt

    monkeypatch.setattr(h._exec, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        h.wait()
    monkeypatch.setattr(h._exec, "wait", real_wait)
    assert pid and gone(pid)


def test_files_against_a_local_shell(tmp_path: Path) -> None:
    sb = box(tmp_path)
    sb.files.write("d/-x y/f", b"abc")
    assert (tmp_path / "d" / "-x y" / "f").read_bytes() == b"abc"
    assert [e.name for e in sb.files.list("d/-x y")] == ["f"]
    assert sb.files.read("d/-x y/f") == b"abc" and sb.files.exists("d") and not sb.files.exists("nope")
    with pytest.raises(NotFound):
        sb.files.read("nope")
    with pytest.raises(SandboxError, match="recursive=True"):
        sb.files.remove("d")
    sb.files.remove("d", recursive=True)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("raw", [b"f\x005\x00644\x001.0\x00name", b"f\x00five\x00644\x001.0\x00name\x00",
                                 b"f\x005\x00644\x001.0\x00a/b\x00", b"f\x005\x00644\x001.0\x00..\x00", b"f\x005\x009\x001.0\x00n\x00"])
def test_a_hostile_listing_is_refused(raw: bytes) -> None:
    with pytest.raises(SandboxError, match="malformed"):
        parse_listing(raw, "/x")


def test_a_listing_parses() -> None:
    [e] = parse_listing(b"d\x004096\x00755\x001700000000.5\x00sub dir\n\x00", "/x")
    assert (e.name, e.path, e.type, e.size, e.mode, e.mtime) == ("sub dir\n", "/x/sub dir\n", "dir", 4096, 0o755, 1700000000.5)


def test_pool_hands_out_ready_members_destroys_on_release_and_refills() -> None:
    host = FakeHost(boot_s=0.2)
    with Pool("img", size=2, name="p1", host=host, labels={"team": "rl"}) as pool:  # type: ignore[arg-type]
        a = pool.acquire(timeout=10)
        assert a.labels == {"team": "rl", "sealbox.pool": "p1"} and host.boxes[a.name]["holder"] == os.getpid()
        deadline = time.monotonic() + 10
        while pool.ready < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pool.ready == 2  # refilled in the background
        booted = len(host.created)
        b = pool.acquire()
        assert len(host.created) == booted and b.name in host.created  # warm: handed out, no boot on the way
        pool.release(a)
        assert a.name in host.removed
        with pytest.raises(UsageError, match="not acquired"):
            pool.release(a)
        with b:
            pass  # leaving its block destroys it too
        assert b.name in host.removed
    assert not host.boxes  # close() destroyed every member
    assert len(set(host.created)) == len(host.created)  # never reused


def test_a_snapshot_pool_boots_one_template_and_fills_and_refills_by_restoring_it() -> None:
    """snapshot=True: one cold boot (the template, snapshotted paused and removed), every member a restore of its
    snapshot; close() deletes the snapshot the pool made."""
    host = FakeHost(boot_s=0.05)
    with Pool("img", size=2, name="p7", host=host, parallel=2, snapshot=True) as pool:  # type: ignore[arg-type]
        a = pool.acquire(timeout=10)
        [(path, template)] = host.snapshots.items()
        assert template not in host.restored and template in host.removed and template not in host.boxes
        assert host.restored[a.name] == path and a.labels["sealbox.pool"] == "p7"
        pool.release(a)
        deadline = time.monotonic() + 10
        while pool.ready < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        members = [n for n in host.created if n != template]
        assert pool.ready == 2 and len(members) == 3 and all(host.restored[n] == path for n in members)  # refills restore too
        assert host.created.count(template) == 1  # one cold boot in all
    assert not host.boxes and not host.snapshots


def test_a_snapshot_pool_whose_template_cannot_be_snapshotted_reports_it() -> None:
    host = FakeHost()
    host.snapshot = lambda name, dest=None, resume=True: (_ for _ in ()).throw(SandboxError("stand-in: no snapshots here"))  # type: ignore[method-assign]
    with Pool("img", size=1, name="p8", host=host, snapshot=True) as pool, pytest.raises(SandboxError, match="no snapshots here"):  # type: ignore[arg-type]
        pool.acquire(timeout=60)
    assert not host.boxes  # every template was removed


def test_closing_a_snapshot_pool_while_its_template_boots_starts_no_second_template() -> None:
    host = FakeHost(boot_s=300)
    calls: list[str] = []
    real = host.create
    host.create = lambda opts, **kw: (calls.append(opts.name), real(opts, **kw))[1]  # type: ignore[method-assign]
    pool = Pool("img", size=2, name="p9", host=host, parallel=2, snapshot=True)  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # the second boot waits for the first's template
    pool.close()
    assert calls == ["p9-template"] and not host.boxes and not host.snapshots


def test_pool_never_hands_out_a_member_that_does_not_answer() -> None:
    host = FakeHost(mute=1)
    with Pool("img", size=1, name="p6", host=host) as pool:  # type: ignore[arg-type]
        sb = pool.acquire(timeout=30)
        [muted] = host.muted
        assert sb.name != muted and muted in host.removed
        assert sb.commands.run(["echo", "ok"]).stdout == "ok\n"


def test_pool_reports_boot_failures_instead_of_waiting_for_ever() -> None:
    host = FakeHost(fail=100)
    with Pool("img", size=1, name="p2", host=host) as pool, pytest.raises(SandboxError, match="stand-in boot failure"):  # type: ignore[arg-type]
        pool.acquire(timeout=60)


def test_pool_acquire_timeout_and_close_cancels_boots() -> None:
    host = FakeHost(boot_s=300)
    pool = Pool("img", size=2, name="p3", host=host)  # type: ignore[arg-type]
    with pytest.raises(SandboxTimeout):
        pool.acquire(timeout=0.3)
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 10 and not host.boxes
    with pytest.raises(SandboxError, match="closed"):
        pool.acquire()


def test_pool_recovers_what_a_crashed_owner_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sealbox.sandbox import gc
    from sealbox.sandbox.state import SandboxRecord, StateDir, process_start_time
    from sealbox.sdk.host import LocalHost

    monkeypatch.setattr(gc, "_find", lambda state, keep, report, name=None: [])
    state = StateDir(tmp_path / "state")
    me = os.getpid()
    for name, holder, labels in (("p4-aaaaaa", 999_999_93, {"sealbox.pool": "p4"}), ("p4-bbbbbb", me, {"sealbox.pool": "p4"}),
                                 ("other", 999_999_93, {"sealbox.pool": "p5"})):
        r = SandboxRecord(name=name, status="running", created_at=time.time(), spec={"labels": labels},
                          vmm={"backend": "qemu", "pid": me, "start_time": process_start_time(me)},
                          holder_pid=holder, holder_start=process_start_time(holder) or 1)
        state.reserve(r)
    assert LocalHost(state.root).reap({"sealbox.pool": "p4"}) == ["p4-aaaaaa"]
    assert state.names() == ["other", "p4-bbbbbb"]


def test_async_create_cancelled_undoes_the_boot() -> None:
    host = FakeHost(boot_s=300)

    async def main() -> None:
        task = asyncio.ensure_future(AsyncSandbox.create("img", name="c", host=host))
        await asyncio.sleep(0.3)
        assert host.boxes["c"]["status"] == "creating"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(main(), 30))
    assert not host.boxes


def test_async_with_and_commands(tmp_path: Path) -> None:
    host = FakeHost(home=str(tmp_path))

    async def main() -> None:
        async with await AsyncSandbox.create("img", name="d", host=host) as sb:
            r = await sb.commands.run("echo $((1+1))")
            assert r.stdout == "2\n"
            h = await sb.commands.run(["sleep", "300"], background=True)
            assert await h.kill()
            assert (await h.wait()).exit_code == -9

    asyncio.run(asyncio.wait_for(main(), 30))
    assert not host.boxes and threading.active_count() < 50


def test_socket_dirs_of_killed_processes_are_swept(tmp_path: Path) -> None:
    import subprocess
    import sys

    from sealbox.sandbox.state import process_start_time
    from sealbox.sdk import mux

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(dead.pid)
    dead.wait()
    me = os.getpid()
    stale = tmp_path / f"sealbox-ssh-{dead.pid}-{start}-abc"
    live = tmp_path / f"sealbox-ssh-{me}-{process_start_time(me)}-def"
    other = tmp_path / "sealbox-ssh-q_ol4pcz"  # not ours to judge
    for d in (stale, live, other):
        d.mkdir()
        (d / "x.sock").touch()
    (tmp_path / f"sealbox-ssh-{dead.pid}-{start}-lnk").symlink_to(live)
    assert mux.sweep(tmp_path) == [stale]
    assert live.is_dir() and other.is_dir() and not stale.exists()
