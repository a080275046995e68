"""The guest's reseed program (guest/reseed.py): its bytes are what GNU as makes of its source, it is a well-formed
static ELF without a writable+executable segment, and it makes exactly the two ioctls, with the layout strace decodes.
It runs here as an unprivileged user, so the host's own RNG is never touched: the ioctl is refused (EPERM, exit 5)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sealbox.guest import files as guest_files
from sealbox.guest.reseed import ASM, CODE, program

NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (scripts/setup.sh installs it)")
    return path


def test_the_machine_code_is_what_gnu_as_makes_of_the_source(tmp_path: Path) -> None:
    (tmp_path / "r.s").write_text(ASM)
    subprocess.run([_tool("as"), "--64", "-o", str(tmp_path / "r.o"), str(tmp_path / "r.s")], check=True, timeout=30)
    subprocess.run([_tool("objcopy"), "-O", "binary", "-j", ".text", str(tmp_path / "r.o"), str(tmp_path / "r.bin")],
                   check=True, timeout=30)
    assert (tmp_path / "r.bin").read_bytes() == CODE


def test_it_is_a_static_executable_with_no_writable_code(tmp_path: Path) -> None:
    exe = tmp_path / "reseed"
    exe.write_bytes(program())
    out = subprocess.run([_tool("readelf"), "-lhW", str(exe)], capture_output=True, text=True, check=True, timeout=30).stdout
    assert re.search(r"Type:\s+EXEC", out) and re.search(r"Machine:\s+Advanced Micro Devices X86-64", out)
    segments = re.findall(r"^\s+([A-Z_]+)\s+(?:0x[0-9a-f]+\s+){5}(.+?)\s+0x[0-9a-f]+$", out, re.M)
    assert [(t, f.replace(" ", "")) for t, f in segments] == [("LOAD", "RE"), ("GNU_STACK", "RW")], out
    entry = int(re.search(r"Entry point address:\s+(0x[0-9a-f]+)", out).group(1), 16)  # type: ignore[union-attr]
    assert entry == 0x400000 + len(program()) - len(CODE)
    assert guest_files.read(guest_files.RESEED) == program()  # what the image gets as /usr/lib/sealbox/reseed


@pytest.fixture
def exe() -> Iterator[Path]:
    """The program in a directory the unprivileged user it runs as can reach (pytest's own is root-only)."""
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        path = Path(d) / "reseed"
        path.write_bytes(program())
        path.chmod(0o755)
        yield path


def _run(exe: Path, data: bytes) -> tuple[int, str]:
    prefix = NOBODY if os.geteuid() == 0 else ()
    p = subprocess.run([*prefix, _tool("strace"), "-e", "trace=read,open,openat,ioctl,exit_group", str(exe)],
                       input=data, capture_output=True, timeout=30)
    return p.returncode, p.stderr.decode(errors="replace")


def test_it_credits_what_it_reads_and_asks_for_a_reseed(exe: Path) -> None:
    rc, trace = _run(exe, os.urandom(64))
    assert 'open("/dev/urandom", O_RDONLY|O_CLOEXEC) = 3' in trace, trace
    assert re.search(r"ioctl\(3, RNDADDENTROPY, \{entropy_count=512, buf_size=64, buf=.*\) = -1 EPERM", trace), trace
    assert rc == 5  # refused for an unprivileged user: the host's RNG is left alone
    # 600 bytes: it reads at most 512 and credits exactly what it holds
    rc, trace = _run(exe, os.urandom(600))
    assert re.search(r"RNDADDENTROPY, \{entropy_count=4096, buf_size=512,", trace) and rc == 5, trace


def test_too_little_entropy_is_refused_before_anything_is_opened(exe: Path) -> None:
    rc, trace = _run(exe, os.urandom(31))
    assert rc == 2 and "open(" not in trace and "ioctl(" not in trace, trace
