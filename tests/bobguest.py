"""The bob module's guest scripts, loaded from the module directory for host-side tests, and a fake guest root."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from sealbox.builder.bob_firewall import image_files
from sealbox.spec.bob import Bob
from sealbox.spec.load import modules_dir

MOUNTINFO = ("22 1 0:21 / / ro,relatime - ext4 /dev/vda rw\n"
             "40 22 253:0 / /persistent rw,nosuid,nodev,relatime - ext4 /dev/mapper/persistent rw\n")


def load(name: str) -> ModuleType:
    path = modules_dir() / "bob" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bobguest_{name}", path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def guest_root(base: Path, *, mounted: bool = True, dwell: int = 300, bob: Bob | None = None) -> Path:
    """A directory laid out as the guest's / as far as the scripts look: config, rule sets, mountinfo, /persistent."""
    bob = (bob or Bob(enable=True, builder_bundle=["192.0.2.1:1"], builder_state_diff=["192.0.2.1:2"], workload="w.tar")
           ).model_copy(update={"dwell_seconds": dwell})
    for dest, data in image_files(bob).items():  # the files the build makes for the guest, as the build makes them
        (base / dest.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (base / dest.lstrip("/")).write_bytes(data)
    (base / "proc/self").mkdir(parents=True)
    (base / "proc/self/mountinfo").write_text(MOUNTINFO if mounted else MOUNTINFO.splitlines()[0] + "\n")
    (base / "persistent").mkdir()
    return base


def mount(root: Path) -> None:
    (root / "proc/self/mountinfo").write_text(MOUNTINFO)
