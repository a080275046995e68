"""Session fixtures for measure/UKI integration tests: real Debian kernel, busybox initrd, test UKI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from measure_fixtures import CMDLINE, INIT, STUB, _run, debian_package  # noqa: E402

from sealbox.formats.uki import build_uki  # noqa: E402


@pytest.fixture(scope="session")
def cloud_kernel() -> tuple[Path, str]:
    """(vmlinuz, kernel release) of the package linux-image-cloud-amd64 depends on."""
    r = _run(["apt-cache", "depends", "linux-image-cloud-amd64"])
    deps = [ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines() if ln.strip().startswith("Depends:")]
    images = [d for d in deps if d.startswith("linux-image-")]
    if not images:
        pytest.skip("apt-cache does not know linux-image-cloud-amd64 (run apt-get update)")
    root = debian_package(images[0])
    vmlinuz = sorted((root / "boot").glob("vmlinuz-*"))
    assert vmlinuz, f"no vmlinuz in {images[0]}"
    return vmlinuz[-1], vmlinuz[-1].name.removeprefix("vmlinuz-")


@pytest.fixture(scope="session")
def busybox_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uncompressed newc cpio with static busybox and an /init that prints markers and powers off."""
    if shutil.which("cpio") is None:
        pytest.skip("cpio is not installed")
    bb = debian_package("busybox-static") / "bin" / "busybox"
    root = tmp_path_factory.mktemp("initrd-root")
    for d in ("bin", "dev", "proc", "sys"):
        (root / d).mkdir()
    shutil.copy(bb, root / "bin" / "busybox")
    (root / "init").write_text(INIT)
    (root / "init").chmod(0o755)
    out = tmp_path_factory.mktemp("initrd") / "initrd.cpio"
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    r = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
        cwd=root, input=("\n".join(names) + "\n").encode(), capture_output=True, timeout=60,
    )
    assert r.returncode == 0, r.stderr
    out.write_bytes(r.stdout)
    return out


@pytest.fixture(scope="session")
def test_uki(tmp_path_factory: pytest.TempPathFactory, cloud_kernel: tuple[Path, str], busybox_initrd: Path) -> tuple[Path, dict]:
    if not STUB.exists():
        pytest.skip(f"{STUB} missing (apt-get install systemd-boot-efi)")
    vmlinuz, release = cloud_kernel
    out = tmp_path_factory.mktemp("uki") / "test.efi"
    osrel = b'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="sealbox test"\n'
    facts = build_uki(STUB, vmlinuz, busybox_initrd, CMDLINE, osrel, release, out)
    return out, facts
