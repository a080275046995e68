"""Sandbox lifecycle through the SDK with real boots: connect/list/info/inspect/logs on the shared sandbox;
`with Sandbox.create(...)` removing everything on Ctrl-C (in a child process, as a user's program would get it);
a guest not ready within timeout_s raising SandboxTimeout with nothing left; AsyncSandbox on the shared guest."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sdk_integ import ssh_masters

from sealbox.errors import NotFound, SandboxTimeout, UsageError
from sealbox.sdk import AsyncSandbox, Sandbox

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def test_connect_list_info_inspect_logs(box: Sandbox, sdk_env) -> None:  # type: ignore[no-untyped-def]
    same = Sandbox.connect(box.name, state_dir=sdk_env.state_dir)
    assert same.info.status == "running" and same.labels == {"role": "shared", "suite": sdk_env.prefix}
    assert same.info.memory_mib == 1024 and same.info.address == box.created["address"]
    names = [i.name for i in Sandbox.list(labels={"role": "shared"}, state_dir=sdk_env.state_dir)]
    assert names == [box.name]
    assert Sandbox.list(labels={"role": "other"}, state_dir=sdk_env.state_dir) == []
    record = same.inspect()
    assert record["spec"]["labels"]["role"] == "shared" and record["derived_status"] == "running"
    assert "PRIVATE KEY" not in json.dumps(record)
    assert "SEALBOX-READY" in same.logs()
    with pytest.raises(NotFound):
        Sandbox.connect(f"{sdk_env.prefix}-nope", state_dir=sdk_env.state_dir)
    with pytest.raises(UsageError, match="invalid sandbox name"):
        Sandbox.connect("../etc", state_dir=sdk_env.state_dir)
    ps = subprocess.run([sys.executable, "-m", "sealbox", "ps", "--label", "role=shared"], env=sdk_env.env(),
                        capture_output=True, text=True, timeout=60)
    assert box.name in ps.stdout and "role=shared" in ps.stdout  # the CLI lists through the same API


CHILD = """
import sys, time
from sealbox import Sandbox
with Sandbox.create(sys.argv[1], name=sys.argv[2], accel="tcg", timeout_s=300) as sb:
    print("ready", sb.commands.run(["echo", "up"]).stdout.strip(), flush=True)
    time.sleep(600)
"""


def test_with_block_removes_the_sandbox_on_ctrl_c(sdk_env) -> None:  # type: ignore[no-untyped-def]
    name = sdk_env.name("ctrlc")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(sdk_env.image), name], env=sdk_env.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line == "ready up\n", p.stderr.read() if p.stderr else ""
        mine = Sandbox.connect(name, state_dir=sdk_env.state_dir)
        assert mine.status == "running" and mine.commands.run(["true"]).exit_code == 0
        assert ssh_masters(sdk_env.state_dir, name)  # this process's master connection to the child's sandbox
        p.send_signal(signal.SIGINT)
        err = p.communicate(timeout=120)[1]
        assert p.returncode != 0 and "KeyboardInterrupt" in err
        deadline = time.monotonic() + 15
        while ssh_masters(sdk_env.state_dir, name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not ssh_masters(sdk_env.state_dir, name)  # removed by another process: ours let go of it
    finally:
        if p.poll() is None:
            p.kill()
    assert not sdk_env.leftovers(name)
    with pytest.raises(NotFound):
        Sandbox.connect(name, state_dir=sdk_env.state_dir)


def test_not_ready_within_timeout_s_is_a_timeout_and_leaves_nothing(sdk_env) -> None:  # type: ignore[no-untyped-def]
    name = sdk_env.name("slow")
    t0 = time.monotonic()
    with pytest.raises(SandboxTimeout, match="not ready within 3s") as e:
        Sandbox.create(sdk_env.image, name=name, accel="tcg", timeout_s=3, state_dir=sdk_env.state_dir)
    assert isinstance(e.value, TimeoutError) and time.monotonic() - t0 < 60
    assert not sdk_env.leftovers(name)


def test_async_sandbox_runs_concurrently_and_cancels(box: Sandbox, sdk_env) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        sb = await AsyncSandbox.connect(box.name, state_dir=sdk_env.state_dir)
        assert await sb.status() == "running"
        results = await asyncio.gather(*(sb.commands.run("date +%s.%N; sleep 3; date +%s.%N") for i in range(4)))
        spans = [[float(x) for x in r.check().stdout.split()] for r in results]
        assert max(a for a, _ in spans) < min(b for _, b in spans)  # all four ran at the same time in the guest
        lines: list[str] = []
        loop_thread = asyncio.get_running_loop()._thread_id  # type: ignore[attr-defined]
        import threading

        def on_out(text: str) -> None:
            assert threading.get_ident() == loop_thread  # callbacks run on the loop
            lines.append(text)

        await sb.commands.run("echo a; echo b", on_stdout=on_out)
        await asyncio.sleep(0.1)
        assert "".join(lines) == "a\nb\n"
        task = asyncio.ensure_future(sb.commands.run(["sleep", "1003"]))
        await asyncio.sleep(3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await sb.commands.run(["pgrep", "-f", "sleep 1003"])).exit_code == 1  # killed in the guest
        await sb.files.write("/tmp/async.txt", "x")
        assert await sb.files.read("/tmp/async.txt") == b"x"

    asyncio.run(asyncio.wait_for(main(), 120))
    assert os.getpid()  # the loop is gone, the shared sandbox stays
    assert box.status == "running"
