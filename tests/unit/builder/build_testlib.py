"""Synthetic inputs for build tests: tiny ELF64 files (dynamic section, .modinfo section) and bzImages.

These are built from the format definitions (ELF: System V gABI; bzImage: Documentation/arch/x86/boot.rst),
just big enough for the code under test to find what it looks for.
"""

from __future__ import annotations

import gzip
import lzma
import struct
from pathlib import Path

BASE = 0x400000


def elf_dynamic(needed: list[str], runpath: list[str] | None = None, rpath: list[str] | None = None) -> bytes:
    """An ELF64 LE file with one PT_LOAD over the whole file and a PT_DYNAMIC listing DT_NEEDED/RUNPATH/RPATH."""
    strtab = bytearray(b"\0")

    def add(s: str) -> int:
        off = len(strtab)
        strtab.extend(s.encode() + b"\0")
        return off

    dyn = [(1, add(n)) for n in needed]
    if runpath is not None:
        dyn.append((29, add(":".join(runpath))))
    if rpath is not None:
        dyn.append((15, add(":".join(rpath))))
    strtab_off = 64 + 2 * 56
    dyn_off = strtab_off + len(strtab) + (-len(strtab) % 8)
    dyn.insert(0, (5, BASE + strtab_off))  # DT_STRTAB holds a virtual address
    dyn.append((0, 0))
    dyn_bytes = b"".join(struct.pack("<qQ", t, v) for t, v in dyn)
    total = dyn_off + len(dyn_bytes)
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, total, total, 0x1000)
    dynamic = struct.pack("<IIQQQQQQ", 2, 6, dyn_off, BASE + dyn_off, BASE + dyn_off, len(dyn_bytes), len(dyn_bytes), 8)
    body = ehdr + load + dynamic + bytes(strtab)
    return body + b"\0" * (dyn_off - len(body)) + dyn_bytes


def elf_static() -> bytes:
    """An ELF64 file without PT_DYNAMIC (a static binary)."""
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, BASE, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    return ehdr + struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, 120, 120, 0x1000)


def elf_module(info: dict[str, list[str]] | list[str]) -> bytes:
    """An ELF64 relocatable with a .modinfo section of NUL-separated key=value strings (as modpost writes it)."""
    items = info if isinstance(info, list) else [f"{k}={v}" for k, vs in info.items() for v in vs]
    modinfo = b"".join(i.encode() + b"\0" for i in items)
    shstr = b"\0.text\0.modinfo\0.shstrtab\0"
    text = b"\xc3" * 8
    text_off = 64
    modinfo_off = text_off + len(text)
    shstr_off = modinfo_off + len(modinfo)
    shoff = shstr_off + len(shstr) + (-(shstr_off + len(shstr)) % 8)

    def sh(name: int, typ: int, off: int, size: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, typ, 0, 0, off, size, 0, 0, 1, 0)

    sections = [sh(0, 0, 0, 0), sh(1, 1, text_off, len(text)), sh(7, 1, modinfo_off, len(modinfo)), sh(16, 3, shstr_off, len(shstr))]
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8 + struct.pack(
        "<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, len(sections), 3)
    body = ehdr + text + modinfo + shstr
    return body + b"\0" * (shoff - len(body)) + b"".join(sections)


def write_module(root: Path, rel: str, depends: list[str] = (), softdep: str | None = None, compress: str = "") -> Path:
    """A module file at root/rel (rel ends in .ko); compress = '', 'xz', 'gz' or 'zst' appends that suffix."""
    info: dict[str, list[str]] = {"license": ["GPL"], "depends": [",".join(depends)], "vermagic": ["6.1.0 SMP mod_unload"]}
    if softdep:
        info["softdep"] = [softdep]
    data = elf_module(info)
    if compress == "xz":
        data = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    elif compress == "gz":
        data = gzip.compress(data, mtime=0)
    elif compress == "zst":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    path = root / (rel + (f".{compress}" if compress else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- bzImage ------------------------------------------------------------------------------------------

FAKE_VMLINUX = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(range(256)) * 64 + b"vmlinux-end"


def lz4_legacy(data: bytes, chunk: int = 8 << 20) -> bytes:
    """The kernel's LZ4 'legacy' stream: magic, then (LE32 size, block) per chunk of at most 8 MiB."""
    import lz4.block

    out = bytearray(struct.pack("<I", 0x184C2102))
    for i in range(0, len(data), chunk):
        block = lz4.block.compress(data[i:i + chunk], store_size=False, mode="high_compression")
        out += struct.pack("<I", len(block)) + block
    return bytes(out)


def compress_payload(kind: str, data: bytes = FAKE_VMLINUX) -> bytes:
    """Payload as arch/x86/boot/compressed builds it (size_append adds the LE32 length after xz/zstd/lz4)."""
    size = struct.pack("<I", len(data))
    if kind == "gzip":
        return gzip.compress(data, mtime=0)
    if kind == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=3).compress(data) + size
    if kind == "lz4":
        return lz4_legacy(data) + size
    raise ValueError(kind)


def bzimage(payload: bytes, setup_sects: int = 3, payload_offset: int = 0x100) -> bytes:
    """A bzImage shell: boot sector + setup header fields the extractor reads, then the payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)
    struct.pack_into("<II", setup, 0x248, payload_offset, len(payload))
    stub = b"\x90" * payload_offset  # where the protected-mode decompressor would sit
    return bytes(setup) + stub + payload + b"\0" * 64
