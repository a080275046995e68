"""SDK integration tests: root, real QEMU (TCG), the default image, a private state dir and a per-run name prefix.

Boots are the expensive part (10-40 s each under TCG), so one sandbox (`box`, 1 GiB so that /tmp holds the
200 MB file test) is shared by every test that only needs a running guest; only lifecycle tests boot their own.
At the end every sandbox of the run is removed and nothing with the run's prefix may remain on the host."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))

from rt_integ import leftovers, scrub  # noqa: E402

from sealbox.sdk import LocalHost, Sandbox  # noqa: E402

TOOLS = ("qemu-system-x86_64", "bwrap", "setpriv", "nsenter", "nft", "ip", "ssh", "ssh-keygen")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "SDK integration tests need root"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"SDK integration tests need {tool}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = _missing()
    if why:
        for item in items:
            if str(Path(__file__).parent) in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=why))


@dataclass
class Env:
    state_dir: Path
    image: Path
    prefix: str

    @property
    def host(self) -> LocalHost:
        return LocalHost(self.state_dir)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SEALBOX_STATE_DIR": str(self.state_dir), "PYTHONUNBUFFERED": "1"}

    def leftovers(self, name: str) -> list[str]:
        return leftovers(self.state_dir, name)


@pytest.fixture(scope="session")
def sdk_env(tmp_path_factory: pytest.TempPathFactory, built_image: Path) -> Iterator[Env]:
    env = Env(state_dir=tmp_path_factory.mktemp("sdk-state"), image=built_image, prefix="sdk" + secrets.token_hex(2))
    yield env
    host = env.host
    names = [i.name for i in host.list(all_=True)] if env.state_dir.joinpath("sandboxes").is_dir() else []
    for name in names:
        Sandbox(name, host).kill()
    host.gc()
    left = scrub(env.state_dir, env.prefix)
    assert not left, f"left behind after the SDK tests (now scrubbed): {left}"


@pytest.fixture(scope="session")
def box(sdk_env: Env) -> Iterator[Sandbox]:
    """The shared running sandbox (memory 1 GiB: the guest's /tmp is half of it)."""
    sb = Sandbox.create(sdk_env.image, name=sdk_env.name("box"), memory_mib=1024, accel="tcg", timeout_s=300,
                        labels={"role": "shared", "suite": sdk_env.prefix}, state_dir=sdk_env.state_dir)
    yield sb
    assert sb.kill()
    assert not sdk_env.leftovers(sb.name)
