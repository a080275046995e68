"""A new user's first runs (issue 12), for real: root, QEMU (TCG), namespaces; each case proves nothing is left."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from rt_integ import Sealbox, leftovers

from builtin_images import image

pytestmark = [pytest.mark.integration]


def test_vmm_start_failure_quotes_the_vmm_log_and_names_no_deleted_file(sealbox: Sealbox) -> None:
    name = f"{sealbox.prefix}-mem"
    p = sealbox(*sealbox.run_args(name, "--memory", "1000000"), timeout=120)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Cannot allocate memory" in lines[0], p.stderr
    for path in re.findall(r"(/[\w./-]+)", lines[0]):  # anything the error points at must still be there
        assert os.path.exists(path) or not path.startswith(str(sealbox.state_dir)), f"{path} named in the error is gone"
    assert leftovers(sealbox.state_dir, name) == []


@pytest.mark.boot
def test_devtools_image_with_default_flags_exec_as_its_user_and_ssh_a_command(sealbox: Sealbox) -> None:
    """The devtools image needs more than 512 MiB: `run` without --memory takes the image's minimum, the sandbox's
    key works for the image's user `dev`, and `sealbox ssh NAME CMD` runs CMD."""
    img = image("profile-devtools")
    need = json.loads((img / "manifest.json").read_text())["min_memory_mib"]["initrd"]
    assert need > 512
    name = f"{sealbox.prefix}-dev"
    refused = sealbox("run", str(img), "--name", name, "--memory", "512", timeout=60)
    assert refused.returncode == 2 and f"{need} MiB" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    p = sealbox("run", str(img), "--name", name, "--accel", "tcg", "--timeout", "400", timeout=420)
    try:
        assert p.returncode == 0, p.stderr
        rec = sealbox.record(name)
        assert rec is not None and rec["spec"]["memory_mib"] == need
        who = sealbox("exec", name, "-u", "dev", "--", "sh", "-c", "id -un; echo $HOME", timeout=60)
        assert who.returncode == 0 and who.stdout.split() == ["dev", "/home/dev"], who.stderr
        assert sealbox.exec(name, "id", "-un").stdout.strip() == "root"
        out = sealbox("ssh", name, "uname", "-s", timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == "Linux", out.stderr
        out = sealbox("ssh", name, "-u", "dev", "id", "-un", timeout=60)  # -u after NAME: sealbox's own option
        assert out.returncode == 0 and out.stdout.strip() == "dev", out.stderr
    finally:
        sealbox("rm", "--force", name, timeout=120)
    assert leftovers(sealbox.state_dir, name) == []


@pytest.mark.boot
def test_an_initramfs_that_does_not_fit_fails_at_once_with_the_cause(sealbox: Sealbox) -> None:
    """An image without a recorded minimum (built before it) given too little memory: the kernel cannot unpack
    its initramfs and reboots in a loop; `run` must stop at the first sign instead of waiting out --timeout."""
    src = sealbox.image
    old = src.parent / f"{src.name}-no-min"  # hard links: same file system, nothing copied
    if old.exists():
        for f in old.iterdir():
            f.unlink()
    else:
        old.mkdir()
    for f in src.iterdir():
        if f.name != "manifest.json":
            os.link(f, old / f.name)
    m = json.loads((src / "manifest.json").read_text())
    m.pop("min_memory_mib", None)
    (old / "manifest.json").write_text(json.dumps(m))
    name = f"{sealbox.prefix}-oom"
    t0 = time.monotonic()
    p = sealbox("run", str(old), "--name", name, "--accel", "tcg", "--memory", "160", "--timeout", "300", timeout=320)
    took = time.monotonic() - t0
    assert p.returncode != 0 and "Initramfs unpacking failed" in p.stderr and "--memory" in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and took < 120, (took, p.stderr)
    assert leftovers(sealbox.state_dir, name) == []
