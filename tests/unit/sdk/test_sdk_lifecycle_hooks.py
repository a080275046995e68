"""The two hooks the SDK needs from `run`: a cancel callback (a pool closing, an asyncio task cancelled) that
ends the readiness wait at once — the normal undo path then removes everything — and the holder process
recorded with the sandbox."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sealbox.sandbox import lifecycle, planning
from sealbox.sandbox.model import GuestNet
from sealbox.sandbox.state import process_start_time

NET = GuestNet(subnet="10.9.0.0/30", host_ip="10.9.0.1", guest_ip="10.9.0.2", guest_mac="02:00:00:00:00:01",
               tap="tap0", netns="sealbox-nonexistent-test")


def test_cancel_ends_the_ready_wait(tmp_path: Path) -> None:
    (tmp_path / "console.log").write_bytes(b"booting\n")
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) >= 3

    t0 = time.monotonic()
    with pytest.raises(lifecycle.Interrupted, match="cancelled"):
        lifecycle.wait_ready(NET, tmp_path / "console.log", None, None, known_hosts=tmp_path / "kh", alias="sealbox-x",
                             deadline=time.monotonic() + 30, timeout=30, cancel=cancel)
    assert time.monotonic() - t0 < 5 and len(calls) == 3


def test_holder_is_recorded(image_dir: Path) -> None:
    spec = planning.make_spec(name="held", image_dir=image_dir)
    inp = SimpleNamespace(image=SimpleNamespace(dir=image_dir, name="demo", kernel_version="6"), choice=SimpleNamespace(vmm="qemu", accel="tcg"))
    me = os.getpid()
    r = lifecycle._record(spec, inp, holder=me)  # type: ignore[arg-type]
    assert (r.holder_pid, r.holder_start) == (me, process_start_time(me))
    r = lifecycle._record(spec, inp)  # type: ignore[arg-type]
    assert (r.holder_pid, r.holder_start) == (None, None)
