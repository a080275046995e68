"""A real guest through the fleet: one simulated host (its own network namespace, state dir, registry and address
pool) joined to a Ray head with the real host runtime (LocalHost: QEMU under TCG), a sandbox placed there by Ray
and booted by the host's agent, a command run in it through the agent, and nothing of it left on the host after
its removal. Slow: one TCG boot plus the cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import fleet_integ
import pytest
from fleet_integ import HERE, Fleet, in_ns

pytestmark = [pytest.mark.integration, pytest.mark.boot, pytest.mark.slow]
RUNTIME = HERE.parent / "runtime"


@pytest.fixture(scope="module")
def guest_fleet() -> Iterator[Fleet]:
    yield from fleet_integ.ray_fleet(hosts=(("host0", "a"),), runtime="local")


def test_a_real_guest_on_a_fleet_host(guest_fleet: Fleet, built_image: Path) -> None:
    f = guest_fleet
    name = f"{f.tag}-g"
    out = f.step("boot", str(built_image), name, timeout=600)
    kernel = json.loads((built_image / "manifest.json").read_text())["kernel"]["version"]
    assert (out["host"], out["exit"], out["stdout"].strip(), out["status"], out["listed"]) == ("host0", 0, kernel, "running", [name])
    assert f.step("list") == []
    h = f.hosts["host0"]
    code = (f"import sys, pathlib; sys.path.insert(0, {str(RUNTIME)!r}); import rt_integ;"
            f"print(rt_integ.leftovers(pathlib.Path({h['state']!r}), {name!r}))")  # run in the host's netns: its veths, nft
    check = subprocess.run([*in_ns(h["ns"]), sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           env=f.env(SEALBOX_STATE_DIR=h["state"], SEALBOX_RUN_DIR=h["state"] + "-run", SEALBOX_SUBNET_POOL=h["pool"]))
    assert check.returncode == 0, check.stderr[-2000:]
    assert check.stdout.strip() == "[]", check.stdout
    print(f"fleet guest booted in {out['booted_s']:.1f}s")
