"""Persistent data disks: `sealbox disk create FILE --size 2048G [--format qcow2|raw]` and `sealbox disk inspect FILE`.

A data disk is where a sandbox keeps state across `rm`/`run` (attached with `--disk FILE:rw`); the
image stays read-only. `create` makes a sparse file (raw: a hole of the full size; qcow2: an empty
image by `qemu-img create`, which allocates nothing) and never replaces an existing file: it is
written under a temporary name and linked into place, which fails if FILE appeared meanwhile.
`inspect` reports the container (qemu-img info), what the host really stores, how many bytes hold data
(qemu-img map: a disk without any is blank), and what it holds, probed with blkid on a copy of its
first MiB (partition table, filesystem, LUKS).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from sealbox.errors import SealboxError, UsageError
from sealbox.util.run import run

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MAX_SIZE = 64 << 40  # qcow2's limit; far beyond any cloud data disk
MIN_SIZE = 1 << 20
PROBE_BYTES = 1 << 20
SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2048G', '10GiB', '512M', '1T' or plain bytes (binary units, like qemu-img); a multiple of 1 MiB."""
    m = SIZE_RE.match(text)
    if not m or (m.group(3) and m.group(3).upper() == "B" and not m.group(2)):
        raise UsageError(f"--size {text!r} is not a size", hint="e.g. 2048G, 10GiB, 512M (binary units)")
    size = int(m.group(1)) * UNITS[m.group(2).upper()]
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise UsageError(f"--size {text!r} is out of range", hint="between 1M and 64T")
    if size % MIN_SIZE:
        raise UsageError(f"--size {text!r} is not a whole number of MiB", hint="round it to M, G or T")
    return size


def create(path: Path, size: int, fmt: Literal["qcow2", "raw"]) -> dict[str, Any]:
    path = Path(path)
    if os.path.lexists(path):
        raise UsageError(f"{path} already exists; a data disk is never overwritten", hint="choose another FILE or remove it yourself")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist", hint="create it first")
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".creating")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o600)  # a data disk holds the guest's state: owner only
        if fmt == "raw":
            os.ftruncate(fd, size)
        os.close(fd)
        fd = -1
        if fmt == "qcow2":
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "preallocation=off,lazy_refcounts=off", tmp, str(size)],
                what="qemu-img create")
            os.chmod(tmp, 0o600)
        try:
            os.link(tmp, path)  # fails instead of replacing a file that appeared meanwhile
        except FileExistsError:
            raise UsageError(f"{path} already exists; a data disk is never overwritten") from None
        except OSError as e:
            raise SealboxError(f"cannot create {path}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return inspect(path)


def _qemu_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(run(["qemu-img", "info", "--output=json", "-U", path], what="qemu-img info").stdout)
    except ValueError:
        raise SealboxError(f"qemu-img could not describe {path}") from None
    if not isinstance(info, dict):
        raise SealboxError(f"qemu-img could not describe {path}")
    return info


def _head(path: Path, fmt: str, dest: Path) -> bytes:
    """The first MiB of the virtual disk (through qemu-img for anything but raw)."""
    if fmt == "raw":
        with open(path, "rb") as f:
            return f.read(PROBE_BYTES)
    run(["qemu-img", "dd", "-U", "-f", fmt, "-O", "raw", f"if={path}", f"of={dest}", "bs=65536", f"count={PROBE_BYTES // 65536}"],
        what="qemu-img dd")
    return dest.read_bytes()


def _probe(head: bytes, scratch: Path) -> dict[str, str]:
    """blkid's low-level probe of the disk head (no cache, nothing mounted)."""
    sample = scratch / "head"
    sample.write_bytes(head.ljust(PROBE_BYTES, b"\0"))
    proc = run(["blkid", "-p", "-o", "export", sample], check=False, what="blkid")
    found = {}
    for line in proc.stdout.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("TYPE", "PTTYPE", "PTUUID", "UUID", "LABEL", "USAGE", "VERSION"):
            found[key.lower()] = value
    return found


def data_bytes(path: Path, fmt: str) -> int:
    """Bytes of the virtual disk that hold data (qemu-img map: allocated, not known zero)."""
    out = run(["qemu-img", "map", "--output=json", "-U", "-f", fmt, path], what="qemu-img map").stdout
    try:
        extents = json.loads(out)
    except ValueError:
        raise SealboxError(f"qemu-img could not map {path}") from None
    return sum(int(e.get("length", 0)) for e in extents if isinstance(e, dict) and e.get("data") and not e.get("zero"))


def inspect(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path} does not exist", hint="create one with 'sealbox disk create FILE --size SIZE'")
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file")
    info = _qemu_info(path)
    fmt = str(info.get("format", "raw"))
    st = path.stat()
    used = data_bytes(path, fmt)
    content: dict[str, str] = {}
    if used:
        with tempfile.TemporaryDirectory(prefix="sealbox-disk-") as td:
            head = _head(path, fmt, Path(td) / "head.raw")
            content = _probe(head, Path(td)) if any(head) else {}
    return {
        "file": str(path), "format": fmt, "virtual_size": int(info.get("virtual-size", 0)),
        "host_bytes": st.st_blocks * 512, "file_size": st.st_size, "mode": oct(st.st_mode & 0o777),
        "data_bytes": used, "blank": used == 0, "content": content,
    }
