"""Pool with real boots: acquire hands out a ready member, release destroys it (never reused) and the pool
refills in the background; the owner killed with SIGKILL leaves members that `sealbox gc` finds and removes
(orphaned: their holder died); closing a pool while a member boots undoes that boot."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sealbox.errors import NotFound
from sealbox.sdk import Pool, Sandbox, mux

pytestmark = [pytest.mark.integration, pytest.mark.boot]

OWNER = """
import sys, time
from sealbox import Pool
pool = Pool(sys.argv[1], size=1, name=sys.argv[2], accel="tcg", timeout_s=300)
sb = pool.acquire(timeout=400)
print("acquired", sb.name, sb.commands.run(["echo", "hi"]).stdout.strip(), flush=True)
pool.release(sb)
print("released", flush=True)
deadline = time.monotonic() + 400
while pool.ready < 1 and time.monotonic() < deadline:
    time.sleep(0.2)
print("refilled", pool.ready, flush=True)
time.sleep(900)
"""


def test_acquire_release_refill_and_a_crashed_owner_leaks_nothing(sdk_env) -> None:  # type: ignore[no-untyped-def]
    pool = sdk_env.name("pool")
    p = subprocess.Popen([sys.executable, "-c", OWNER, str(sdk_env.image), pool], env=sdk_env.env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    members: set[str] = set()
    try:
        assert p.stdout is not None
        word, first, hi = p.stdout.readline().split()
        assert (word, hi) == ("acquired", "hi") and first.startswith(f"{pool}-")
        members.add(first)
        assert p.stdout.readline() == "released\n"
        with pytest.raises(NotFound):
            Sandbox.connect(first, state_dir=sdk_env.state_dir)  # destroyed on release, not handed back
        assert not sdk_env.leftovers(first)
        assert p.stdout.readline() == "refilled 1\n"
        [member] = Sandbox.list(labels={"sealbox.pool": pool}, state_dir=sdk_env.state_dir)
        assert member.status == "running" and member.name != first
        members.add(member.name)
        p.send_signal(signal.SIGKILL)  # the owner crashes
        p.wait(30)
        tmp = Path(tempfile.gettempdir())
        assert list(tmp.glob(f"sealbox-ssh-{p.pid}-*"))  # its master's socket dir (the member's health check made it)
        mux.sweep(tmp)
        assert not list(tmp.glob(f"sealbox-ssh-{p.pid}-*"))  # the next SDK process's first master sweeps it
        assert Sandbox.connect(member.name, state_dir=sdk_env.state_dir).status == "orphaned"
        gc = subprocess.run([sys.executable, "-m", "sealbox", "gc", "--json"], env=sdk_env.env(), capture_output=True, text=True, timeout=180)
        assert gc.returncode == 0, gc.stderr
        assert any(member.name in line and "holding it" in line for line in json.loads(gc.stdout)["removed"])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    for name in members:
        assert not sdk_env.leftovers(name), name
    assert Sandbox.list(labels={"sealbox.pool": pool}, all=True, state_dir=sdk_env.state_dir) == []


def test_closing_a_pool_undoes_a_boot_under_way(sdk_env) -> None:  # type: ignore[no-untyped-def]
    name = sdk_env.name("closing")
    pool = Pool(sdk_env.image, size=1, name=name, accel="tcg", timeout_s=300, state_dir=sdk_env.state_dir)
    deadline = time.monotonic() + 60
    while not Sandbox.list(labels={"sealbox.pool": name}, state_dir=sdk_env.state_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    [booting] = Sandbox.list(labels={"sealbox.pool": name}, state_dir=sdk_env.state_dir)
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 60
    assert Sandbox.list(labels={"sealbox.pool": name}, all=True, state_dir=sdk_env.state_dir) == []
    assert not sdk_env.leftovers(booting.name)
