"""formats/elf.py against binutils' readelf (an oracle nobody here wrote) on a host binary, and on hostile bytes."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from sealbox.formats import elf


def test_segments_and_sections_match_readelf() -> None:
    if shutil.which("readelf") is None:
        pytest.fail("readelf is not installed (binutils: run scripts/setup.sh)")
    path = Path(shutil.which("true") or "/bin/true").resolve()
    data = path.read_bytes()
    assert elf.is_elf64_le(data)
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    rows = re.findall(r"^\s+([A-Z_]+|LOOS\+\w+)\s+0x([0-9a-f]+) 0x([0-9a-f]+) 0x[0-9a-f]+ 0x([0-9a-f]+)", out, re.M)
    segs = elf.segments(data)
    assert len(segs) == len(rows) > 3
    loads = [(int(o, 16), int(v, 16), int(f, 16)) for t, o, v, f in rows if t == "LOAD"]
    assert [(s.offset, s.vaddr, s.filesz) for s in segs if s.type == elf.PT_LOAD] == loads
    sections = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"\] \.interp\s+\S+\s+[0-9a-f]+ [0-9a-f]+ ([0-9a-f]+)", sections)
    assert m, sections
    size = int(m.group(1), 16)
    interp = elf.section(data, b".interp")
    assert interp is not None and len(interp) == size and interp.startswith(b"/lib64/ld-linux")
    assert elf.section(data, b".no-such-section") is None


@pytest.mark.parametrize("cut", [64, 200, 1000])
def test_truncated_tables_raise_what_callers_catch(cut: int) -> None:
    data = Path(shutil.which("true") or "/bin/true").resolve().read_bytes()[:cut]
    with pytest.raises((struct.error, ValueError, IndexError)):
        elf.section(data, b".modinfo")
