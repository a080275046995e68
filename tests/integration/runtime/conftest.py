"""Runtime integration tests: root, real QEMU (TCG), real namespaces/nftables/cgroups, a private state
dir and a per-run name prefix; everything carrying the prefix is removed at the end even on failure."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from rt_integ import Sealbox, image_dir, scrub  # noqa: E402

TOOLS = ("qemu-system-x86_64", "bwrap", "setpriv", "nft", "ip", "ssh", "scp", "ssh-keygen")


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "runtime integration tests need root"
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"runtime integration tests need {tool}"
    if not os.path.exists("/dev/net/tun"):
        return "runtime integration tests need /dev/net/tun"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    why = _missing()
    if why:
        for item in items:
            if str(Path(__file__).parent) in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def sealbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealbox]:
    cache = Path(os.environ.get("SEALBOX_TEST_CACHE", "/var/cache/sealbox-test")) / "runtime-image"
    image = image_dir(cache)
    prefix = "rt" + secrets.token_hex(2)  # sandbox names: <prefix>-<role>
    sb = Sealbox(state_dir=tmp_path_factory.mktemp("sealbox-state"), image=image, prefix=prefix)
    yield sb
    sb.kill_spawned()
    for name in sorted(p.name for p in (sb.state_dir / "sandboxes").glob("*")) if (sb.state_dir / "sandboxes").is_dir() else []:
        sb("rm", "--force", name, timeout=120)
    sb("gc", timeout=120)
    left = scrub(sb.state_dir, prefix)
    assert not left, f"left behind after all runtime tests (now scrubbed): {left}"
